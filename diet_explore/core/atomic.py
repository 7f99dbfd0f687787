"""Atomic writes: a reader sees the old file or the new one, never half of either.

Everything is written to a temporary sibling and moved into place with ``os.replace`` (atomic on
POSIX within one filesystem), so an interrupted run never leaves a truncated cache, mask or model.
A file that several processes read, change and write back (a sweep's results, the run store, the
evaluation cache, the job store) is changed under ``locked(path)`` as well, so no update is lost.

What is never replaced: a special file (a device such as /dev/null, a FIFO, a socket) is refused,
since swapping it for a regular file would destroy it; a symlink is written *through*: its target
is replaced atomically and the link stays. A folder is replaced only when diet-explore wrote it,
recognised by a marker file its writer names (``staged_dir(..., marker=...)``); anything else is
refused. The temporary siblings carry the writing process's id (``.<name>.<pid>-<random>.tmp``,
``.partial``, ``.old``), so a later write of the same name removes what a killed writer left
(and puts back a folder a kill left only as ``.old``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from diet_explore.core.errors import DietError

LOCK_TIMEOUT_S = 600.0  # a writer holds a lock for milliseconds; minutes means a stuck process
NAME_MAX = 255  # bytes in one file or folder name (Linux, macOS)
PATH_MAX = 4096  # bytes in a whole path (Linux)
LEGACY_DEBRIS_AGE_S = 3600.0  # temp siblings named before they carried a pid: stale after an hour
_DEBRIS_KINDS = ("tmp", "partial", "old")
# the random part mkstemp/mkdtemp put in a sibling's name: exactly this, so a user's own
# ".out.json.backup.old" or ".out.json.mine.tmp" is never taken for debris and deleted
_RANDOM = "[a-z0-9_]{8}"


# one (thread lock, FileLock) per (process, lock file). The file lock keeps other processes out; it
# counts nested acquires process-wide, so on its own a second *thread* would walk straight in (two
# Streamlit sessions, or a job's threads, writing the run store at once). The RLock keeps other
# threads out and lets the holding thread nest.
_LOCKS: dict[tuple[int, str], tuple[threading.RLock, Any]] = {}
_LOCKS_GUARD = threading.Lock()


@contextlib.contextmanager
def locked(path: str | Path, timeout: float = LOCK_TIMEOUT_S, in_use: str | None = None) -> Iterator[None]:
    """Hold an exclusive lock for ``path`` (``.<name>.lock`` beside it, via ``filelock``) against other
    processes and other threads: read-modify-write sequences on a shared file go inside.
    Re-entrant within one thread. ``in_use``: the error when the lock is not had within ``timeout``
    (``timeout=0``: a long run that refuses to share its output, instead of waiting for it)."""
    from filelock import FileLock, Timeout

    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = str(path.parent / f".{path.name}.lock")
    with _LOCKS_GUARD:
        entry = _LOCKS.get((os.getpid(), key))  # a forked child gets its own: an inherited lock is not its to hold
        if entry is None:
            entry = _LOCKS[(os.getpid(), key)] = (threading.RLock(), FileLock(key, thread_local=False))
    thread_lock, file_lock = entry

    def busy() -> DietError:
        return DietError(
            in_use or f"{path} is locked by another process for over {timeout:.0f} s",
            f"wait for the other run to finish, or remove {key} if no run is using it",
        )

    start = time.monotonic()
    if not thread_lock.acquire(timeout=max(timeout, 0.0)):
        raise busy()
    try:
        try:
            file_lock.acquire(timeout=max(timeout - (time.monotonic() - start), 0.0))
        except Timeout:
            raise busy() from None
        try:
            yield
        finally:
            if file_lock.lock_counter == 1 and _may_unlink(file_lock):
                # the outermost hold removes the lock file while it still holds it, so none is left beside
                # ``path`` (a refused profile left .<out>.lock); filelock re-opens one that was unlinked
                # under a waiter (its file has no link left after flock), so two holders never coexist
                with contextlib.suppress(OSError):
                    os.unlink(key)
            file_lock.release()
    finally:
        thread_lock.release()


def _may_unlink(file_lock: Any) -> bool:
    """Whether removing ``file_lock``'s file while holding it is safe: a native (flock) lock of a
    filelock that retries an unlinked lock file (4.x, which records ``soft_fallback``). A soft lock's
    file *is* the lock, so it is never removed here; nor with a filelock that does not say which."""
    return getattr(getattr(file_lock, "_context", None), "soft_fallback", True) is False


# --------------------------------------------------------------------------------------------
# Paths the OS can take
# --------------------------------------------------------------------------------------------
def shorten(text: str, n: int = 48, quote: bool = False) -> str:
    """``text`` as a message quotes it: whole up to ``n`` characters, else its two ends joined by …
    and its length, so a cut value is never mistaken for the whole one (``quote``: in repr quotes)."""
    q = repr if quote else str
    if len(text) <= n:
        return q(text)
    return f"{q(text[: n // 2] + '…' + text[-(n // 2) :])} ({len(text)} characters)"


def check_path(path: str | Path, what: str = "path") -> Path:
    """Refuse a path the OS cannot even look up (one name over ``NAME_MAX`` bytes, the whole over
    ``PATH_MAX``), with the DietError every command prints, instead of the OSError it would raise."""
    text = os.fspath(path)
    if "\0" in text:  # the OS cannot take it: os.stat raised ValueError ("embedded null byte")
        shown = shorten(text.replace("\0", "\\0"))
        raise DietError(f"{what} {shown} contains a NUL byte", f"give a {what} without one")
    for part in Path(text).parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise DietError(
                f"{what} {shorten(text)}: the name {part[:12]}…{part[-12:]} is {len(os.fsencode(part))} bytes long; "
                f"a file or folder name is at most {NAME_MAX} bytes",
                f"shorten that name to at most {NAME_MAX} bytes",
            )
    if len(os.fsencode(text)) >= PATH_MAX:
        raise DietError(
            f"{what} {shorten(text)} is {len(os.fsencode(text))} bytes long; paths are at most {PATH_MAX - 1} bytes",
            "use a shorter path",
        )
    return Path(text)


_FILE_KINDS = (
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
)


def file_target(path: str | Path, what: str = "output") -> Path:
    """The file a write of ``path`` replaces: a symlink is followed to its target (written through:
    the target is replaced, the link stays); a folder or a special file is a DietError."""
    path = check_path(path, what)
    real = Path(os.path.realpath(path))  # every symlink followed; a dangling one gives where it points
    try:
        mode = os.stat(real).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return real  # not there yet (check_writable says whether it can be created)
    except OSError as exc:
        raise DietError(f"{what} {path} cannot be used ({exc.strerror or exc})", f"choose another {what}") from None
    if stat.S_ISDIR(mode):
        raise DietError(f"{what} {path} is a folder", f"give a file path, e.g. {what} {path / 'out.json'}")
    for test, kind in _FILE_KINDS:
        if test(mode):
            raise DietError(
                f"{what} {path} is {kind}, not a regular file; diet-explore writes files by atomic "
                "replacement and will not replace it",
                f"give a regular file path, e.g. {what} out.json",
            )
    return real


def read_regular(path: str | Path, limit: int, what: str = "file") -> bytes:
    """The bytes of the regular file at ``path`` (a symlink is followed), refusing with a DietError
    what is not one, before opening it (a FIFO blocked the reader, a link to /dev/zero read until
    memory ran out), and a file of more than ``limit`` bytes (read no further than that)."""
    path = check_path(path, what)

    def kind_of(mode: int) -> str | None:
        if stat.S_ISREG(mode):
            return None
        if stat.S_ISDIR(mode):
            return "a folder"
        return next((kind for test, kind in _FILE_KINDS if test(mode)), "not a regular file")

    try:
        kind = kind_of(os.stat(path).st_mode)
        if kind is None:  # O_NONBLOCK: a FIFO swapped in after the stat still does not block the open
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            with os.fdopen(fd, "rb") as fh:
                kind = kind_of(os.fstat(fd).st_mode)
                data = fh.read(limit + 1) if kind is None else b""
    except OSError as exc:
        raise DietError(
            f"{what} {path} could not be read ({exc.strerror or exc})", "check that it exists and is readable"
        ) from None
    if kind is not None:
        raise DietError(f"{what} {path} is {kind}, not a regular file", f"give a regular file as the {what}")
    if len(data) > limit:
        raise DietError(f"{what} {path} is over {limit} bytes, more than such a file ever holds", f"check that it is a {what}")
    return data


# --------------------------------------------------------------------------------------------
# Temporary siblings and what a killed writer leaves of them
# --------------------------------------------------------------------------------------------
def _stem(name: str) -> str:
    """``name`` as it appears in its temporary siblings' names (shortened by a hash when the
    sibling's name would not fit in ``NAME_MAX``)."""
    if len(os.fsencode(name)) <= NAME_MAX - 40:
        return name
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:12]
    return name.encode("utf-8", "surrogateescape")[:160].decode("utf-8", "ignore") + "~" + digest


def _sibling_prefix(name: str) -> str:
    return f".{_stem(name)}.{os.getpid()}-"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # another thread of this process may be writing it now
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def remove_debris(final: str | Path) -> list[Path]:
    """Remove what killed writers of ``final`` left beside it (temporary files, ``.partial``
    folders, ``.old`` folders); a ``.old`` folder is put back instead when ``final`` itself is gone
    (a kill between the two renames of ``staged_dir``). Siblings of a writer that is still running
    (same machine) are left alone. Returns what was removed or restored."""
    final = Path(final)
    folder = final.parent
    pattern = re.compile(rf"^\.{re.escape(_stem(final.name))}\.(?:(?P<pid>\d+)-)?{_RANDOM}\.(?P<kind>{'|'.join(_DEBRIS_KINDS)})$")
    try:
        entries = list(folder.iterdir())
    except OSError:
        return []
    found = []
    for entry in sorted(entries):
        m = pattern.match(entry.name)
        if m is None:
            continue
        try:
            if m["pid"] is not None:
                if _alive(int(m["pid"])):
                    continue
            elif time.time() - entry.lstat().st_mtime < LEGACY_DEBRIS_AGE_S:
                continue  # named before siblings carried a pid: only an old one is surely stale
            if m["kind"] == "old" and entry.is_dir() and not (final.exists() or final.is_symlink()):
                os.replace(entry, final)  # the previous folder was renamed away and its successor never arrived
            elif entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError:
            continue  # gone already, or not ours to remove: never fail a write over debris
        found.append(entry)
    return found


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (through a symlink to its target; a special file or a
    folder is refused with a DietError)."""
    target = file_target(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_debris(target)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=_sibling_prefix(target.name), suffix=".tmp")
    except OSError as exc:
        raise _write_error(path, exc) from None
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; a cache, mask or result file should read like any other
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):  # a full disk, a file system that refuses the rename, ...
            raise _write_error(path, exc) from None
        raise


def _write_error(path: str | Path, exc: OSError) -> DietError:
    return DietError(
        f"{path} could not be written ({exc.strerror or exc})",
        "choose a path on a writable file system with free space",
    )


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


class DuplicateKeyError(json.JSONDecodeError):
    """Valid JSON whose object names ``key`` twice (read with ``unique_keys``): a reader says that,
    not "invalid JSON at char 0", since the position of the second key is not known."""

    def __init__(self, key: str, doc: str):
        super().__init__(f"the key {key!r} appears twice in one object", doc, 0)
        self.key = key

    def __str__(self) -> str:
        return self.msg


def loads_json(text: str | bytes, unique_keys: bool = False) -> Any:
    """``json.loads``, with a document nested too deeply for Python's parser (``[[[[...`` 100,000
    deep) raised as the ``json.JSONDecodeError`` every reader already handles: ``json`` raises a
    RecursionError there, which no reader expects and which ended in a traceback. ``unique_keys``:
    an object that names a key twice is such an error too (``json`` keeps the last one silently)."""
    doc = text if isinstance(text, str) else ""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                raise DuplicateKeyError(key, doc[:80])
            out[key] = value
        return out

    try:
        return json.loads(text, object_pairs_hook=pairs if unique_keys else None)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply to read", doc[:80], 0) from None


def read_json_object(path: str | Path) -> dict[str, Any] | None:
    """The JSON object stored at ``path``, or None when the file is missing, unreadable, not
    UTF-8, not JSON or not an object: a record another process may be writing, or a damaged one,
    is skipped by its reader, never raised."""
    try:
        value = loads_json(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def check_output_dir(
    final: str | Path, overwrite: bool = False, marker: str | None = None, foreign: tuple[str, ...] = ()
) -> Path:
    """The resolved folder ``staged_dir`` would write, or a DietError saying why it must not.

    Cheap, so commands call it before minutes of model loading. Replacing the current folder (or
    one above it, or the root) would move the ground from under the process; replacing a file
    with a folder is almost certainly a typo in --out. An existing folder is replaced only with
    ``overwrite`` and only when it is empty or holds ``marker`` (the file diet-explore writes into
    every folder of this kind): a folder of anything else (a score cache, someone's files) is never
    replaced, nor one that holds ``marker`` and also one of ``foreign`` (another kind's marker: a
    score cache profiled into a pruned folder was deleted by the next prune --overwrite).
    """
    if not str(final).strip():
        raise DietError("the output folder name is empty", "give a folder, e.g. --out artifacts/pruned")
    check_path(final, "output folder")
    path = Path(final).expanduser().resolve()
    if path == path.parent or Path.cwd().resolve().is_relative_to(path):
        raise DietError(
            f"output folder {final} is the filesystem root, the current folder or one above it, and cannot be replaced",
            "give a new folder, e.g. --out artifacts/pruned",
        )
    if path.exists():
        if not path.is_dir():
            raise DietError(
                f"output {final} exists and is not a folder, so it will not be replaced", "remove it or choose another --out"
            )
        if not overwrite:
            raise DietError(f"output folder {final} already exists", "pass --overwrite or choose another --out")
        if not replaceable(path, marker):
            raise DietError(
                f"output folder {final} holds files diet-explore did not write there"
                + (f" (it has no {marker})" if marker else "")
                + ", so --overwrite will not replace it",
                "choose another --out, or empty or remove that folder yourself",
            )
        also = [name for name in foreign if (path / name).exists() or (path / name).is_symlink()]
        if also:
            raise DietError(
                f"output folder {final} also holds {', '.join(also)}, which this command does not write, so --overwrite "
                "will not replace it",
                "choose another --out, or move those files out first",
            )
    check_writable(path, "output folder", folder=True)  # a parent that is a file, or read-only
    return path


def replaceable(folder: Path, marker: str | None) -> bool:
    """Whether an existing folder may be replaced: it is empty, or it holds ``marker`` as a file."""
    try:
        empty = not any(folder.iterdir())
    except OSError:
        return False
    return empty or (marker is not None and (folder / marker).is_file() and not (folder / marker).is_symlink())


def check_writable(path: str | Path, what: str, folder: bool) -> None:
    """Refuse, before any work is done, a path an atomic write could not create later: a folder to
    write into (``folder``; it may exist) or a file (it must not be a folder or a special file; a
    symlink is checked where it points). Walks up to the first part of ``path`` that exists, which
    must be a writable folder (a file is created there and removed at once, the only test
    every file system answers truthfully); leaves nothing behind. ``what`` names the setting in the message, e.g.
    ``--out``."""
    path = check_path(path, what)
    if not folder:
        path = file_target(path, what)  # a symlink is written through: check where it points
    probe = path
    while not (probe.exists() or probe.is_symlink()) and probe.parent != probe:
        probe = probe.parent
    if probe == path:
        if folder and not path.is_dir():
            raise DietError(
                f"{what} {path} is not a folder", f"choose another {what} folder (a new or existing folder, not a file)"
            )
        probe = path if folder else path.parent  # a file is replaced through a temporary sibling
    elif not probe.is_dir():
        raise DietError(f"{what} {path} cannot be created: {probe} is not a folder", f"choose another {what} under a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise DietError(
            f"{what} {path} is not writable ({probe} is read-only for this user)",
            f"choose another {what}, or make {probe} writable",
        )
    try:  # os.access answers for the permission bits; some file systems (e.g. /sys, as root) refuse anyway
        fd, probe_file = tempfile.mkstemp(dir=probe, prefix=".diet-explore-probe-")
    except OSError as exc:  # the folder exists (found above): what failed is creating a file in it
        raise DietError(
            f"{what} {path} is not writable: the folder {probe} exists but takes no new files "
            f"(creating a test file there failed: {exc.strerror or exc})",
            f"choose another {what}, in a folder you can write to (not a read-only or special file system such as /proc)",
        ) from None
    os.close(fd)
    os.unlink(probe_file)


def check_replaceable_file(path: str | Path, what: str, ours: Callable[[Path], bool], kind: str) -> None:
    """Refuse a file target that exists and is not one diet-explore wrote (``ours`` recognises its
    own files, as marker files do for folders): an unrelated file is never silently replaced. An
    empty file holds nothing to lose (``mktemp``'s). A symlink is judged by its target, the file a
    write would replace."""
    target = file_target(path, what)
    if target.is_file() and target.stat().st_size and not ours(target):
        raise DietError(
            f"{what} {path} exists and is not {kind}, so diet-explore did not write it and will not replace it",
            f"choose a new {what} path, or delete that file first",
        )


KIND_PREFIX_BYTES = 4096  # how much of a file ``begins_with_kind`` reads: never all of a foreign file


def begins_with_kind(path: str | Path, kind: str) -> bool:
    """Whether the file at ``path`` starts with the JSON object key ``"kind": "<kind>"`` (a JSON
    document or the first line of a JSONL file that diet-explore wrote with that marker first). Reads
    at most ``KIND_PREFIX_BYTES``; a file that cannot be read is not ours."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(KIND_PREFIX_BYTES)
    except OSError:
        return False
    return re.match(rb'\s*\{\s*"kind"\s*:\s*' + re.escape(json.dumps(kind).encode()), head) is not None


@contextlib.contextmanager
def staged_dir(
    final: str | Path, overwrite: bool = False, marker: str | None = None, foreign: tuple[str, ...] = ()
) -> Iterator[Path]:
    """Yield a temporary folder next to ``final``; on success it replaces ``final`` in one rename.

    On any exception the temporary folder is removed and ``final`` is left untouched. An existing
    ``final`` is replaced only as ``check_output_dir`` allows (``overwrite``, and empty or holding
    ``marker``): the caller writes ``marker`` into the staged folder, so what it writes it may
    replace later.
    """
    final = check_output_dir(final, overwrite, marker, foreign)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_debris(final)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=_sibling_prefix(final.name), suffix=".partial"))
    except OSError as exc:
        raise _write_error(final, exc) from None
    tmp.chmod(0o755)  # mkdtemp makes 0700; the final folder should read like any other
    try:
        yield tmp
        for f in tmp.rglob("*"):  # writers that stage through mkstemp (e.g. safetensors shards) leave 0600
            if f.is_file() and not f.is_symlink():
                f.chmod(0o644)
        if final.exists():
            check_output_dir(final, overwrite, marker, foreign)  # what is there now (another process may have written it)
            # a fresh empty folder to rename the old one onto: never collides with anything left behind
            old = Path(tempfile.mkdtemp(dir=final.parent, prefix=_sibling_prefix(final.name), suffix=".old"))
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
