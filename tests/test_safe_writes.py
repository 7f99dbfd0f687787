"""What a write must never destroy: special files, symlinks, folders diet-explore did not write, and
the previous folder of a killed write. Each test runs the command or the library call production runs."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import time

import pytest

from diet_explore.cli import main
from diet_explore.core import atomic
from diet_explore.core.errors import DietError
from diet_explore.masking.maskfile import load_mask
from diet_explore.pruning.saving import PRUNE_INFO_FILE


def _special_files(tmp_path):
    """A FIFO, and a character device like /dev/null (mknod needs root; skipped otherwise)."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    found = [(fifo, stat.S_ISFIFO)]
    dev = tmp_path / "null-device"
    try:
        os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        found.append((dev, stat.S_ISCHR))
    except (PermissionError, OSError):
        pass
    return found


def test_mask_out_naming_a_special_file_is_refused_and_the_file_survives(synthetic_cache_dir, tmp_path, capsys):
    for path, is_kind in _special_files(tmp_path):
        assert main(["mask", "--cache", str(synthetic_cache_dir), "--out", str(path)]) == 2
        err = capsys.readouterr().err
        assert f"--out {path} is a" in err and "not a regular file" in err and "Traceback" not in err
        assert is_kind(os.lstat(path).st_mode), f"{path} was replaced"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary sibling left either


def test_eval_predictions_naming_a_special_file_is_refused_before_any_model_loads(tmp_path, capsys):
    for path, is_kind in _special_files(tmp_path):
        for flag in ("--predictions", "--json"):
            assert main(["eval", "--model", str(tmp_path / "no-such-model"), flag, str(path)]) == 2
            err = capsys.readouterr().err
            assert f"{flag} {path} is a" in err and "no-such-model" not in err  # refused first
            assert is_kind(os.lstat(path).st_mode)


def test_the_library_write_refuses_a_special_file_too(tmp_path):
    for path, is_kind in _special_files(tmp_path):
        with pytest.raises(DietError, match="not a regular file"):
            atomic.write_json(path, {"x": 1})
        assert is_kind(os.lstat(path).st_mode)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_symlink_is_written_through_and_stays_a_symlink(synthetic_cache_dir, tmp_path):
    target = tmp_path / "real" / "mask.json"
    target.parent.mkdir()
    assert main(["mask", "--cache", str(synthetic_cache_dir), "--sparsity", "0.5", "--out", str(target)]) == 0
    link = tmp_path / "link.json"
    link.symlink_to(target)
    assert main(["mask", "--cache", str(synthetic_cache_dir), "--out", str(link)]) == 0
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert load_mask(target).config["sparsity"] == 0.2  # the target holds the new mask
    assert sorted(p.name for p in target.parent.iterdir()) == ["mask.json"]  # no temp sibling left
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "real" / "new.json")
    assert main(["mask", "--cache", str(synthetic_cache_dir), "--out", str(dangling)]) == 0
    assert dangling.is_symlink() and load_mask(tmp_path / "real" / "new.json").n_keep > 0


def test_a_symlink_to_a_special_file_is_refused(tmp_path):
    (path, is_kind), *_ = _special_files(tmp_path)
    link = tmp_path / "link"
    link.symlink_to(path)
    with pytest.raises(DietError, match="not a regular file"):
        atomic.check_writable(link, "--out", folder=False)
    with pytest.raises(DietError, match="not a regular file"):
        atomic.write_text(link, "x")
    assert link.is_symlink() and is_kind(os.lstat(path).st_mode)


# -------------------------------------------------------------------------------- folders
def _score_cache_like(folder):
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text('{"kind": "diet-explore-score-cache"}')
    (folder / "notes.txt").write_text("mine")


def test_overwrite_replaces_only_a_folder_with_the_marker(tmp_path):
    theirs = tmp_path / "theirs"
    _score_cache_like(theirs)
    refused = pytest.raises(DietError, match=r"holds files diet-explore did not write there \(it has no m.json\)")
    with refused as err, atomic.staged_dir(theirs, overwrite=True, marker="m.json") as tmp:
        (tmp / "m.json").write_text("{}")
    assert "--out" in err.value.hint
    assert sorted(p.name for p in theirs.iterdir()) == ["manifest.json", "notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["theirs"]  # nothing staged was left behind

    ours = tmp_path / "ours"
    with atomic.staged_dir(ours, marker="m.json") as tmp:
        (tmp / "m.json").write_text("1")
    with atomic.staged_dir(ours, overwrite=True, marker="m.json") as tmp:
        (tmp / "m.json").write_text("2")
    assert (ours / "m.json").read_text() == "2"
    empty = tmp_path / "empty"
    empty.mkdir()
    with atomic.staged_dir(empty, overwrite=True, marker="m.json") as tmp:
        (tmp / "m.json").write_text("3")
    assert (empty / "m.json").read_text() == "3"
    with pytest.raises(DietError, match="did not write"):  # no marker named: only an empty folder may go
        atomic.check_output_dir(ours, overwrite=True)


def test_prune_overwrite_refuses_a_folder_it_did_not_write_before_loading_weights(tmp_path, capsys):
    out = tmp_path / "cache-folder"
    _score_cache_like(out)
    mask = tmp_path / "mask.json"
    mask.write_text("{}")
    rc = main(["prune", "--model", str(tmp_path / "no-model"), "--mask", str(mask), "--out", str(out), "--overwrite"])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"output folder {out} holds files diet-explore did not write there (it has no {PRUNE_INFO_FILE})" in err
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "notes.txt"]


def test_save_pruned_overwrites_its_own_folder_and_refuses_others(tmp_path):
    from diet_explore.models.adapters.tiny import tiny_model
    from diet_explore.pruning.saving import save_pruned
    from diet_explore.pruning.slicing import prune_model

    model = tiny_model("llama", hidden_size=64)
    keep = [i % 8 != 0 for i in range(64)]  # 56 kept: a multiple of the tiny model's heads
    import numpy as np

    pruned = prune_model(model, np.array(keep))
    out = save_pruned(pruned, None, tmp_path / "pruned")
    first = json.loads((out / PRUNE_INFO_FILE).read_text())
    save_pruned(pruned, None, out, overwrite=True)  # its own folder: replaced
    assert json.loads((out / PRUNE_INFO_FILE).read_text()) == first
    other = tmp_path / "other"
    _score_cache_like(other)
    with pytest.raises(DietError, match="did not write"):
        save_pruned(pruned, None, other, overwrite=True)
    assert sorted(p.name for p in other.iterdir()) == ["manifest.json", "notes.txt"]


def test_a_score_cache_inside_a_pruned_folder_is_never_replaced_and_profile_refuses_a_model_folder(tmp_path, capsys):
    """profile --out <pruned folder> added a cache beside the model; the next prune --overwrite deleted it."""
    import numpy as np

    from diet_explore.models.adapters.tiny import tiny_model
    from diet_explore.pruning.saving import save_pruned
    from diet_explore.pruning.slicing import prune_model

    pruned = prune_model(tiny_model("llama", hidden_size=64), np.array([i % 8 != 0 for i in range(64)]))
    out = save_pruned(pruned, None, tmp_path / "pruned")
    rc = main(["profile", "--model", "smollm2-135m", "--tasks", "rte", "--samples", "2", "--no-generic", "--out", str(out)])
    assert rc == 2 and f"--out {out} holds a model (config.json), not a score cache" in capsys.readouterr().err
    (out / "manifest.json").write_text("{}")  # a cache that got there some other way
    with pytest.raises(DietError, match="also holds manifest.json, which this command does not write"):
        save_pruned(pruned, None, out, overwrite=True)
    mask = tmp_path / "mask.json"
    mask.write_text("{}")
    rc = main(["prune", "--model", str(tmp_path / "no-model"), "--mask", str(mask), "--out", str(out), "--overwrite"])
    assert rc == 2 and "also holds manifest.json" in capsys.readouterr().err
    assert (out / "manifest.json").exists() and (out / PRUNE_INFO_FILE).exists()


# -------------------------------------------------------------------------------- debris of killed writes
_KILLED_WRITER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from diet_explore.core import atomic
    kind, target = sys.argv[1], Path(sys.argv[2])
    if kind == "file":
        real = os.replace
        def stop(src, dst):
            os._exit(9)  # killed after the temporary file is complete, before it is moved into place
        atomic.os.replace = stop
        atomic.write_text(target, "new")
    elif kind == "partial":
        with atomic.staged_dir(target, overwrite=True, marker="m") as tmp:
            (tmp / "m").write_text("new")
            os._exit(9)  # killed mid-write
    else:  # killed between the two renames: the old folder is only .old, the new one never arrived
        calls = []
        real = os.replace
        def replace(src, dst):
            calls.append(src)
            real(src, dst)
            if len(calls) == 1:
                os._exit(9)
        atomic.os.replace = replace
        with atomic.staged_dir(target, overwrite=True, marker="m") as tmp:
            (tmp / "m").write_text("new")
    """
)


def _kill_a_writer(kind, target):
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, kind, str(target)], capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr


def test_a_killed_file_write_leaves_a_temp_file_that_the_next_write_removes(tmp_path):
    target = tmp_path / "results.json"
    atomic.write_text(target, "old")
    _kill_a_writer("file", target)
    leftovers = [p for p in tmp_path.iterdir() if p.name != "results.json"]
    assert len(leftovers) == 1 and leftovers[0].name.endswith(".tmp") and target.read_text() == "old"
    atomic.write_text(target, "newer")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"] and target.read_text() == "newer"


def test_a_killed_folder_write_leaves_a_partial_folder_that_the_next_write_removes(tmp_path):
    target = tmp_path / "pruned"
    with atomic.staged_dir(target, marker="m") as tmp:
        (tmp / "m").write_text("old")
    _kill_a_writer("partial", target)
    assert any(p.name.endswith(".partial") for p in tmp_path.iterdir()) and (target / "m").read_text() == "old"
    with atomic.staged_dir(target, overwrite=True, marker="m") as tmp:
        (tmp / "m").write_text("newer")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned"] and (target / "m").read_text() == "newer"


def test_a_kill_between_the_renames_is_repaired_by_putting_the_old_folder_back(tmp_path):
    target = tmp_path / "pruned"
    with atomic.staged_dir(target, marker="m") as tmp:
        (tmp / "m").write_text("old")
    _kill_a_writer("old", target)
    assert not target.exists() and any(p.name.endswith(".old") for p in tmp_path.iterdir())
    assert [p.name for p in atomic.remove_debris(target)]  # the next write of that folder starts with this
    assert (target / "m").read_text() == "old"  # the previous folder is back, not deleted
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned"]


def test_debris_of_a_running_writer_is_left_alone(tmp_path):
    target = tmp_path / "results.json"
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        busy = tmp_path / f".results.json.{proc.pid}-abcdefgh.tmp"
        busy.write_text("being written")
        mine = tmp_path / f".results.json.{os.getpid()}-abcdefgh.tmp"  # this process: another thread's
        mine.write_text("being written")
        atomic.write_text(target, "x")
        assert busy.exists() and mine.exists()
    finally:
        proc.kill()
        proc.wait()
    atomic.write_text(target, "y")
    assert not busy.exists() and mine.exists()


def test_a_users_own_dot_files_beside_the_output_are_not_debris(tmp_path):
    """ ".m.json.backup.old" (a folder) and ".m.json.mine.tmp", an hour old, were deleted by the next
    write of m.json, and with m.json absent the .old folder was even renamed into its place."""
    target = tmp_path / "m.json"
    backup = tmp_path / ".m.json.backup.old"
    backup.mkdir()
    (backup / "notes.txt").write_text("mine")
    mine = tmp_path / ".m.json.mine.tmp"
    mine.write_text("mine")
    stale = tmp_path / ".m.json.abcd1234.tmp"  # what an old version's killed write left: still removed
    stale.write_text("half")
    hours_ago = time.time() - 2 * atomic.LEGACY_DEBRIS_AGE_S
    for p in (backup, mine, stale):
        os.utime(p, (hours_ago, hours_ago))
    atomic.write_text(target, "x")
    assert (backup / "notes.txt").read_text() == "mine" and mine.read_text() == "mine" and target.read_text() == "x"
    assert not stale.exists()
