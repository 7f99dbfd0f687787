"""The score cache: what profiling writes and everything else reads.

Layout of a cache folder (no pickle anywhere: JSON + safetensors)::

    manifest.json                       schema version, model, sites, tasks (+ sample ids, token counts), provenance
    tasks/<task>.safetensors            per site: "<site>.layer" (L, D) and "<site>.sample" (N, D), float32
    tasks/<task>.contexts.safetensors   top-activating contexts (schema 2; see ``contexts.py``)
    baselines.safetensors               task-agnostic arrays, e.g. "weight_magnitude" (D,)

``<site>.layer[l, k]`` is the mean |activation| of hidden dimension k at block l, averaged over the
non-padding tokens of each sample and then over samples. ``<site>.sample[i, k]`` is the same for
sample i alone, averaged over blocks; so ``layer.mean(0) == sample.mean(0)`` (up to fp32 rounding),
which the mask engine relies on when it bootstraps over samples.

Each task file is written atomically and listed in the manifest with its sha256 only once complete,
so an interrupted profile resumes from the finished tasks and a corrupt file is detected on load.

Schema 2 adds, per task, ``contexts`` = {file, sha256, k, radius}: per site and dim the k token
positions with the largest layer-averaged |activation| ("<site>.top.row|position|value", (D, k)),
and the decoded tokens around them ("tokens.row|position|string" and the task's de-duplicated
strings as "strings.utf8" + "strings.offsets"). The score arrays are unchanged from schema 1, and a
schema-1 cache still loads: its tasks simply have no contexts (``TaskScores.contexts`` is None).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load as _st_load
from safetensors.numpy import save as _st_save

from diet_explore import __version__
from diet_explore.core import atomic
from diet_explore.core.clock import utc_timestamp
from diet_explore.core.config import is_whole_number
from diet_explore.core.errors import DietError
from diet_explore.profiling.contexts import TaskContexts
from diet_explore.tasks.registry import GENERIC_TASK, TASK_NAME

SCHEMA_VERSION = 2  # what this version writes
CONTEXTS_TOLERANCE = 1e-4  # adding contexts to a cache: the re-run's scores vs the stored ones (fp32 rounding)
READABLE_SCHEMA_VERSIONS = (1, 2)  # 1: no top-activating contexts
CACHE_KIND = "diet-explore-score-cache"
MANIFEST = "manifest.json"
BASELINES_FILE = "baselines.safetensors"
MANIFEST_MAX_BYTES = 64 << 20  # a manifest lists ids and hashes: a few MB for thousands of samples per task
MAX_CONTEXT_RADIUS = 4096  # tokens on each side of a stored context (profiles write CONTEXT_RADIUS = 8)
SITES = ("residual", "normed")
SITE_DOC = {
    "residual": "residual stream after each decoder block (the paper's site)",
    "normed": "normed inputs of attention and MLP (Minitron-style), averaged over the two per block",
}


@dataclass(frozen=True)
class TaskScores:
    """Scores of one task. ``layer[site]``: (L, D); ``sample[site]``: (N, D), both float32."""

    layer: dict[str, np.ndarray]
    sample: dict[str, np.ndarray]
    sample_ids: list[int]
    token_counts: list[int]
    kind: str = "task"
    contexts: TaskContexts | None = None  # top-activating contexts (None: a schema-1 cache, or not recorded)

    @property
    def n_samples(self) -> int:
        return len(self.sample_ids)


@dataclass(frozen=True)
class ScoreCache:
    """A loaded, validated score cache. Arrays are read-only views; copy before mutating."""

    manifest: dict[str, Any]
    tasks: dict[str, TaskScores]
    baselines: dict[str, np.ndarray] = field(default_factory=dict)
    path: Path | None = None

    @property
    def hidden_size(self) -> int:
        return int(self.manifest["model"]["hidden_size"])

    @property
    def num_layers(self) -> int:
        return int(self.manifest["model"]["num_layers"])

    @property
    def model_name(self) -> str:
        return str(self.manifest["model"]["name"])

    @property
    def sites(self) -> list[str]:
        return list(self.manifest["sites"])

    @property
    def task_names(self) -> list[str]:
        """Evaluation tasks (what the vote merges), in manifest order."""
        return [t for t, s in self.tasks.items() if s.kind == "task"]

    @property
    def generic_names(self) -> list[str]:
        """Task-agnostic calibration sets (e.g. ``wikitext``) used by baselines."""
        return [t for t, s in self.tasks.items() if s.kind == "generic"]

    def require_tasks(self) -> None:
        """A DietError when the cache holds no evaluation task (only generic text), so nothing can vote."""
        if not self.task_names:
            where = self.path or self.model_name
            generic = ", ".join(self.generic_names) or "nothing"
            raise DietError(
                f"the cache {where} holds no evaluation task (only generic text: {generic}), so there is nothing to vote on",
                f"profile tasks into it: `diet-explore profile --tasks all --out {where}`",
            )

    def parameters_after(self, n_keep: int) -> int | None:
        """Parameters of the model after keeping ``n_keep`` hidden dims, from the manifest's
        ``model.num_parameters`` and ``model.params_per_hidden_dim``; None when either is missing."""
        model = self.manifest["model"]
        total, per_dim = model.get("num_parameters"), model.get("params_per_hidden_dim")
        if total is None or per_dim is None:
            return None
        return int(total) - int(per_dim) * (self.hidden_size - int(n_keep))

    @property
    def manifest_hash(self) -> str:
        """Content hash: the manifest lists every data file's sha256, so this covers the arrays too."""
        blob = json.dumps(self.manifest, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def layer_scores(self, task: str, site: str = "residual") -> np.ndarray:
        return self._get(task, site).layer[site]

    def sample_scores(self, task: str, site: str = "residual") -> np.ndarray:
        return self._get(task, site).sample[site]

    def _get(self, task: str, site: str) -> TaskScores:
        if task not in self.tasks:
            raise DietError(f"task {task!r} is not in this cache", f"choose one of {', '.join(self.tasks)}")
        if site not in self.sites:
            raise DietError(f"site {site!r} is not in this cache", f"choose one of {', '.join(self.sites)}")
        return self.tasks[task]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
#: What a resume must match; a cache holds one profile, so any difference here would mix two.
#: ``dtype`` and ``device`` (its type: cpu / cuda / mps, not the index) are included because the
#: kernels and the precision the model ran in change the numbers, and the manifest's one
#: ``environment`` would otherwise describe only the last run's tasks.
RESUME_KEYS = ("model", "sites", "prompt_format_version", "config", "dtype", "device")
_RESUME_HINTS = {
    "config": "resume with the cache's settings (the flags named above, as it has them), or use another --out folder",
    "dtype": "resume with --dtype {old}, or use another --out folder",
    "device": "resume with --device {old}, or use another --out folder",
}


def resume_value(manifest: dict[str, Any], key: str) -> Any:
    """The part of ``manifest`` that ``key`` of a resume check compares (``model_name``: the model's
    name alone, which is known before the model loads)."""
    env = manifest.get("environment")
    env = env if isinstance(env, dict) else {}
    if key == "sites":
        sites = manifest.get("sites")
        return sorted(set(sites)) if isinstance(sites, list) else sites  # the order of --sites changes nothing
    if key == "dtype":
        return env.get("dtype")
    if key == "device":
        device = env.get("device")
        return str(device).split(":")[0] if device is not None else None
    if key == "model_name":
        model = manifest.get("model")
        return model.get("name") if isinstance(model, dict) else None
    return manifest.get(key)


#: the profile flag of each ``config`` field a resume compares (``ProfileConfig.science``)
_CONFIG_FLAGS = {"samples": "--samples", "seed": "--seed", "max_length": "--max-length", "skip_first_token": "--skip-first-token"}


def _difference(old: Any, new: Any) -> str:
    """``old`` vs ``new`` for the message; of two dicts only the differing fields, named by their
    profile flag where they have one ("--skip-first-token on; this run: off", not Python dicts)."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = [k for k in dict.fromkeys([*old, *new]) if old.get(k) != new.get(k)]

        def shown(d: dict) -> str:
            return ", ".join(
                f"{_CONFIG_FLAGS.get(k, k)} {('on' if d.get(k) else 'off') if k == 'skip_first_token' else d.get(k)}"
                for k in keys
            )

        return f"{shown(old)}; this run: {shown(new)}"
    return f"{old!r}; this run: {new!r}"


def check_resume(root: str | Path, header: dict[str, Any], keys: tuple[str, ...] = RESUME_KEYS) -> dict[str, Any] | None:
    """The manifest of the cache at ``root`` (None if there is none yet), after checking that a run
    with ``header`` may resume it: every ``keys`` value must match, else a ``DietError``. Cheap, so
    the profile calls it before the model loads too (with the keys known by then)."""
    existing = Path(root) / MANIFEST
    if not (existing.exists() or existing.is_symlink()):
        _check_new_cache_folder(Path(root))
        return None
    old = read_manifest(root)
    for key in keys:
        was, now = resume_value(old, key), resume_value(header, key)
        if was != now:
            hint = _RESUME_HINTS.get(key, "use another --out folder, or delete the old cache to start again")
            raise DietError(
                f"{existing} was made with a different {key!r} ({_difference(was, now)}); refusing to mix two profiles",
                hint.format(old=was),
            )
    return old


def _check_new_cache_folder(root: Path) -> None:
    """A cache is written only into a new or empty folder, or one holding its manifest (the marker
    ``CacheWriter`` writes before any data file): profiling into someone's folder replaced their
    files of the cache's names (``baselines.safetensors``, ``tasks/rte.safetensors``) and made the
    folder a cache."""
    try:
        held = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    except OSError:
        held = []  # unreadable: the write itself says why
    if held:
        shown = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
        raise DietError(
            f"{root} has no {MANIFEST}, so it is not a score cache, and it holds files ({shown}) that a profile "
            "would replace or mix with its own",
            "profile into a new or empty folder, e.g. --out cache/<model name>",
        )


def _task_file(name: str, part: str = "") -> str:
    """``tasks/<name><part>.safetensors``, for a name that is a plain file name (``tasks.registry``'s
    rule): a name with '/' or '..' would write outside the cache folder."""
    if not TASK_NAME.fullmatch(name):
        raise DietError(f"task name {name[:80]!r} cannot name a cache file", "use letters, digits, '_', '-' and '.'")
    return f"tasks/{name}{part}.safetensors"


class CacheWriter:
    """Writes a cache folder task by task; every write is atomic and the manifest is rewritten last.

    ``header`` holds the model/config/provenance fields; it must match an existing manifest's
    ``RESUME_KEYS`` for a resume, otherwise the caller is told to use a new folder.
    """

    def __init__(self, root: str | Path, header: dict[str, Any]):
        self.root = Path(root)
        self.manifest: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "kind": CACHE_KIND,
            **header,
            "package_version": __version__,
            "created": utc_timestamp(),
            "tasks": {},
            "baselines": None,
        }
        old = check_resume(self.root, self.manifest)
        if old is not None:
            self.manifest["created"] = old.get("created", self.manifest["created"])
            self.manifest["sites"] = list(old["sites"])  # same set (checked); keep the order the files were listed in
            self.manifest["tasks"] = {t: m for t, m in old["tasks"].items() if self._file_ok(m)}
            base = old.get("baselines")
            # a missing or corrupt baselines file is dropped here, so the profile recomputes it
            self.manifest["baselines"] = base if base and self._file_ok(base) else None
        else:  # the marker first: a profile killed during its first task leaves a cache it can resume
            self.flush()

    def _file_ok(self, meta: dict[str, Any]) -> bool:
        p = self.root / meta["file"]
        ok = p.is_file() and sha256_bytes(p.read_bytes()) == meta["sha256"]
        return ok and (not isinstance(meta.get("contexts"), dict) or self._file_ok(meta["contexts"]))

    def finished_tasks(self) -> list[str]:
        return list(self.manifest["tasks"])

    def write_task(self, name: str, scores: TaskScores, extra: dict[str, Any] | None = None) -> None:
        tensors = {}
        for site in self.manifest["sites"]:
            tensors[f"{site}.layer"] = np.ascontiguousarray(scores.layer[site], dtype=np.float32)
            tensors[f"{site}.sample"] = np.ascontiguousarray(scores.sample[site], dtype=np.float32)
        blob = _st_save(tensors)
        rel = _task_file(name)
        contexts = None
        if scores.contexts is not None:  # written first: the manifest lists the task only once both exist
            ctx_blob = _st_save(scores.contexts.to_tensors())
            ctx_rel = _task_file(name, ".contexts")
            atomic.write_bytes(self.root / ctx_rel, ctx_blob)
            contexts = {
                "file": ctx_rel,
                "sha256": sha256_bytes(ctx_blob),
                "k": scores.contexts.k,
                "radius": scores.contexts.radius,
            }
        atomic.write_bytes(self.root / rel, blob)
        self.manifest["tasks"][name] = {
            "kind": scores.kind,
            "file": rel,
            "sha256": sha256_bytes(blob),
            "n_samples": scores.n_samples,
            "sample_ids": [int(i) for i in scores.sample_ids],
            "token_counts": [int(c) for c in scores.token_counts],
            "finished": utc_timestamp(),
            **({"contexts": contexts} if contexts else {}),
            **(extra or {}),
        }
        self.flush()

    def missing_contexts(self) -> list[str]:
        """Finished tasks without top-activating contexts (e.g. from a schema-1 profile)."""
        return [t for t, m in self.manifest["tasks"].items() if not m.get("contexts")]

    def add_contexts(
        self, name: str, scores: TaskScores, extra: dict[str, Any] | None = None, tolerance: float = CONTEXTS_TOLERANCE
    ) -> float:
        """Add the contexts of a re-run of the finished task ``name`` and keep its stored scores, so
        every number computed from the cache stays the same. The re-run must be the same profile:
        the same samples and token counts, and score arrays within ``tolerance`` of the stored ones
        (largest |difference| relative to the array's largest value); else a ``DietError``. Returns
        that largest relative difference, which the manifest records with the contexts."""
        meta = self.manifest["tasks"][name]
        if scores.contexts is None:
            raise ValueError("add_contexts() needs scores with contexts")
        if list(scores.sample_ids) != list(meta["sample_ids"]) or list(scores.token_counts) != list(meta["token_counts"]):
            raise DietError(
                f"the re-run of {name!r} drew other samples or tokens than {self.root} holds",
                "add contexts with the settings the cache was profiled with, or re-profile into a new folder",
            )
        stored = _load_safetensors(self.root / meta["file"], meta["sha256"])
        worst = 0.0
        for site in self.manifest["sites"]:
            for kind, new in (("layer", scores.layer[site]), ("sample", scores.sample[site])):
                old = stored[f"{site}.{kind}"]
                scale = float(np.abs(old).max()) or 1.0
                worst = max(worst, float(np.abs(np.asarray(new, dtype=np.float64) - old).max()) / scale)
        if not worst <= tolerance:
            raise DietError(
                f"the re-run of {name!r} differs from the scores in {self.root} by {worst:.2e} (relative), more than "
                f"{tolerance:g}: it is not the same profile (another model conversion, dtype or code?)",
                "re-profile into a new folder to get scores and contexts that belong together",
            )
        blob = _st_save(scores.contexts.to_tensors())
        rel = _task_file(name, ".contexts")
        atomic.write_bytes(self.root / rel, blob)
        meta["contexts"] = {
            "file": rel,
            "sha256": sha256_bytes(blob),
            "k": scores.contexts.k,
            "radius": scores.contexts.radius,
            "added": utc_timestamp(),
            "package_version": __version__,
            "scores_max_rel_diff": worst,  # the re-run's score arrays vs the stored ones (which were kept)
            **(extra or {}),
        }
        self.flush()
        return worst

    def write_baselines(self, arrays: dict[str, np.ndarray]) -> None:
        blob = _st_save({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()})
        atomic.write_bytes(self.root / BASELINES_FILE, blob)
        self.manifest["baselines"] = {"file": BASELINES_FILE, "sha256": sha256_bytes(blob), "arrays": sorted(arrays)}
        self.flush()

    def flush(self) -> None:
        self.manifest["updated"] = utc_timestamp()
        atomic.write_json(self.root / MANIFEST, self.manifest)


def save_cache(cache: ScoreCache, root: str | Path) -> Path:
    """Write an in-memory cache (e.g. a synthetic one) to ``root``; returns the folder."""
    header = {k: v for k, v in cache.manifest.items() if k not in ("tasks", "baselines", "schema_version", "kind")}
    writer = CacheWriter(root, header)
    for name, scores in cache.tasks.items():
        extra = {k: v for k, v in cache.manifest["tasks"].get(name, {}).items() if k not in _TASK_META_KEYS}
        writer.write_task(name, scores, extra)
    if cache.baselines:
        writer.write_baselines(cache.baselines)
    return Path(root)


_TASK_META_KEYS = {"kind", "file", "sha256", "n_samples", "sample_ids", "token_counts", "finished", "contexts"}


# --------------------------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------------------------
def read_manifest(root: str | Path) -> dict[str, Any]:
    """A score cache's validated manifest (without reading its arrays); every problem is a ``DietError``."""
    root = atomic.check_path(root, "cache folder")  # a name over 255 bytes: a DietError, not an OSError
    path = root / MANIFEST
    if not root.is_dir():
        what = "is not a folder" if root.exists() or root.is_symlink() else "does not exist"  # a file, FIFO, loop
        raise DietError(f"cache folder {root} {what}", "give a folder made by `diet-explore profile ... --out <folder>`")
    if not path.exists():
        raise DietError(
            f"{path} is missing: {root} is not a score cache", "point --cache at a folder made by `diet-explore profile`"
        )
    if not path.is_file():
        raise DietError(
            f"{path} is not a file: {root} is not a score cache", "point --cache at a folder made by `diet-explore profile`"
        )
    data = atomic.read_regular(path, MANIFEST_MAX_BYTES, "manifest")
    try:
        # unique keys: a second "rte" entry silently replaced the first (and changed the mask)
        manifest = atomic.loads_json(data.decode(), unique_keys=True)
    except atomic.DuplicateKeyError as exc:
        raise DietError(
            f"{path} names {exc.key!r} twice in one object, so one of the two entries would be ignored",
            "keep one entry per name, or re-run the profile into a new folder",
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        if CACHE_KIND.encode() not in data:  # another program's manifest.json: nothing to re-run
            raise DietError(
                f"{path} is not valid JSON ({exc}): not a diet-explore score cache manifest",
                "point --cache at a folder made by `diet-explore profile`",
            ) from None
        raise DietError(f"{path} is not valid JSON ({exc})", "the file is corrupt or truncated; re-run the profile") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != CACHE_KIND:
        raise DietError(
            f"{path} is not a diet-explore score cache manifest", "point --cache at a folder made by `diet-explore profile`"
        )
    version = manifest.get("schema_version")
    if isinstance(version, bool) or version not in READABLE_SCHEMA_VERSIONS:
        readable = ", ".join(map(str, READABLE_SCHEMA_VERSIONS))
        raise DietError(
            f"{path} has schema_version {version!r}; this diet-explore reads versions {readable}",
            "re-run `diet-explore profile` with this version",
        )
    for key in ("model", "sites", "tasks"):
        if key not in manifest:
            raise DietError(f"{path} lacks the {key!r} field", "the manifest is incomplete; re-run the profile")
    _check_manifest_types(path, manifest)
    return manifest


def _check_manifest_types(path: Path, manifest: dict[str, Any]) -> None:
    """The fields ``load_cache`` reads have the types it reads them as (a hand-edited or foreign
    manifest is a clear error, not a KeyError from deep inside the loader)."""

    def bad(what: str) -> DietError:
        return DietError(f"{path}: {what}", "the manifest is damaged or hand-edited; re-run the profile")

    def is_count(v) -> bool:
        return is_whole_number(v) and v >= 0

    def member(rel: Any, what: str) -> None:
        """A listed file is a short relative name inside the cache folder (a hand-edited '/etc/passwd' or
        '../x' would read another file; a name over 255 bytes made the OS raise)."""
        parts = Path(rel).parts if isinstance(rel, str) else ()
        if not parts or Path(rel).is_absolute() or ".." in parts or any(len(p.encode()) > atomic.NAME_MAX for p in parts):
            raise bad(f"{what} file {str(rel)[:80]!r} is not a file name inside the cache folder")

    model = manifest["model"]
    if not isinstance(model, dict):
        raise bad("'model' is not an object")
    for key in ("hidden_size", "num_layers", "name"):
        if key not in model:
            raise bad(f"model lacks {key!r}")
    if not (is_count(model["hidden_size"]) and is_count(model["num_layers"]) and model["hidden_size"] and model["num_layers"]):
        raise bad(f"model hidden_size {model['hidden_size']!r} / num_layers {model['num_layers']!r} are not positive integers")
    if not isinstance(manifest["sites"], list) or not all(isinstance(x, str) for x in manifest["sites"]):
        raise bad("'sites' is not a list of names")
    if not manifest["sites"]:
        raise bad("'sites' is empty: the cache holds no scores")
    if not isinstance(manifest["tasks"], dict):
        raise bad("'tasks' is not an object of task entries")
    files: dict[str, str] = {}  # file -> the task that lists it
    for name, meta in manifest["tasks"].items():
        if not isinstance(meta, dict):
            raise bad(f"task {name!r} is not an object")
        # a name is a file name and a --tasks item ("bad,na=me" broke CSV rows and rebuild commands); "all" means
        # every task; the generic text set is never a voting task, and an unknown kind silently dropped it
        if not TASK_NAME.fullmatch(name) or name == "all":
            raise bad(f"task name {name[:80]!r} is not a task name (letters, digits, '_', '-', '.'; not 'all')")
        kind = meta.get("kind", "task")
        if kind not in ("task", "generic") or (name == GENERIC_TASK and kind != "generic"):
            raise bad(f"task {name!r} has kind {str(kind)[:40]!r}; a task is 'task', the {GENERIC_TASK} text set 'generic'")
        missing = [k for k in ("file", "sha256", "n_samples", "sample_ids", "token_counts") if k not in meta]
        if missing:
            raise bad(f"task {name!r} lacks {', '.join(missing)}")
        if not (
            isinstance(meta["file"], str)
            and isinstance(meta["sha256"], str)
            and is_count(meta["n_samples"])
            and isinstance(meta["sample_ids"], list)
            and all(is_count(i) for i in meta["sample_ids"])
            and isinstance(meta["token_counts"], list)
            and all(is_count(c) for c in meta["token_counts"])
        ):
            raise bad(f"task {name!r} has a field of the wrong type (file, sha256, n_samples, sample_ids, token_counts)")
        member(meta["file"], f"task {name!r}:")
        # each task its own file and distinct samples: a copied entry counted one task's scores twice in the vote
        if meta["file"] in files:
            raise bad(f"tasks {files[meta['file']]!r} and {name!r} both list the file {meta['file']}")
        files[meta["file"]] = name
        repeated = next((i for i, c in Counter(meta["sample_ids"]).items() if c > 1), None)
        if repeated is not None:
            raise bad(f"task {name!r} lists sample id {repeated} twice")
        # the arrays have n_samples rows; ids and counts that disagree would skew every per-sample statistic
        if not meta["n_samples"]:  # a score over no samples: every statistic of it is 0 / 0
            raise bad(f"task {name!r} has n_samples 0: it holds no scores")
        if not len(meta["sample_ids"]) == len(meta["token_counts"]) == meta["n_samples"]:
            raise bad(
                f"task {name!r} lists {len(meta['sample_ids'])} sample_ids and {len(meta['token_counts'])} "
                f"token_counts for n_samples {meta['n_samples']}"
            )
        ctx = meta.get("contexts")
        if ctx is not None and not (
            isinstance(ctx, dict)
            and isinstance(ctx.get("file"), str)
            and isinstance(ctx.get("sha256"), str)
            and is_count(ctx.get("radius"))
        ):
            raise bad(f"task {name!r}: 'contexts' lacks its file, sha256 or radius")
        if ctx is not None:
            member(ctx["file"], f"task {name!r}: contexts")
            if ctx["radius"] > MAX_CONTEXT_RADIUS:  # the Dimension card allocates 2 * radius + 1 tokens per context
                raise bad(f"task {name!r}: contexts radius {ctx['radius']} is over {MAX_CONTEXT_RADIUS} tokens")
    base = manifest.get("baselines")
    if base and not (isinstance(base, dict) and isinstance(base.get("file"), str) and isinstance(base.get("sha256"), str)):
        raise bad("'baselines' lacks its file or sha256")
    if base:
        member(base["file"], "baselines")


#: What rebuilds the baselines file: a re-run of the profile into the same folder (CacheWriter drops a
#: baselines file whose sha256 does not match, keeps the finished tasks, and the run writes it anew).
BASELINES_HINT = (
    "it holds the cache's weight magnitudes (the magnitude baseline), not a task: re-run the `diet-explore profile` "
    "command that made this cache; it keeps the finished tasks and rebuilds this file"
)


def _load_safetensors(path: Path, expected_sha: str, rebuild: str = "re-run the profile for this task") -> dict[str, np.ndarray]:
    if not path.exists():
        raise DietError(f"{path} is listed in the manifest but missing", "re-run the profile to rebuild it")
    if not path.is_file():
        raise DietError(f"{path} is listed in the manifest but is not a file", "remove it and re-run the profile to rebuild it")
    try:
        blob = path.read_bytes()
    except OSError as exc:  # unreadable (permissions, I/O error)
        raise DietError(f"{path} could not be read ({exc.strerror or exc})", "check the file's permissions") from None
    if sha256_bytes(blob) != expected_sha:
        raise DietError(f"{path} does not match its sha256 in the manifest (corrupt or truncated)", rebuild)
    try:
        return _st_load(blob)
    except Exception as exc:  # safetensors raises its own error types
        raise DietError(f"{path} is not a readable safetensors file ({exc})", rebuild) from None


def _check_magnitudes(path: Path, task: str, key: str, arr: np.ndarray) -> None:
    """Scores are mean |activation|s: never negative, and not all zero (a task with no ranking).
    Either changed the mask silently; the cache is refused, naming the task and the array."""
    if (arr < 0).any():
        raise DietError(
            f"{path}: task {task!r} has negative scores in {key} (min {float(arr.min()):.4g}); a score is a mean "
            "|activation| and is never negative",
            "the file was not written by a profile: re-run the profile for this task",
        )
    if not arr.any():
        raise DietError(
            f"{path}: task {task!r} has scores that are all zero in {key}, so it ranks no dimension",
            "re-run the profile for this task (did its texts reach the model?), or profile without it",
        )


def load_cache(root: str | Path) -> ScoreCache:
    """Load and validate a cache folder. Every problem is a ``DietError`` naming the file."""
    root = Path(root)
    manifest = read_manifest(root)
    hidden, layers = int(manifest["model"]["hidden_size"]), int(manifest["model"]["num_layers"])
    sites = list(manifest["sites"])
    if not manifest["tasks"]:
        raise DietError(f"{root / MANIFEST} lists no finished task", "run or resume `diet-explore profile` into this folder")
    tasks: dict[str, TaskScores] = {}
    for name, meta in manifest["tasks"].items():
        path = root / meta["file"]
        arrays = _load_safetensors(path, meta["sha256"])
        n = int(meta["n_samples"])
        layer, sample = {}, {}
        for site in sites:
            for suffix, shape, out in (("layer", (layers, hidden), layer), ("sample", (n, hidden), sample)):
                key = f"{site}.{suffix}"
                if key not in arrays:
                    raise DietError(f"{path} lacks array {key!r}", "re-run the profile for this task")
                arr = arrays[key]
                if arr.shape != shape or arr.dtype != np.float32:
                    raise DietError(
                        f"{path}: {key} has shape {arr.shape} {arr.dtype}, expected {shape} float32",
                        "the cache does not match its manifest; re-run the profile",
                    )
                if not np.isfinite(arr).all():
                    raise DietError(
                        f"{path}: {key} contains NaN or inf", "re-run the profile (fp16 overflow? use --dtype float32)"
                    )
                _check_magnitudes(path, name, key, arr)
                arr.setflags(write=False)
                out[site] = arr
        contexts = None
        if meta.get("contexts"):
            ctx = meta["contexts"]
            ctx_path = root / ctx["file"]
            arrays = _load_safetensors(ctx_path, ctx["sha256"])
            contexts = TaskContexts.from_tensors(arrays, sites, hidden, meta["token_counts"], ctx["radius"], ctx_path)
        tasks[name] = TaskScores(
            layer, sample, list(meta["sample_ids"]), list(meta["token_counts"]), meta.get("kind", "task"), contexts
        )
    baselines: dict[str, np.ndarray] = {}
    if manifest.get("baselines"):
        meta = manifest["baselines"]
        baselines = _load_safetensors(root / meta["file"], meta["sha256"], BASELINES_HINT)
        for key, arr in baselines.items():
            if arr.shape != (hidden,) or arr.dtype != np.float32:  # the profile writes float32 (D,) arrays
                raise DietError(
                    f"{root / meta['file']}: {key} has shape {arr.shape} {arr.dtype}, expected ({hidden},) float32",
                    "re-run the profile",
                )
            if not np.isfinite(arr).all():  # a NaN sorts as the largest value, so magnitude would keep it
                raise DietError(f"{root / meta['file']}: {key} contains NaN or inf", "re-run the profile")
            arr.setflags(write=False)
    return ScoreCache(manifest, tasks, baselines, root)


def list_caches(root: str | Path = "cache") -> list[Path]:
    """Every folder under ``root`` that has a manifest (not validated; ``load_cache`` does that)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.parent for p in root.glob(f"*/{MANIFEST}"))
