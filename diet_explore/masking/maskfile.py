"""Mask files: the JSON a mask is shipped in (kept indices + everything needed to rebuild it).

A mask file is plain JSON (written atomically), optionally with a ``.npy`` bool array next to it
for tools that want the raw mask. ``load_mask`` validates the schema and the indices, and checks
the hidden size / model against what the caller is about to prune.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from diet_explore import __version__
from diet_explore.core import atomic
from diet_explore.core.clock import utc_timestamp
from diet_explore.core.config import cli_flag, is_finite_number
from diet_explore.core.errors import DietError
from diet_explore.masking.build import MaskConfig
from diet_explore.masking.config import ignored_settings
from diet_explore.models.builtin import describe_source

MASK_SCHEMA_VERSION = 1
MASK_KIND = "diet-explore-mask"
MASK_MAX_BYTES = 16 << 20  # a mask lists kept dims and calibration ids: well under 1 MB for any model
OPTIONAL_FIELDS = ("config", "calibration_ids", "model_source")  # absent from older files of the same schema
MAX_HIDDEN = 1 << 20  # far above any model's hidden size; a mask claiming more is damaged (its keep vector would not fit)


@dataclass
class MaskFile:
    model_name: str
    model_id: str | None
    hidden_size: int
    method: str
    sparsity: float  # target
    actual_sparsity: float
    threshold: float
    weights: dict[str, float]  # effective weight of every voting task
    tasks: list[str]
    site: str
    layer_agg: str
    cache_manifest_hash: str | None
    package_version: str
    created: str
    kept_indices: list[int]
    config: dict[str, Any] = field(default_factory=dict)  # MaskConfig.to_dict()
    # Per task, the examples the scores were profiled on: ``eval`` of a pruned folder leaves them
    # out, whatever seed and sample count the profile used. None in files written before it existed.
    calibration_ids: dict[str, list[int]] | None = None
    # What the weights are when they are not what model_id names (a built-in: a de-quantized GGUF); None otherwise.
    model_source: str | None = None
    schema_version: int = MASK_SCHEMA_VERSION
    kind: str = MASK_KIND

    @property
    def keep(self) -> np.ndarray:
        """(hidden_size,) bool, True = kept."""
        keep = np.zeros(self.hidden_size, dtype=bool)
        keep[np.asarray(self.kept_indices, dtype=np.int64)] = True
        return keep

    @property
    def n_keep(self) -> int:
        return len(self.kept_indices)


def mask_file_from_result(result, cache) -> MaskFile:
    """A ``MaskFile`` for a ``MaskResult`` built from ``cache`` (a ScoreCache or ScorePrecompute)."""
    cache = getattr(cache, "cache", cache)
    cfg = result.config
    return MaskFile(
        model_name=cache.model_name,
        model_id=cache.manifest["model"].get("id"),
        hidden_size=int(result.keep.shape[0]),
        method=cfg.method,
        sparsity=float(cfg.sparsity),
        actual_sparsity=float(result.sparsity),
        threshold=float(cfg.threshold),
        weights={t: float(w) for t, w in zip(result.tasks, result.weights)},
        tasks=list(result.tasks),
        site=cfg.site,
        layer_agg=cfg.layer_agg,
        cache_manifest_hash=cache.manifest_hash,
        package_version=__version__,
        created=utc_timestamp(),
        kept_indices=[int(i) for i in result.kept_indices],
        config=cfg.to_dict(),
        calibration_ids=calibration_ids_of(cache.manifest),
        model_source=describe_source(cache.model_name),
    )


def calibration_ids_of(manifest: dict[str, Any]) -> dict[str, list[int]]:
    """A score cache manifest's per-task calibration sample ids (tasks, not generic text)."""
    return {
        t: [int(i) for i in meta.get("sample_ids", [])]
        for t, meta in manifest.get("tasks", {}).items()
        if meta.get("kind", "task") == "task"
    }


def save_mask(mask_file: MaskFile, path: str | Path, npy: bool = False) -> Path:
    """Write the mask JSON atomically; with ``npy`` also ``<path without .json>.npy`` (bool (D,))."""
    path = Path(path)
    if npy:  # both targets checked before either is written: a refused .npy must not leave a new JSON
        atomic.check_writable(path.with_suffix(".npy"), "--npy output", folder=False)
    atomic.write_json(path, dataclasses.asdict(mask_file))
    if npy:
        import io

        buf = io.BytesIO()
        np.save(buf, mask_file.keep, allow_pickle=False)
        atomic.write_bytes(path.with_suffix(".npy"), buf.getvalue())
    return path


def is_mask_file(path: str | Path) -> bool:
    """Whether ``path`` holds a diet-explore mask file (what ``mask --out`` may replace)."""
    return (atomic.read_json_object(path) or {}).get("kind") == MASK_KIND


def is_npy_file(path: str | Path) -> bool:
    """Whether ``path`` is a NumPy ``.npy`` file (what ``mask --npy`` may replace)."""
    try:
        with open(path, "rb") as f:
            return f.read(6) == b"\x93NUMPY"
    except OSError:
        return False


def load_mask(path: str | Path, expected_hidden_size: int | None = None, expected_model: str | None = None) -> MaskFile:
    """Read and validate a mask file; every problem is a ``DietError`` naming the file."""
    path = atomic.check_path(path, "mask file")
    if not path.is_file():
        what = "is not a regular file" if path.exists() or path.is_symlink() else "does not exist"  # a folder, FIFO, device
        raise DietError(f"mask file {path} {what}", "build one with `diet-explore mask ... --out <file>`")
    try:
        data = atomic.loads_json(atomic.read_regular(path, MASK_MAX_BYTES, "mask file").decode())  # read whole, then copied
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DietError(f"{path} is not valid JSON ({exc})", "the file is corrupt; rebuild the mask") from None
    if not isinstance(data, dict) or data.get("kind") != MASK_KIND:
        raise DietError(f"{path} is not a diet-explore mask file", "build one with `diet-explore mask`")
    version = data.get("schema_version")
    if isinstance(version, bool) or version != MASK_SCHEMA_VERSION:  # true == 1 in Python, not in a schema
        raise DietError(
            f"{path} has mask schema_version {data.get('schema_version')!r}; this diet-explore reads {MASK_SCHEMA_VERSION}",
            "rebuild the mask with this version",
        )
    names = {f.name for f in dataclasses.fields(MaskFile)}
    missing = sorted(n for n in names if n not in data and n not in OPTIONAL_FIELDS)
    if missing:
        raise DietError(f"{path} lacks field(s) {', '.join(missing)}", "rebuild the mask")
    _check_field_types(path, data)
    mask = MaskFile(**{k: v for k, v in data.items() if k in names})
    _check_indices(path, mask)
    _check_calibration_ids(path, mask)
    if expected_hidden_size is not None and mask.hidden_size != int(expected_hidden_size):
        raise DietError(
            f"{path} is for hidden size {mask.hidden_size} ({mask.model_name}), but the model has "
            f"hidden size {expected_hidden_size}",
            "use a mask built from this model's score cache",
        )
    if expected_model is not None and mask.model_name != expected_model:
        raise DietError(
            f"{path} was built for model {mask.model_name!r}, not {expected_model!r}",
            f"build a mask from a {expected_model} score cache",
        )
    return mask


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


# field -> (check, what the field must be); hidden_size, kept_indices and calibration_ids have their own checks
_FIELD_TYPES: dict[str, tuple[Any, str]] = {
    "model_name": (_is_str, "a string"),
    "model_id": (lambda v: v is None or _is_str(v), "a string or null"),
    "model_source": (lambda v: v is None or _is_str(v), "a string or null"),
    "method": (_is_str, "a string"),
    "sparsity": (is_finite_number, "a finite number"),
    "actual_sparsity": (is_finite_number, "a finite number"),
    "threshold": (is_finite_number, "a finite number"),
    "weights": (
        lambda v: isinstance(v, dict) and all(_is_str(k) and is_finite_number(w) for k, w in v.items()),
        "an object mapping task names to finite numbers",
    ),
    "tasks": (lambda v: isinstance(v, list) and all(_is_str(t) for t in v), "a list of task names (strings)"),
    "site": (_is_str, "a string"),
    "layer_agg": (_is_str, "a string"),
    "cache_manifest_hash": (lambda v: v is None or _is_str(v), "a string or null"),
    "package_version": (_is_str, "a string"),
    "created": (_is_str, "a string"),
    "config": (lambda v: isinstance(v, dict), "an object (the mask settings)"),
}


def _check_field_types(path: Path, data: dict[str, Any]) -> None:
    """Every field of the type the readers use (a wrong one crashed later, after the model loaded)."""
    for name, (ok, what) in _FIELD_TYPES.items():
        if name in data and not ok(data[name]):
            raise DietError(f"{path}: field {name} is {data[name]!r:.60}, not {what}", "the file is damaged; rebuild the mask")


def _check_calibration_ids(path: Path, mask: MaskFile) -> None:
    ids = mask.calibration_ids
    if ids is None:
        return
    if not isinstance(ids, dict) or not all(
        isinstance(t, str) and isinstance(v, list) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in v)
        for t, v in ids.items()
    ):
        raise DietError(f"{path}: calibration_ids must map task names to lists of example ids", "rebuild the mask")


def _check_indices(path: Path, mask: MaskFile) -> None:
    idx = mask.kept_indices
    if not isinstance(mask.hidden_size, int) or isinstance(mask.hidden_size, bool) or not 1 <= mask.hidden_size <= MAX_HIDDEN:
        raise DietError(
            f"{path}: hidden_size {mask.hidden_size!r} is not a whole number in [1, {MAX_HIDDEN}]", "rebuild the mask"
        )
    if not isinstance(idx, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in idx):
        raise DietError(f"{path}: kept_indices must be a list of integers", "rebuild the mask")
    if not idx:
        raise DietError(f"{path}: kept_indices is empty (nothing would be kept)", "rebuild the mask at a lower sparsity")
    outside = next((i for i in idx if not 0 <= i < mask.hidden_size), None)  # Python ints: 10**30 fits no int64
    if outside is not None:
        raise DietError(
            f"{path}: kept index {outside} is outside [0, {mask.hidden_size})",
            "the mask does not belong to this hidden size; rebuild it",
        )
    arr = np.asarray(idx, dtype=np.int64)
    if np.any(np.diff(arr) <= 0):
        raise DietError(f"{path}: kept_indices are not sorted and unique", "rebuild the mask")


def _flag_value(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def mask_command(cache_path: str | Path, config: MaskConfig, out: str | Path) -> str:
    """The ``diet-explore mask`` command line that rebuilds this mask from the same cache."""
    default = MaskConfig().to_dict()
    args = ["diet-explore", "mask", "--cache", str(cache_path)]
    # a setting the mask does not use is left out: the CLI refuses e.g. --last-k without --layer-agg last_k
    unused = ignored_settings(config)
    unused.pop("seed", None)  # the CLI never refuses --seed (it also seeds resampling), so it is kept as set
    for name, value in config.to_dict().items():
        if value == default[name] or value is None or unused.get(name):
            continue
        flag = cli_flag(name)
        if name == "weights":
            args += [flag, ",".join(f"{t}={_flag_value(float(w))}" for t, w in value.items())]
        elif name == "tasks":
            args += [flag, ",".join(value)]
        elif isinstance(value, bool):
            args += [flag] if value else [f"--no-{name.replace('_', '-')}"]
        else:
            args += [flag, _flag_value(value)]
    args += ["--out", str(out)]
    return shlex.join(args)
