"""Atomic writes: readable permissions, no temp leftovers, the old content survives a failed write."""

from __future__ import annotations

import stat

import pytest

from diet_explore.core import atomic
from diet_explore.core.errors import DietError


def test_written_file_reads_like_any_other_and_leaves_no_temp(tmp_path):
    atomic.write_json(tmp_path / "a.json", {"x": 1})
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "a.txt"
    atomic.write_text(path, "old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", broken_replace)
    with pytest.raises(atomic.DietError, match=r"a.txt could not be written \(disk full\)"):  # one line, no traceback
        atomic.write_text(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_staged_dir_replaces_the_folder_only_on_success(tmp_path):
    final = tmp_path / "model"
    with atomic.staged_dir(final) as tmp:
        (tmp / "w").write_text("1")
        (tmp / "w").chmod(0o600)
    with pytest.raises(RuntimeError), atomic.staged_dir(final, overwrite=True, marker="w") as tmp:
        (tmp / "w").write_text("2")
        raise RuntimeError("interrupted")
    assert (final / "w").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert stat.S_IMODE(final.stat().st_mode) == 0o755
    assert stat.S_IMODE((final / "w").stat().st_mode) == 0o644


def test_staged_dir_refuses_an_empty_name_the_root_and_the_current_folder(tmp_path, monkeypatch):
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    # "." used to fail late with a ValueError (empty name) after the model had loaded
    for bad in ("", "  ", ".", "..", str(tmp_path), "/"):
        with pytest.raises(DietError, match="empty|root, the current folder") as err, atomic.staged_dir(bad, overwrite=True):
            pytest.fail(f"staged {bad!r}")
        assert "--out" in err.value.hint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here"] and not any((tmp_path / "here").iterdir())


def test_staged_dir_refuses_to_replace_a_file_and_leaves_nothing_behind(tmp_path):
    target = tmp_path / "model"
    target.write_text("not a folder")
    with pytest.raises(DietError, match=r"model exists and is not a folder"), atomic.staged_dir(target, overwrite=True):
        pytest.fail("staged over a file")
    assert target.read_text() == "not a folder"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no stray .model.old


def test_check_output_dir_runs_before_any_work_and_resolves_the_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    with pytest.raises(DietError, match="output folder out already exists"):
        atomic.check_output_dir("out")
    assert atomic.check_output_dir("out", overwrite=True) == tmp_path / "out"
    assert atomic.check_output_dir("new/../fresh") == tmp_path / "fresh"


def test_overwrite_is_not_blocked_by_a_leftover_old_file(tmp_path):
    final = tmp_path / "model"
    final.mkdir()
    (final / "w").write_text("1")
    (tmp_path / ".model.old").write_text("left by something else")  # the old fixed name broke the swap
    with atomic.staged_dir(final, overwrite=True, marker="w") as tmp:
        (tmp / "w").write_text("2")
    assert (final / "w").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model.old", "model"]


def test_check_output_dir_refuses_a_folder_that_cannot_be_created(tmp_path):
    from diet_explore.core.atomic import check_output_dir

    (tmp_path / "afile").write_text("")
    with pytest.raises(DietError, match=r"cannot be created: .*afile is not a folder"):
        check_output_dir(tmp_path / "afile" / "pruned")


def _hold_lock(path, ready, seconds):
    import time

    from diet_explore.core.atomic import locked

    with locked(path):
        ready.set()
        time.sleep(seconds)


@pytest.mark.slow
def test_locked_is_reentrant_waits_for_another_process_and_times_out_clearly(tmp_path):
    import multiprocessing as mp
    import time

    from diet_explore.core.atomic import locked

    target = tmp_path / "results.jsonl"
    with locked(target), locked(target):  # nested in one process: re-entered, not deadlocked
        pass
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    other = ctx.Process(target=_hold_lock, args=(target, ready, 2.0))
    other.start()
    assert ready.wait(60)
    with pytest.raises(DietError, match="locked by another process"), locked(target, timeout=0.2):
        pass
    start = time.perf_counter()
    with locked(target, timeout=60):
        waited = time.perf_counter() - start
    other.join()
    assert waited > 0.5  # it waited for the other process to let go


def test_locked_keeps_another_thread_out_and_lets_the_holding_thread_nest(tmp_path):
    """Threads of one process (two Streamlit sessions, a job's threads) exclude each other too: the file
    lock alone counts nested acquires process-wide, and let a second thread straight in."""
    import threading
    import time

    from diet_explore.core.atomic import locked

    target = tmp_path / "runs.jsonl"
    held, release = threading.Event(), threading.Event()

    def holder():
        with locked(target), locked(target):  # the holding thread nests
            held.set()
            release.wait(60)

    t = threading.Thread(target=holder)
    t.start()
    assert held.wait(60)
    try:
        with pytest.raises(DietError, match="is locked by another process"), locked(target, timeout=0.2):
            pass
    finally:
        release.set()
    start = time.perf_counter()
    with locked(target, timeout=60):
        pass
    t.join(60)
    assert time.perf_counter() - start < 30  # and it gets in once the other thread lets go


def test_read_json_object_skips_what_is_not_a_whole_json_object(tmp_path):
    """The job store, the run store and the worker file read records through this: a missing,
    half-written, non-UTF-8 or non-object file is None (skipped and reported by the store), never raised."""
    from diet_explore.core.atomic import read_json_object, write_json

    good = tmp_path / "good.json"
    write_json(good, {"kind": "x", "n": 1})
    assert read_json_object(good) == {"kind": "x", "n": 1}
    cases = {"missing": None, "half": b'{"kind": "x", "n"', "latin1": '{"k": "\xe9"}'.encode("latin-1"), "list": b"[1, 2]"}
    for name, body in cases.items():
        path = tmp_path / f"{name}.json"
        if body is not None:
            path.write_bytes(body)
        assert read_json_object(path) is None, name
    assert read_json_object(tmp_path) is None  # a folder
