"""Hostile inputs from the third hardening run (#29): nothing diet-explore did not write is replaced,
no hang or traceback from a link or a special file; each refusal is one line and exit code 2."""

from __future__ import annotations

import json

import pytest

from diet_explore.cli import main
from diet_explore.core import atomic
from diet_explore.profiling.cache import BASELINES_FILE, MANIFEST, check_resume, load_cache, save_cache
from diet_explore.profiling.synthetic import synthetic_cache


def _run(argv, capsys) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, (argv, err)
    assert err.startswith("error: ") and "Traceback" not in err
    return err


# ------------------------------------------------------------------ eval --json / --predictions
@pytest.mark.parametrize("flag", ["--json", "--predictions"])
def test_eval_outputs_never_replace_a_file_diet_explore_did_not_write(synthetic_cache_dir, tmp_path, capsys, flag):
    """--json cache_copy/manifest.json exited 0 and the copy no longer loaded; the same onto another
    model's config.json or any text file. Refused before a model loads, the file untouched."""
    import shutil

    copy = tmp_path / "cache_copy"
    shutil.copytree(synthetic_cache_dir, copy)
    text = tmp_path / "notes.txt"
    text.write_text("my notes\n")
    for target in (copy / MANIFEST, text):
        before = target.read_bytes()
        err = _run(["eval", "--model", str(tmp_path / "no-model"), flag, str(target)], capsys)
        assert flag in err and "diet-explore did not write" in err, err
        assert target.read_bytes() == before
    load_cache(copy)


@pytest.mark.parametrize(("flag", "kind"), [("--json", "diet-explore-eval"), ("--predictions", "diet-explore-predictions")])
def test_eval_may_replace_its_own_output_or_an_empty_file(tmp_path, capsys, flag, kind):
    """What eval wrote (its marker leads the file) and an empty file pass the output check: the run
    goes on to the model, which is what fails here."""
    ours = tmp_path / "ours"
    ours.write_text(json.dumps({"kind": kind, "task": "rte"}) + "\n")
    empty = tmp_path / "empty"
    empty.touch()
    for target in (ours, empty):
        err = _run(["eval", "--model", str(tmp_path / "no-model"), flag, str(target)], capsys)
        assert flag not in err and "no-model" in err, err


def test_eval_writes_its_marker_and_a_rerun_replaces_its_own_files(tiny_cache_root, tmp_path, capsys):
    """The marker is what eval writes: a second run into the same --json/--predictions is allowed."""
    dense = tiny_cache_root.parent / "models" / "tiny-llama"
    out, preds = tmp_path / "eval.json", tmp_path / "preds.jsonl"
    argv = ["eval", "--model", str(dense), "--tasks", "rte", "--limit", "2", "--no-perplexity", "--device", "cpu"]
    argv += ["--json", str(out), "--predictions", str(preds)]
    for _ in range(2):
        assert main(argv) == 0, capsys.readouterr().err
    assert json.loads(out.read_text())["kind"] == "diet-explore-eval"
    records = [json.loads(line) for line in preds.read_text().splitlines()]
    assert len(records) == 2 and all(r["kind"] == "diet-explore-predictions" and r["task"] == "rte" for r in records)


# ------------------------------------------------------------------ profile --out without a manifest
def test_profile_out_refuses_a_non_empty_folder_without_a_manifest(tmp_path):
    """profile --out into someone's folder overwrote baselines.safetensors / tasks/rte.safetensors and
    turned the folder into a cache. The resume check (before the model loads, and in CacheWriter)
    refuses it; an empty folder is still fine."""
    from diet_explore.core.errors import DietError

    folder = tmp_path / "mine"
    (folder / "tasks").mkdir(parents=True)
    (folder / "tasks" / "rte.safetensors").write_bytes(b"my own file")
    (folder / BASELINES_FILE).write_bytes(b"mine too")
    with pytest.raises(DietError, match="has no manifest.json") as exc:
        check_resume(folder, {})
    assert "tasks" in str(exc.value) and "empty folder" in exc.value.hint
    with pytest.raises(DietError, match="has no manifest.json"):
        save_cache(synthetic_cache(hidden_size=8, num_layers=2, tasks=("rte",), n_samples=2), folder)
    assert (folder / "tasks" / "rte.safetensors").read_bytes() == b"my own file"
    assert (folder / BASELINES_FILE).read_bytes() == b"mine too" and not (folder / MANIFEST).exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert check_resume(empty, {}) is None


def test_a_new_cache_has_its_manifest_before_any_data_file(tmp_path, monkeypatch):
    """A profile killed during its first task left tasks/<x>.safetensors without a manifest, a folder
    the check above would refuse to resume: the manifest (the cache's marker) is written first."""
    from diet_explore.profiling import cache as cache_mod

    seen = []
    real = atomic.write_bytes

    def spy(path, data):
        seen.append((str(path), (tmp_path / "c" / MANIFEST).is_file()))
        return real(path, data)

    monkeypatch.setattr(cache_mod.atomic, "write_bytes", spy)
    save_cache(synthetic_cache(hidden_size=8, num_layers=2, tasks=("rte",), n_samples=2), tmp_path / "c")
    data_files = [(p, had) for p, had in seen if p.endswith(".safetensors")]
    assert data_files and all(had for _, had in data_files), data_files


# ------------------------------------------------------------------ app ?cache=: NUL, FIFO, /dev/zero
def _finishes(fn, seconds: float = 20.0):
    """``fn()``'s value, or a failure when it has not returned within ``seconds`` (a read blocked on a FIFO)."""
    import threading

    box: dict = {}
    thread = threading.Thread(target=lambda: box.setdefault("value", fn()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    return box.get("value")


def test_manifest_sha_of_a_fifo_a_device_link_or_a_nul_byte_returns_at_once(tmp_path):
    """The page hashed manifest.json before anything checked what it was: a FIFO hung the page, a link to
    /dev/zero read until memory ran out, a NUL byte in ?cache= raised ValueError. Now each returns a key
    at once and load_cache says what is wrong."""
    import os

    from diet_explore_app import loaders

    fifo_cache = tmp_path / "fifo-cache"
    fifo_cache.mkdir()
    os.mkfifo(fifo_cache / MANIFEST)
    zero_cache = tmp_path / "zero-cache"
    zero_cache.mkdir()
    (zero_cache / MANIFEST).symlink_to("/dev/zero")
    try:
        for folder in (fifo_cache, zero_cache, f"{tmp_path}/x\0y"):
            assert isinstance(_finishes(lambda folder=folder: loaders.manifest_sha(str(folder))), str)
    finally:  # a reader blocked on the FIFO (before the fix) is let go
        fd = os.open(fifo_cache / MANIFEST, os.O_WRONLY | os.O_NONBLOCK) if _has_reader(fifo_cache / MANIFEST) else None
        if fd is not None:
            os.close(fd)


def _has_reader(fifo) -> bool:
    import os

    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        return False
    return True


def test_a_cache_link_with_a_nul_byte_or_a_fifo_manifest_is_an_error_on_the_page(app_env, tmp_path):
    import os

    from app_helpers import APP, TIMEOUT
    from streamlit.testing.v1 import AppTest

    fifo_cache = tmp_path / "fifo-cache"
    fifo_cache.mkdir()
    os.mkfifo(fifo_cache / MANIFEST)
    for value, message in ((f"{tmp_path}/x\0y", "NUL"), (str(fifo_cache), "is not a file")):
        at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
        at.query_params["cache"] = value
        _finishes(at.run, 60)
        assert not at.exception, at.exception
        assert at.error and message in at.error[0].value, [e.value for e in at.error]


def test_read_manifest_bounds_what_it_reads(tmp_path, monkeypatch):
    """A manifest.json of gigabytes (a link to a huge file) is refused by its size, not read whole."""
    from diet_explore.core.errors import DietError
    from diet_explore.profiling import cache as cache_mod

    folder = tmp_path / "big"
    folder.mkdir()
    (folder / MANIFEST).write_text(" " * 2048 + "{}")
    monkeypatch.setattr(cache_mod, "MANIFEST_MAX_BYTES", 1024)
    with pytest.raises(DietError, match="over 1024 bytes"):
        cache_mod.read_manifest(folder)
