"""Shared files under concurrent writers: two `compare` runs into one --out, and a re-run repairing
what an older version left. Runs the real CLI on a tiny profiled model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from diet_explore.cli import main
from diet_explore.experiments.results import RESULTS, append_result, read_results
from diet_explore.experiments.runs import RunStore

ROOT = Path(__file__).resolve().parents[1]


def _compare_argv(tiny_cache_root: Path, out: Path, runs: Path) -> list[str]:
    model = tiny_cache_root.parent / "models" / "tiny-llama"
    return [
        "compare",
        "--model",
        str(model),
        "--cache",
        str(tiny_cache_root / "tiny"),
        "--sparsity",
        "0.2",
        "--methods",
        "diet,random",
        "--tasks",
        "rte",
        "--limit",
        "2",
        "--no-perplexity",
        "--device",
        "cpu",
        "--runs",
        str(runs),
        "--out",
        str(out),
    ]


def _lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / RESULTS).read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_two_compare_runs_into_one_out_write_each_row_once(tiny_cache_root, tmp_path):
    out, runs = tmp_path / "out", tmp_path / "runs"
    argv = _compare_argv(tiny_cache_root, out, runs)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "diet_explore", *argv],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    logs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    keys = [row["key"] for row in _lines(out)]
    assert sorted(keys) == ["dense", "diet@0.2", "random@0.2"], keys  # was 6 rows: each run wrote its own 3
    records = RunStore(runs).records()
    assert sorted(r["method"] for r in records) == ["diet", "random"]  # one run-store record per finished run
    assert {r["run_id"] for r in records} == {row["run_id"] for row in _lines(out) if row["key"] != "dense"}


@pytest.mark.slow
def test_a_rerun_repairs_repeated_rows(tiny_cache_root, tmp_path, capsys):
    out, runs = tmp_path / "out", tmp_path / "runs"
    argv = _compare_argv(tiny_cache_root, out, runs)
    assert main(argv) == 0
    clean = (out / RESULTS).read_text()
    (out / RESULTS).write_text(clean + clean + '{"key": "random@0.2", "cut')  # two runs at once, then a kill
    assert len((out / RESULTS).read_text().splitlines()) == 7
    capsys.readouterr()
    assert main(argv) == 0
    assert (out / RESULTS).read_text() == clean  # one row per run again, the first of each kept
    assert "removed 4 repeated or unreadable line(s)" in capsys.readouterr().out
    table = [line.split(",") for line in (out / "table.csv").read_text().splitlines()[1:]]
    pairs = [(row[0], row[3]) for row in table]  # (method, task): rte and the average, once each
    assert sorted(pairs) == sorted({(m, t) for m in ("dense", "diet", "random") for t in ("rte", "average")})


def test_append_result_under_threads_keeps_one_row_per_key(tmp_path):
    """The lock and the per-key check together: many writers of the same keys at once."""
    barrier = threading.Barrier(8)

    def writer(i):
        barrier.wait()
        for key in ("dense", "diet@0.2", "random@0.2"):
            append_result(tmp_path, {"key": key, "writer": i})

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = _lines(tmp_path)
    assert sorted(r["key"] for r in rows) == ["dense", "diet@0.2", "random@0.2"]
    assert read_results(tmp_path) == rows


@pytest.mark.parametrize("what", ["run store", "eval cache"])
def test_store_writes_take_the_lock(tmp_path, monkeypatch, what):
    """Every shared file is written under ``atomic.locked``: the run store and the eval cache too."""
    from diet_explore.core import atomic

    seen = []
    real = atomic.locked

    def spy(path, *a, **k):
        seen.append(Path(path))
        return real(path, *a, **k)

    monkeypatch.setattr(atomic, "locked", spy)
    if what == "run store":
        RunStore(tmp_path).save({"x": 1})
    else:
        from types import SimpleNamespace

        from diet_explore.evaluation.evalcache import EvalCache

        result = SimpleNamespace(model_name="m", scores=[], perplexity=None, wall_time_s=1.0)
        EvalCache(tmp_path).save("k" * 24, result, {}, {})
    assert seen and all(p.parent == tmp_path or p.parent.parent == tmp_path for p in seen)
