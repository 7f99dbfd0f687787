"""Atomic writes: a reader sees the old file or the new one, never half of either.

Everything is written to a temporary sibling and moved into place with ``os.replace`` (atomic on
POSIX within one filesystem), so an interrupted run never leaves a truncated cache, mask or model.
A file that several processes read, change and write back (a sweep's results, the run store, the
evaluation cache, the job store) is changed under ``locked(path)`` as well, so no update is lost.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from diet_explore.core.errors import DietError

LOCK_TIMEOUT_S = 600.0  # a writer holds a lock for milliseconds; minutes means a stuck process


_LOCKS: dict[tuple[int, str], Any] = {}  # one FileLock per (process, lock file): a nested locked() re-enters it
_LOCKS_GUARD = threading.Lock()


@contextlib.contextmanager
def locked(path: str | Path, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold an exclusive inter-process lock for ``path`` (``.<name>.lock`` beside it, via ``filelock``):
    read-modify-write sequences on a shared file go inside. Re-entrant within one process."""
    from filelock import FileLock, Timeout

    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = str(path.parent / f".{path.name}.lock")
    with _LOCKS_GUARD:
        lock = _LOCKS.get((os.getpid(), key))  # a forked child gets its own: an inherited lock is not its to hold
        if lock is None:
            lock = _LOCKS[(os.getpid(), key)] = FileLock(key, thread_local=False)
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        raise DietError(
            f"{path} is locked by another process for over {timeout:.0f} s",
            f"wait for the other run to finish, or remove {key} if no run is using it",
        ) from None
    try:
        yield
    finally:
        lock.release()


def write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; a cache, mask or result file should read like any other
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def check_output_dir(final: str | Path, overwrite: bool = False) -> Path:
    """The resolved folder ``staged_dir`` would write, or a DietError saying why it must not.

    Cheap, so commands call it before minutes of model loading. Replacing the current folder (or
    one above it, or the root) would move the ground from under the process; replacing a file
    with a folder is almost certainly a typo in --out.
    """
    if not str(final).strip():
        raise DietError("the output folder name is empty", "give a folder, e.g. --out artifacts/pruned")
    path = Path(final).expanduser().resolve()
    if path == path.parent or Path.cwd().resolve().is_relative_to(path):
        raise DietError(
            f"output folder {final} is the filesystem root, the current folder or one above it, and cannot be replaced",
            "give a new folder, e.g. --out artifacts/pruned",
        )
    if path.exists():
        if not overwrite:
            raise DietError(f"output folder {final} already exists", "pass --overwrite or choose another --out")
        if not path.is_dir():
            raise DietError(
                f"output {final} exists and is not a folder, so it will not be replaced", "remove it or choose another --out"
            )
    check_writable(path, "output folder", folder=True)  # a parent that is a file, or read-only
    return path


def check_writable(path: str | Path, what: str, folder: bool) -> None:
    """Refuse, before any work is done, a path an atomic write could not create later: a folder to
    write into (``folder``; it may exist) or a file (it must not be a folder). Walks up to the
    first part of ``path`` that exists, which must be a writable folder; creates nothing. ``what``
    names the setting in the message, e.g. ``--out``."""
    path = Path(path)
    probe = path
    while not (probe.exists() or probe.is_symlink()) and probe.parent != probe:
        probe = probe.parent
    if probe == path:
        if folder and not path.is_dir():
            raise DietError(
                f"{what} {path} is not a folder", f"choose another {what} folder (a new or existing folder, not a file)"
            )
        if not folder and path.is_dir():
            raise DietError(f"{what} {path} is a folder", f"give a file path, e.g. {what} {path / 'out.json'}")
        probe = path if folder else path.parent  # a file is replaced through a temporary sibling
    elif not probe.is_dir():
        raise DietError(f"{what} {path} cannot be created: {probe} is not a folder", f"choose another {what} under a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise DietError(
            f"{what} {path} is not writable ({probe} is read-only for this user)",
            f"choose another {what}, or make {probe} writable",
        )


@contextlib.contextmanager
def staged_dir(final: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder next to ``final``; on success it replaces ``final`` in one rename.

    On any exception the temporary folder is removed and ``final`` is left untouched.
    """
    final = check_output_dir(final, overwrite)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".partial"))
    tmp.chmod(0o755)  # mkdtemp makes 0700; the final folder should read like any other
    try:
        yield tmp
        for f in tmp.rglob("*"):  # writers that stage through mkstemp (e.g. safetensors shards) leave 0600
            if f.is_file() and not f.is_symlink():
                f.chmod(0o644)
        if final.exists():
            # a fresh empty folder to rename the old one onto: never collides with anything left behind
            old = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".old"))
            os.replace(final, old)
            try:
                os.replace(tmp, final)
            except BaseException:
                os.replace(old, final)  # put the old folder back rather than leave nothing
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
