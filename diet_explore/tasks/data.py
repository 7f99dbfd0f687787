"""Task data: loading a task's split, and the seeded calibration / evaluation draws.

Calibration takes the first N of a seeded permutation of the split; evaluation walks the same
permutation from the other end and skips every calibration id, so the two never overlap.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import numpy as np

from diet_explore.core.assets import olmo_datasets_root
from diet_explore.core.errors import DietError
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
        raise DietError(
            f"dataset folder {folder} is not a readable saved dataset ({str(exc).splitlines()[0][:200]})",
            "point dataset.path at a folder written by Dataset.save_to_disk or DatasetDict.save_to_disk",
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DietError(
                f"dataset folder {folder} has no split {split!r}",
                f"set dataset.split to one of: {', '.join(loaded) or '(none: the folder holds no splits)'}",
            )
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
            raise DietError(
                f"could not load {hub}{f'/{hub_name}' if hub_name else ''} split {split} from the hub "
                f"({str(exc).splitlines()[0]})",
                "install the offline data (make setup) or give dataset.path",
            ) from None
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
        raise DietError(
            f"task {spec.name} has {size} examples in its split; {n} calibration samples asked for",
            f"use --samples {size} or fewer",
        )
    if n <= 0:
        raise DietError(f"--samples must be positive, got {n}", "use e.g. --samples 100")
    return sorted(int(i) for i in _permutation(spec.name, size, seed)[:n])


def evaluation_ids(
    spec: TaskSpec,
    limit: int,
    seed: int = DEFAULT_SEED,
    exclude: set[int] | frozenset[int] = frozenset(),
    n_calibration: int = 100,
    size: int | None = None,
    clip: bool = False,
) -> list[int]:
    """Held-out ids: from the far end of the permutation, never among the first ``n_calibration``
    (the default profile's draw) nor in ``exclude`` (e.g. a cache's recorded sample ids). With
    ``clip``, a pool smaller than ``limit`` is taken whole instead of refused."""
    size = len(load_task_data(spec)) if size is None else size
    perm = _permutation(spec.name, size, seed)
    banned = set(int(i) for i in perm[: min(n_calibration, size)]) | set(exclude)
    pool = [int(i) for i in perm[::-1] if int(i) not in banned]
    if not pool and limit > 0:  # "--limit 0 or fewer" is no advice: nothing is left to evaluate at all
        raise DietError(
            f"task {spec.name}: all {size} of its examples are calibration examples (profiled, or recorded as such by "
            "the mask), so none is held out to evaluate",
            "leave this task out of --tasks, or profile it with fewer --samples so that some examples stay held out",
        )
    if clip:
        return pool[:limit]
    if limit > len(pool):
        raise DietError(
            f"task {spec.name}: only {len(pool)} held-out examples remain after calibration; --limit {limit} asked for",
            f"use --limit {len(pool)} or fewer",
        )
    return pool[:limit]


def requests_for(spec: TaskSpec, ids: list[int]) -> list[Request]:
    data = load_task_data(spec)
    return [build_request(spec, dict(data[int(i)]), int(i)) for i in ids]


def check_task_data(spec: TaskSpec, ids: list[int] | None = None) -> int:
    """Load the task's split and build the requests of ``ids`` (default: its first 3 documents), so
    a template that does not fit the data fails in a second, before a model loads; returns the
    split's size. Raises DietError (unreadable data, empty split, or a request that cannot be built)."""
    data = load_task_data(spec)
    size = len(data)
    if size == 0:
        raise DietError(f"task {spec.name!r}: its dataset split is empty", "fix dataset.path / dataset.split in the task entry")
    for i in range(min(3, size)) if ids is None else ids:
        if not 0 <= int(i) < size:
            raise DietError(f"task {spec.name!r}: doc {i} is outside its {size} examples", f"use ids below {size}")
        build_request(spec, dict(data[int(i)]), int(i))
    return size
