"""Task data: loading a task's split, and the seeded calibration / evaluation draws.

Calibration takes the first N of a seeded permutation of the split; evaluation walks the same
permutation from the other end and skips every calibration id, so the two never overlap.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from diet_explore.assets import olmo_datasets_root, wiki_text_path
from diet_explore.errors import DietError
from diet_explore.tasks.registry import Request, TaskSpec, build_request

DEFAULT_SEED = 1234


@functools.lru_cache(maxsize=32)
def _load_split(local: str | None, path: str | None, hub: str | None, hub_name: str | None, split: str):
    import datasets

    datasets.disable_progress_bars()
    if path:
        folder = Path(path).expanduser()
        if not folder.exists():
            raise DietError(f"dataset folder {folder} does not exist", "fix dataset.path in the task entry")
        return datasets.load_from_disk(str(folder))
    if local:
        try:
            folder = olmo_datasets_root() / local
        except DietError:
            folder = None
        if folder is not None and folder.exists():
            return datasets.load_from_disk(str(folder))
    if hub:
        try:
            return datasets.load_dataset(hub, hub_name, split=split)
        except Exception as exc:  # offline, unknown id, ...: say which
            raise DietError(f"could not load {hub}/{hub_name} split {split} from the hub ({str(exc).splitlines()[0]})",
                            "install the offline data (make setup) or give dataset.path") from None
    raise DietError("task has no loadable dataset", "give dataset.local, dataset.path or dataset.hub")


def load_task_data(spec: TaskSpec):
    d = spec.dataset
    return _load_split(d.get("local"), d.get("path"), d.get("hub"), d.get("hub_name"), d.get("split", "validation"))


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


@functools.lru_cache(maxsize=4)
def wiki_token_windows(tokenizer_key: str, tokenizer: Any, window: int = 128) -> np.ndarray:
    """Non-overlapping windows (W, window) of token ids over the wiki text (no special tokens).

    The first half of the windows is the calibration pool, the second half held out for perplexity.
    """
    text = wiki_text_path().read_text(encoding="utf-8")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    n = len(ids) // window
    return np.asarray(ids[: n * window], dtype=np.int64).reshape(n, window)


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
