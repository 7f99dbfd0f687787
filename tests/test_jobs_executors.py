"""A sweep split into jobs (``experiments/executors.py``): ``compare --executor local --workers 2``
runs one job per (method, sparsity) on two worker processes into one --out, scores the dense model
once, and gives the rows of the same sweep run in one process; ``jobs submit compare`` queues the
same jobs for ``jobs work``."""

from __future__ import annotations

import json

import pytest

from diet_explore.cli import main as cli
from diet_explore.experiments.jobs import JobStore


def _argv(tiny_cache_root, tmp_path, out: str) -> list[str]:
    return [
        "--model",
        str(tiny_cache_root.parent / "models" / "tiny-llama"),
        "--cache",
        str(tiny_cache_root / "tiny"),
        "--sparsity",
        "0.25,0.5",
        "--methods",
        "diet,random",
        "--tasks",
        "rte",
        "--limit",
        "6",
        "--no-perplexity",
        "--multiple-of",
        "4",
        "--device",
        "cpu",
        "--runs",
        str(tmp_path / "runs"),
        "--eval-cache",
        str(tmp_path / "eval-cache"),
        "--out",
        str(tmp_path / out),
    ]


_REFERENCE: dict[str, dict] = {}  # a sweep config's JSON -> its in-process rows by key (deterministic: once a process)


def check_split_sweep(store: JobStore, out, tiny_cache_root, tmp_path) -> None:
    """The rows, once each, equal to an in-process sweep's; the dense model scored by one job only."""
    from diet_explore.experiments.runs import RunStore
    from diet_explore.experiments.sweep import CompareConfig, run_compare

    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    keys = sorted(r["key"] for r in lines)
    assert keys == ["dense", "diet@0.25", "diet@0.5", "random@0.25", "random@0.5"]  # each once, none lost
    jobs = [j for j in store.jobs() if j["type"] == "compare_run"]
    assert len(jobs) == 4 and all(j["status"] == "done" for j in jobs)
    assert sum(any(" dense: avg " in line for line in j["log"]) for j in jobs) == 1  # scored by one job
    assert CompareConfig.from_json((out / "config.json").read_text()).methods == ["diet", "random"]
    assert (out / "table.md").is_file()
    config = CompareConfig.from_json((out / "config.json").read_text())
    if config.to_json() not in _REFERENCE:
        rows = run_compare(config, tmp_path / "ref", store=RunStore(tmp_path / "ref-runs"), log=lambda m: None)
        _REFERENCE[config.to_json()] = {r["key"]: r for r in rows}
    reference = _REFERENCE[config.to_json()]
    for row in lines:
        assert row["tasks"]["rte"]["correct"] == reference[row["key"]]["tasks"]["rte"]["correct"], row["key"]
        assert row["avg"] == pytest.approx(reference[row["key"]]["avg"])
    assert len([r for r in store.runs.records() if r["source"] == "compare"]) == 4


@pytest.mark.slow  # worker processes import torch: tens of seconds on 2 busy cores
def test_compare_on_two_local_workers_merges_one_results_file_with_the_dense_model_scored_once(tiny_cache_root, tmp_path, capsys):
    argv = _argv(tiny_cache_root, tmp_path, "out")
    assert cli(["compare", *argv, "--executor", "local", "--workers", "2"]) == 0
    assert "4 run(s) queued as jobs" in capsys.readouterr().out
    store = JobStore(tmp_path / "runs")
    check_split_sweep(store, tmp_path / "out", tiny_cache_root, tmp_path)
    workers = {j["worker"]["pid"] for j in store.jobs()}
    assert len(workers) == 2  # shared out between the two processes


@pytest.mark.slow  # worker processes import torch: tens of seconds on 2 busy cores
def test_jobs_submit_compare_queues_the_split_sweep_and_jobs_work_runs_it(tiny_cache_root, tmp_path, capsys):
    argv = _argv(tiny_cache_root, tmp_path, "out")
    assert cli(["jobs", "submit", "compare", *argv]) == 0
    out = capsys.readouterr().out
    assert out.count("queued ") == 4 and "jobs work" in out
    store = JobStore(tmp_path / "runs")
    assert [j["status"] for j in store.jobs()] == ["queued"] * 4
    assert cli(["jobs", "submit", "compare", *argv]) == 0  # again while queued: the same jobs
    assert len(store.jobs()) == 4
    assert cli(["jobs", "work", "--runs", str(tmp_path / "runs"), "--until-empty"]) == 0
    from diet_explore.experiments.executors import finish_sweep
    from diet_explore.experiments.sweep import CompareConfig

    config = CompareConfig.from_json((tmp_path / "out" / "config.json").read_text())
    finish_sweep(config, tmp_path / "out", {j["job_id"]: j["status"] for j in store.jobs()})
    check_split_sweep(store, tmp_path / "out", tiny_cache_root, tmp_path)


def test_an_unknown_executor_or_no_ray_is_refused_in_one_line(tiny_cache_root, tmp_path, capsys, monkeypatch):
    import sys

    argv = _argv(tiny_cache_root, tmp_path, "out")
    assert cli(["compare", *argv, "--executor", "local", "--workers", "0"]) == 2
    assert "error: --workers must be at least 1, got 0" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # as where the extra is not installed
    assert cli(["compare", *argv, "--executor", "ray"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --executor ray needs Ray, which is not installed") and "diet-explore[ray]" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs" / "jobs").exists()  # nothing queued


def test_a_bad_executor_setting_is_refused_where_the_worker_starts(tmp_path, monkeypatch):
    from diet_explore.core.errors import DietError
    from diet_explore.experiments import jobs as J

    store = JobStore(tmp_path / "runs")
    for name, value, said in (("DIET_EXPLORE_EXECUTOR", "dask", "is not an executor"), ("DIET_EXPLORE_WORKERS", "0", "≥ 1")):
        monkeypatch.setenv(name, value)
        with pytest.raises(DietError, match=said):
            J.EXECUTOR.ensure_worker(store)
        monkeypatch.delenv(name)
    assert not (store.root / "worker.json").exists()


def test_jobs_runs_before_submit_is_the_store_the_jobs_go_to(tiny_cache_root, tmp_path, capsys):
    argv = _argv(tiny_cache_root, tmp_path, "out")
    i = argv.index("--runs")
    del argv[i : i + 2]
    (tmp_path / "mine").mkdir()
    assert cli(["jobs", "--runs", str(tmp_path / "mine"), "submit", "compare", *argv]) == 0
    assert len(JobStore(tmp_path / "mine").jobs()) == 4 and not (tmp_path / "runs").exists()


def test_jobs_submit_compare_refuses_the_executor_flags_it_does_not_read(tiny_cache_root, tmp_path, capsys):
    assert cli(["jobs", "submit", "compare", *_argv(tiny_cache_root, tmp_path, "out"), "--workers", "3"]) == 2
    assert capsys.readouterr().err.startswith("error: jobs submit compare queues the sweep; --executor and --workers")
    assert not (tmp_path / "runs" / "jobs").exists()
