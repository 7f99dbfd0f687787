"""Pure helpers behind the Streamlit explorer: cache discovery, the widget-state <-> ``MaskConfig``
mapping, and the URL query-string encoding that makes a view shareable.

Nothing here imports streamlit: the app passes plain dicts (``st.session_state``/``st.query_params``
are read into dicts first), so every rule below is unit-tested without a running app.

Query string: only fields that differ from ``MaskConfig()`` are written, under their own field names,
e.g. ``?cache=cache/gemma3-270m&sparsity=0.3&weights=boolq:1,rte:0&exact=1``. Decoding never raises:
a bad value is dropped with a warning, so a mangled link still opens the app.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from diet_explore.cache import SITES, list_caches
from diet_explore.errors import DietError
from diet_explore.masks import BASELINE_METHODS, MERGE_METHODS, MaskConfig
from diet_explore.runs import json_safe
from diet_explore.scores import LAYER_AGGS, NORMALIZATIONS

CACHE_DIR_ENV = "DIET_EXPLORE_CACHE_DIR"  # folder holding cache folders (default: <repo>/cache)
RUNS_DIR_ENV = "DIET_EXPLORE_RUNS_DIR"  # run store (default: <repo>/runs)
EXPORT_DIR_ENV = "DIET_EXPLORE_EXPORT_DIR"  # where exports are written (default: <repo>/artifacts)
PREFERRED_CACHE = "smollm2-135m"
CACHE_PARAM = "cache"

# Widget keys (st.session_state) of the mask settings; weights live under WEIGHT_PREFIX + task.
KEY_SPARSITY, KEY_THRESHOLD, KEY_METHOD, KEY_SITE = "sparsity", "threshold", "method", "site"
KEY_LAYER_AGG, KEY_LAST_K, KEY_NORMALIZE = "layer_agg", "last_k", "normalize"
KEY_EXACT, KEY_MULTIPLE, KEY_SEED = "exact", "multiple", "seed"
WEIGHT_PREFIX = "w_"
SETTING_KEYS = (KEY_SPARSITY, KEY_THRESHOLD, KEY_METHOD, KEY_SITE, KEY_LAYER_AGG, KEY_LAST_K, KEY_NORMALIZE, KEY_EXACT, KEY_MULTIPLE, KEY_SEED)
WEIGHT_MAX = 2.0


# ------------------------------------------------------------------------------------------------
# Folders and cache discovery
# ------------------------------------------------------------------------------------------------
def env_dir(env: Mapping[str, str], name: str, default: Path) -> Path:
    value = env.get(name, "").strip()
    return Path(value).expanduser() if value else default


def cache_root(app_dir: Path, env: Mapping[str, str] | None = None) -> Path:
    return env_dir(os.environ if env is None else env, CACHE_DIR_ENV, app_dir / "cache")


def discover_caches(root: Path) -> list[Path]:
    """Every cache folder under ``root`` (not validated; loading does that)."""
    return list_caches(root)


def default_cache(caches: Sequence[Path], preferred: str = PREFERRED_CACHE) -> Path | None:
    """The preferred cache (smollm2-135m) if present, else the first found, else None."""
    for p in caches:
        if p.name == preferred:
            return p
    return caches[0] if caches else None


# ------------------------------------------------------------------------------------------------
# Widget state <-> MaskConfig
# ------------------------------------------------------------------------------------------------
def weight_key(task: str) -> str:
    return WEIGHT_PREFIX + task


def state_from_config(config: MaskConfig, task_names: Sequence[str]) -> dict[str, Any]:
    """Widget values that show ``config`` for a cache with ``task_names``."""
    active = set(task_names if config.tasks is None else config.tasks)
    state: dict[str, Any] = {
        KEY_SPARSITY: float(config.sparsity),
        KEY_THRESHOLD: float(config.threshold),
        KEY_METHOD: config.method,
        KEY_SITE: config.site,
        KEY_LAYER_AGG: config.layer_agg,
        KEY_LAST_K: int(config.last_k),
        KEY_NORMALIZE: config.normalize,
        KEY_EXACT: bool(config.exact),
        KEY_MULTIPLE: int(config.multiple_of),
        KEY_SEED: int(config.seed),
    }
    for t in task_names:
        w = float(config.weights.get(t, 1.0)) if t in active else 0.0
        state[weight_key(t)] = min(max(w, 0.0), WEIGHT_MAX)
    return state


def config_from_state(state: Mapping[str, Any], task_names: Sequence[str]) -> MaskConfig:
    """The ``MaskConfig`` the widgets describe. A task whose weight is 0 is left out of ``tasks``;
    equal weights are written as ``{}`` (the paper's default), so the config stays minimal."""
    defaults = MaskConfig()
    weights = {t: float(state.get(weight_key(t), 1.0)) for t in task_names}
    active = [t for t in task_names if weights[t] > 0]
    if not active:
        raise DietError("every task has weight 0, so nothing votes", "give at least one task a weight above 0")
    equal = len({weights[t] for t in active}) == 1 and weights[active[0]] == 1.0
    return MaskConfig(
        sparsity=float(state.get(KEY_SPARSITY, defaults.sparsity)),
        threshold=float(state.get(KEY_THRESHOLD, defaults.threshold)),
        weights={} if equal else {t: weights[t] for t in active},
        tasks=None if len(active) == len(task_names) else active,
        method=str(state.get(KEY_METHOD, defaults.method)),
        site=str(state.get(KEY_SITE, defaults.site)),
        layer_agg=str(state.get(KEY_LAYER_AGG, defaults.layer_agg)),
        last_k=int(state.get(KEY_LAST_K, defaults.last_k)),
        normalize=str(state.get(KEY_NORMALIZE, defaults.normalize)),
        exact=bool(state.get(KEY_EXACT, defaults.exact)),
        multiple_of=int(state.get(KEY_MULTIPLE, defaults.multiple_of)),
        seed=int(state.get(KEY_SEED, defaults.seed)),
    )


# ------------------------------------------------------------------------------------------------
# Query string <-> MaskConfig (+ cache path)
# ------------------------------------------------------------------------------------------------
def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def encode_query(config: MaskConfig, cache: str | None = None) -> dict[str, str]:
    """Query parameters for ``config``: only fields that differ from the defaults, plus ``cache``."""
    out: dict[str, str] = {}
    if cache:
        out[CACHE_PARAM] = str(cache)
    default = MaskConfig().to_dict()
    for name, value in config.to_dict().items():
        if value == default[name]:
            continue
        if name == "weights":
            out[name] = ",".join(f"{t}:{_fmt(float(w))}" for t, w in value.items())
        elif name == "tasks":
            out[name] = ",".join(value)
        elif value is not None:
            out[name] = _fmt(value)
    return out


def _first(value: str | Sequence[str]) -> str:
    if isinstance(value, str):
        return value
    return str(value[-1]) if len(value) else ""


def _parse_bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(s)


def _parse_weights(s: str) -> dict[str, float]:
    weights: dict[str, float] = {}
    for item in filter(None, s.split(",")):
        task, sep, w = item.partition("=" if "=" in item else ":")  # the CLI's task=w is accepted too
        if not sep or not task:
            raise ValueError(item)
        value = float(w)
        if not 0.0 <= value <= WEIGHT_MAX or value != value:
            raise ValueError(item)
        weights[task] = value
    return weights


def _in(options: Sequence[str]):
    def check(s: str) -> str:
        if s not in options:
            raise ValueError(s)
        return s

    return check


def _ranged(cast, lo: float, hi: float):
    def check(s: str):
        v = cast(s)
        if not lo <= v <= hi:
            raise ValueError(s)
        return v

    return check


_PARSERS = {
    "sparsity": _ranged(float, 0.0, 0.99),
    "threshold": _ranged(float, 0.0, 1.0),
    "weights": _parse_weights,
    "tasks": lambda s: [t for t in s.split(",") if t] or None,
    "method": _in(tuple(MERGE_METHODS) + tuple(BASELINE_METHODS)),
    "site": _in(SITES),
    "layer_agg": _in(tuple(LAYER_AGGS)),
    "last_k": _ranged(int, 1, 10_000),
    "normalize": _in(tuple(NORMALIZATIONS)),
    "exact": _parse_bool,
    "multiple_of": _ranged(int, 1, 4096),
    "seed": _ranged(int, 0, 2**32 - 1),
    "single_task": str,
    "held_out_task": str,
}


def decode_query(params: Mapping[str, str | Sequence[str]]) -> tuple[MaskConfig, str | None, list[str]]:
    """``(config, cache path or None, warnings)`` from query parameters. Unknown keys are ignored
    (other apps may add their own); bad values are dropped with a warning naming them."""
    fields = {f.name for f in dataclasses.fields(MaskConfig)}
    values: dict[str, Any] = {}
    warnings: list[str] = []
    for name, raw in params.items():
        if name not in fields or name not in _PARSERS:
            continue
        text = _first(raw)
        try:
            value = _PARSERS[name](text)
            MaskConfig(**{name: value})  # the config's own checks, one field at a time
        except (ValueError, TypeError, DietError):
            warnings.append(f"ignored link setting {name}={text!r}")
            continue
        values[name] = value
    cache = _first(params[CACHE_PARAM]) if CACHE_PARAM in params else None
    return MaskConfig(**values), (cache or None), warnings


def reconcile_config(config: MaskConfig, task_names: Sequence[str]) -> tuple[MaskConfig, list[str]]:
    """Drop tasks/weights that the loaded cache does not have (a link made on another cache)."""
    known = set(task_names)
    warnings: list[str] = []
    weights = {t: w for t, w in config.weights.items() if t in known}
    tasks = None if config.tasks is None else [t for t in config.tasks if t in known]
    dropped = sorted((set(config.weights) | set(config.tasks or [])) - known)
    if dropped:
        warnings.append(f"this cache has no task(s) {', '.join(dropped)}; their settings were ignored")
    if tasks is not None and not tasks:
        tasks = None
    return dataclasses.replace(config, weights=weights, tasks=tasks), warnings


# ------------------------------------------------------------------------------------------------
# Numbers and commands shown by the app
# ------------------------------------------------------------------------------------------------
def pruned_param_count(manifest: Mapping[str, Any], n_keep: int) -> int | None:
    """Parameters of the model after keeping ``n_keep`` hidden dims, from the manifest's
    ``model.num_parameters`` and ``model.params_per_hidden_dim``; None when either is missing."""
    model = manifest.get("model", {})
    total, per_dim = model.get("num_parameters"), model.get("params_per_hidden_dim")
    if total is None or per_dim is None:
        return None
    return int(total) - int(per_dim) * (int(model["hidden_size"]) - int(n_keep))


_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_export_name(name: str) -> str:
    """An export name is a plain file/folder name: no path separators, no '..', no leading dot."""
    name = name.strip()
    if "/" in name or "\\" in name or os.sep in name or (os.altsep and os.altsep in name):
        raise DietError(f"export name {name!r} contains a path separator", "use a plain name such as smollm2-diet-0.2")
    if not _SAFE_NAME.match(name) or name in (".", "..") or ".." in name:
        raise DietError(
            f"export name {name!r} is not a plain file name",
            "use letters, digits, '.', '_' and '-' (starting with a letter or digit), at most 128 characters",
        )
    return name


def default_export_name(model_name: str, config: MaskConfig) -> str:
    """A plain export name such as ``smollm2-135m-diet-s0.2`` (a model given as a path uses its folder name)."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model_name.rstrip("/\\")).name).strip("-.") or "model"
    return check_export_name(f"{base}-{config.method}-s{config.sparsity:g}"[:128])


def mask_command(cache_path: str | Path, config: MaskConfig, out: str | Path) -> str:
    """The ``diet-explore mask`` command line that rebuilds this mask from the same cache."""
    default = MaskConfig().to_dict()
    args = ["diet-explore", "mask", "--cache", str(cache_path)]
    for name, value in config.to_dict().items():
        if value == default[name] or value is None:
            continue
        flag = "--" + name.replace("_", "-")
        if name == "weights":
            args += [flag, ",".join(f"{t}={_fmt(float(w))}" for t, w in value.items())]
        elif name == "tasks":
            args += [flag, ",".join(value)]
        elif isinstance(value, bool):
            args += [flag] if value else [f"--no-{name.replace('_', '-')}"]
        else:
            args += [flag, _fmt(value)]
    args += ["--out", str(out)]
    return shlex.join(args)


# ------------------------------------------------------------------------------------------------
# Prune & evaluate runs
# ------------------------------------------------------------------------------------------------
def run_record(pair, *, model: str, cache_path: str, manifest_hash: str, mask_config: MaskConfig, n_keep: int,
               hidden_size: int, params: tuple[int, int], nbytes: tuple[int, int]) -> dict[str, Any]:
    """One prune+evaluate run as a JSON-safe dict for ``runs.RunStore.save`` (``pair``: an
    ``evaluate.PairResult``). The flat fields are the run store's listing columns; the rest is detail."""
    frame = pair.to_frame().reset_index()
    delta, lo, hi = pair.average_delta()
    n_examples = int(sum(r.n for r in pair.dense.tasks.values()))
    return json_safe({
        "source": "app",
        "model": model,
        "method": mask_config.method,
        "sparsity": 1.0 - n_keep / hidden_size,
        "n_keep": n_keep,
        "hidden_size": hidden_size,
        "tasks": list(pair.dense.tasks),
        "limit": pair.dense.config.limit,
        "dense_avg": pair.dense.average(),
        "pruned_avg": pair.pruned.average(),
        "delta_avg": delta,
        "delta_avg_ci": [lo, hi],
        "dense_ppl": pair.dense.perplexity,
        "pruned_ppl": pair.pruned.perplexity,
        "wall_time_s": pair.dense.wall_time_s + pair.pruned.wall_time_s,
        "cache": cache_path,
        "cache_manifest_hash": manifest_hash,
        "mask_config": mask_config.to_dict(),
        "eval_config": pair.dense.config.to_dict(),
        "task_results": frame.to_dict(orient="records"),
        "parameters": {"dense": params[0], "pruned": params[1]},
        "bytes": {"dense": nbytes[0], "pruned": nbytes[1]},
        "seconds_per_example": {"dense": pair.dense.wall_time_s / max(n_examples, 1),
                                "pruned": pair.pruned.wall_time_s / max(n_examples, 1)},
        "n_examples": n_examples,
    })


HISTORY_COLUMNS = ("run_id", "created", "model", "method", "sparsity", "n_keep", "delta_avg", "ci_low", "ci_high",
                   "dense_avg", "pruned_avg", "dense_ppl", "pruned_ppl", "limit", "wall_time_s")


def runs_frame(records: Sequence[Mapping[str, Any]]):
    """One row per stored run (app or CLI) for the history table and plot, newest first."""
    import pandas as pd

    rows = []
    for r in records:
        ci = r.get("delta_avg_ci") or [None, None]
        rows.append({c: r.get(c) for c in HISTORY_COLUMNS} | {"ci_low": ci[0], "ci_high": ci[1]})
    df = pd.DataFrame(rows, columns=list(HISTORY_COLUMNS))
    return df.sort_values("created", ascending=False, kind="stable").reset_index(drop=True)
