"""Atomic writes: readable permissions, no temp leftovers, the old content survives a failed write."""

from __future__ import annotations

import stat

import pytest

from diet_explore import atomic


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
    with pytest.raises(OSError, match="disk full"):
        atomic.write_text(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_staged_dir_replaces_the_folder_only_on_success(tmp_path):
    final = tmp_path / "model"
    with atomic.staged_dir(final) as tmp:
        (tmp / "w").write_text("1")
        (tmp / "w").chmod(0o600)
    with pytest.raises(RuntimeError), atomic.staged_dir(final, overwrite=True) as tmp:
        (tmp / "w").write_text("2")
        raise RuntimeError("interrupted")
    assert (final / "w").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert stat.S_IMODE(final.stat().st_mode) == 0o755
    assert stat.S_IMODE((final / "w").stat().st_mode) == 0o644
