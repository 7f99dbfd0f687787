"""Task data: loading a task's split, and the seeded calibration / evaluation draws.

Calibration takes the first N of a seeded permutation of the split; evaluation walks the same
permutation from the other end and skips every calibration id, so the two never overlap.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import threading
import warnings
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from diet_explore import atomic
from diet_explore.assets import data_home, olmo_datasets_root, wiki_text_path
from diet_explore.errors import DietError
from diet_explore.tasks.registry import Request, TaskSpec, build_request

DEFAULT_SEED = 1234


def _from_disk(folder: Path, split: str):
    """A ``save_to_disk`` folder: a Dataset as is, or ``split`` of a DatasetDict (whose len() would
    count splits, not examples)."""
    import datasets
    import pyarrow

    try:
        loaded = datasets.load_from_disk(str(folder))
    except (OSError, ValueError, KeyError, TypeError, pyarrow.ArrowException) as exc:
        # FileNotFoundError for a folder that is not a saved dataset; JSON / arrow errors for a damaged one.
        raise DietError(f"dataset folder {folder} is not a readable saved dataset ({str(exc).splitlines()[0][:200]})",
                        "point dataset.path at a folder written by Dataset.save_to_disk or DatasetDict.save_to_disk") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DietError(f"dataset folder {folder} has no split {split!r}",
                            f"set dataset.split to one of: {', '.join(loaded) or '(none: the folder holds no splits)'}")
        return loaded[split]
    return loaded


@functools.lru_cache(maxsize=32)
def _load_split(local: str | None, path: str | None, hub: str | None, hub_name: str | None, split: str):
    import datasets

    datasets.disable_progress_bars()
    if path:
        folder = Path(path).expanduser()
        if not folder.exists():
            raise DietError(f"dataset folder {folder} does not exist", "fix dataset.path in the task entry")
        return _from_disk(folder, split)
    if local:
        try:
            folder = olmo_datasets_root() / local
        except DietError:
            folder = None
        if folder is not None and folder.exists():
            return _from_disk(folder, split)
    if hub:
        try:
            return datasets.load_dataset(hub, hub_name, split=split)
        except Exception as exc:  # offline, unknown id, ...: say which
            raise DietError(f"could not load {hub}/{hub_name} split {split} from the hub ({str(exc).splitlines()[0]})",
                            "install the offline data (make setup) or give dataset.path") from None
    raise DietError("task has no loadable dataset", "give dataset.local, dataset.path or dataset.hub")


def load_task_data(spec: TaskSpec):
    """The task's split (a ``datasets.Dataset``); a DietError, naming the task, when it cannot be loaded."""
    d = spec.dataset
    try:
        return _load_split(d.get("local"), d.get("path"), d.get("hub"), d.get("hub_name"), d.get("split") or "validation")
    except DietError as exc:  # the loaders know the folder; the user also needs to know which task asked
        raise DietError(f"task {spec.name!r}: {exc.message}", exc.hint) from None


def _permutation(task: str, size: int, seed: int) -> np.ndarray:
    # A stable per-task stream: Python's hash() is salted per process, sha256 is not.
    task_key = int.from_bytes(hashlib.sha256(task.encode()).digest()[:4], "little")
    return np.random.default_rng([seed, task_key]).permutation(size)


def calibration_ids(spec: TaskSpec, n: int, seed: int = DEFAULT_SEED, size: int | None = None) -> list[int]:
    size = len(load_task_data(spec)) if size is None else size
    if n > size:
        raise DietError(f"task {spec.name} has {size} examples in its split; {n} calibration samples asked for",
                        f"use --samples {size} or fewer")
    if n <= 0:
        raise DietError(f"--samples must be positive, got {n}", "use e.g. --samples 100")
    return sorted(int(i) for i in _permutation(spec.name, size, seed)[:n])


def evaluation_ids(spec: TaskSpec, limit: int, seed: int = DEFAULT_SEED, exclude: set[int] | frozenset[int] = frozenset(),
                   n_calibration: int = 100, size: int | None = None) -> list[int]:
    """Held-out ids: from the far end of the permutation, never among the first ``n_calibration``
    (the default profile's draw) nor in ``exclude`` (e.g. a cache's recorded sample ids)."""
    size = len(load_task_data(spec)) if size is None else size
    perm = _permutation(spec.name, size, seed)
    banned = set(int(i) for i in perm[: min(n_calibration, size)]) | set(exclude)
    pool = [int(i) for i in perm[::-1] if int(i) not in banned]
    if limit > len(pool):
        raise DietError(f"task {spec.name}: only {len(pool)} held-out examples remain after calibration; --limit {limit} asked for",
                        f"use --limit {len(pool)} or fewer")
    return pool[:limit]


def requests_for(spec: TaskSpec, ids: list[int]) -> list[Request]:
    data = load_task_data(spec)
    return [build_request(spec, dict(data[int(i)]), int(i)) for i in ids]


# ------------------------------------------------------------------------------------------------
# Generic text (wiki): task-agnostic calibration and held-out perplexity
# ------------------------------------------------------------------------------------------------
WIKI_TASK = "wikitext"


def tokenizer_fingerprint(tokenizer: Any) -> str | None:
    """Digest of a fast tokenizer's full definition (``backend_tokenizer.to_str()``: normalizer,
    pre-tokenizer, model, post-processor), so equal tokenizers share work whatever folder they came
    from (a pruned folder holds a copy of its source's); None for tokenizers without one."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    with contextlib.suppress(TypeError):  # remembered per object: serialising Gemma's takes 0.5 s
        if tokenizer in _FINGERPRINTS:
            return _FINGERPRINTS[tokenizer]
    digest = hashlib.sha256(f"{type(tokenizer).__name__}\n{backend.to_str()}".encode()).hexdigest()[:20]
    with contextlib.suppress(TypeError):
        _FINGERPRINTS[tokenizer] = digest
    return digest


_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


_WINDOWS: dict[tuple[Any, int], np.ndarray] = {}  # (fingerprint or tokenizer, window) -> windows
_WINDOWS_KEPT = 4
_WINDOWS_LOCK = threading.Lock()


def wiki_token_windows(tokenizer: Any, window: int = 128) -> np.ndarray:
    """Non-overlapping windows (W, window) of token ids over the wiki text (no special tokens).

    The first half of the windows is the calibration pool, the second half held out for perplexity.
    Tokenizing the 2 MB text takes about 2 s, so the windows are kept in memory per tokenizer
    definition and, for fast tokenizers, on disk as ``.npy`` next to the model store (keyed by the
    tokenizer's and the text's digests; a file that cannot be read is rebuilt)."""
    path = wiki_text_path()
    fingerprint = tokenizer_fingerprint(tokenizer)
    key = (fingerprint or tokenizer, window)  # the object itself (kept alive here), never a reusable id()
    with _WINDOWS_LOCK:
        if key in _WINDOWS:
            return _WINDOWS[key]
    text = path.read_text(encoding="utf-8")
    disk = None
    if fingerprint is not None:
        text_digest = hashlib.sha256(text.encode()).hexdigest()[:12]
        disk = data_home() / "wiki-windows" / f"{fingerprint}-{text_digest}-{window}.npy"
    windows = _read_windows(disk, window) if disk is not None else None
    if windows is None:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        n = len(ids) // window
        windows = np.asarray(ids[: n * window], dtype=np.int64).reshape(n, window)
        if disk is not None:
            with contextlib.suppress(OSError):  # a read-only store only costs the next process 2 s
                buf = io.BytesIO()
                np.save(buf, windows.astype(np.int32), allow_pickle=False)
                atomic.write_bytes(disk, buf.getvalue())
    windows.setflags(write=False)  # shared between callers and threads
    with _WINDOWS_LOCK:
        while len(_WINDOWS) >= _WINDOWS_KEPT:
            _WINDOWS.pop(next(iter(_WINDOWS)))
        _WINDOWS[key] = windows
    return windows


def _read_windows(path: Path, window: int) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        warnings.warn(f"rebuilding {path} ({exc})", stacklevel=3)
        return None
    if arr.ndim != 2 or arr.shape[1] != window or arr.dtype != np.int32:
        warnings.warn(f"rebuilding {path} (shape {arr.shape}, dtype {arr.dtype})", stacklevel=3)
        return None
    return arr.astype(np.int64)


def wiki_calibration_ids(n_windows: int, n: int, seed: int = DEFAULT_SEED) -> list[int]:
    pool = n_windows // 2
    if n > pool:
        raise DietError(f"wiki text has {pool} calibration windows; {n} asked for", f"use --samples {pool} or fewer")
    return sorted(int(i) for i in np.random.default_rng([seed, 7]).permutation(pool)[:n])


def wiki_heldout_ids(n_windows: int, n: int) -> list[int]:
    start = n_windows // 2
    if n > n_windows - start:
        raise DietError(f"wiki text has {n_windows - start} held-out windows; {n} asked for", "ask for fewer")
    return list(range(start, start + n))
