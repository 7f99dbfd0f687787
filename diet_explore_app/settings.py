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
import difflib
import functools
import hashlib
import importlib.util
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from diet_explore.core.atomic import shorten
from diet_explore.core.config import parse_float, parse_int
from diet_explore.core.errors import DietError
from diet_explore.masking.config import METHODS, MaskConfig, canonical_method, parse_weights
from diet_explore.masking.importance import LAYER_AGGS, NORMALIZATIONS
from diet_explore.models.builtin import DEFAULT_MODEL
from diet_explore.profiling.cache import SITES, list_caches

BASE_DIR_ENV = "DIET_EXPLORE_APP_DIR"  # the app's folder (default: the working folder)
CACHE_DIR_ENV = "DIET_EXPLORE_CACHE_DIR"  # folder holding cache folders (default: <app folder>/cache)
DEFAULT_CACHE_ENV = "DIET_EXPLORE_DEFAULT_CACHE"  # the cache a new session opens (diet-explore app --cache)
EXPORT_DIR_ENV = "DIET_EXPLORE_EXPORT_DIR"  # where exports are written (default: <app folder>/artifacts)
CACHE_PARAM = "cache"
DIM_PARAM = "dim"  # the Dimension page's hidden dim, e.g. ?dim=507
VIEW_PARAM = "view"  # the Agreement page's open tab, e.g. ?view=intersections
# The pages (their url paths) whose code imports torch or transformers. They wait for the imports the
# app's first run starts in the background (loaders.warm_up): two threads importing transformers at
# once can break each other's import. Every other page imports neither (tests/test_app_pages.py).
MODEL_PAGES = frozenset({"mask_builder", "prune_eval", "sweep", "tune", "export"})

# Agreement's views (one tab each), by their link value; the first is the default
AGREEMENT_VIEWS = {
    "overlap": "Task overlap",
    "votes": "Votes per dim",
    "matrix": "Vote matrix",
    "intersections": "Task intersections",
}

# Widget keys (st.session_state) of the mask settings; weights live under WEIGHT_PREFIX + task.
KEY_SPARSITY, KEY_THRESHOLD, KEY_METHOD, KEY_SITE = "sparsity", "threshold", "method", "site"
KEY_LAYER_AGG, KEY_LAST_K, KEY_NORMALIZE = "layer_agg", "last_k", "normalize"
KEY_EXACT, KEY_MULTIPLE, KEY_SEED = "exact", "multiple", "seed"
WEIGHT_PREFIX = "w_"
WEIGHT_MAX = 2.0
# The sliders' ranges and steps (widgets draws them; links and state_from_config keep values on them:
# a link value between two steps left the slider on another value than the page's numbers, and the
# page faded as "Updating…" for good)
SPARSITY_MAX, SPARSITY_STEP = 0.9, 0.01
THRESHOLD_STEP = 0.05
WEIGHT_STEP = 0.1


def on_step(value: float, step: float) -> float:
    """``value`` rounded to the nearest multiple of ``step`` (a slider position), as a clean float."""
    return round(round(value / step) * step, 10)


def on_steps(config: MaskConfig) -> MaskConfig:
    """``config`` with sparsity, τ and weights on the sliders' steps."""
    return dataclasses.replace(
        config,
        sparsity=on_step(config.sparsity, SPARSITY_STEP),
        threshold=on_step(config.threshold, THRESHOLD_STEP),
        weights={t: on_step(w, WEIGHT_STEP) for t, w in config.weights.items()},
    )


# ------------------------------------------------------------------------------------------------
# Folders and cache discovery
# ------------------------------------------------------------------------------------------------
def env_dir(env: Mapping[str, str], name: str, default: Path) -> Path:
    value = env.get(name, "").strip()
    return Path(value).expanduser() if value else default


def base_dir(env: Mapping[str, str] | None = None) -> Path:
    """The app's folder: ``DIET_EXPLORE_APP_DIR``, else the working folder the server started in
    (the repository root for ``make run``). Relative paths, ``cache/`` and ``artifacts/`` are in it."""
    env = os.environ if env is None else env
    return _resolved(env.get(BASE_DIR_ENV, "").strip(), os.getcwd())


@functools.lru_cache(maxsize=16)
def _resolved(value: str, cwd: str) -> Path:
    """``base_dir``'s path, resolved once per (setting, working folder): resolving walks every
    component with a system call, and a page asks for it dozens of times per rerun."""
    return (Path(value).expanduser() if value else Path(cwd)).resolve()


def packaged_cache_root() -> Path | None:
    """The score caches shipped inside the installed package (``diet_explore_caches``), if any."""
    spec = importlib.util.find_spec("diet_explore_caches")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def cache_root(base: Path, env: Mapping[str, str] | None = None) -> Path:
    """Where the app looks for caches: ``DIET_EXPLORE_CACHE_DIR``, else ``<base>/cache`` when it holds
    any, else the caches shipped with the package (a pip install works from any folder)."""
    env = os.environ if env is None else env
    if env.get(CACHE_DIR_ENV, "").strip():
        return env_dir(env, CACHE_DIR_ENV, base / "cache")
    local = base / "cache"
    packaged = packaged_cache_root()
    if list_caches(local) or packaged is None:
        return local
    return packaged


def display_path(p: Path | str, base: Path) -> str:
    """``p`` relative to the app's folder when it is inside it (what links and messages show)."""
    p = Path(p)
    try:
        return str(p.resolve().relative_to(base))
    except ValueError:
        return str(p)


def default_cache(caches: Sequence[Path], env: Mapping[str, str] | None = None) -> Path | None:
    """The cache a new session opens: ``DIET_EXPLORE_DEFAULT_CACHE`` (a folder name) when found,
    else the default model's (smollm2-135m), else the first found, else None."""
    env = os.environ if env is None else env
    for preferred in (env.get(DEFAULT_CACHE_ENV, "").strip(), DEFAULT_MODEL):
        for p in caches:
            if preferred and p.name == preferred:
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
    config = on_steps(config)
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


def _raise(exc: Exception):
    raise exc


def _parse_bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError("use 1 or 0")


def _parse_weights(s: str) -> dict[str, float]:
    weights = parse_weights(s)
    if any(not 0.0 <= w <= WEIGHT_MAX for w in weights.values()):  # NaN fails this too
        raise ValueError(f"a weight is a number from 0 to {WEIGHT_MAX:g}")  # (the value is named already)
    return weights


def _in(options: Sequence[str]):
    def check(s: str) -> str:
        if s not in options:
            raise ValueError(f"use one of {', '.join(options)}")
        return s

    return check


def _ranged(cast, lo: float, hi: float):
    def check(s: str):
        allowed = f"use a {'whole ' if cast is int else ''}number from {lo} to {hi}"
        v = (parse_int if cast is int else parse_float)(s)  # ASCII digits, as the CLI reads numbers
        if v is None or not lo <= v <= hi:  # NaN fails this too
            raise ValueError(allowed)
        return v

    return check


_PARSERS = {
    "sparsity": _ranged(float, 0.0, SPARSITY_MAX),
    "threshold": _ranged(float, 0.0, 1.0),
    "weights": _parse_weights,
    "tasks": lambda s: [t for t in s.split(",") if t] or _raise(ValueError("it names no task")),
    "method": lambda s: _in(METHODS)(canonical_method(s)),  # an older name (leave_one_out) is read as its new one
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
    (other apps may add their own), with a warning when one is close to a setting's name (a typo:
    ``multiple=9`` for ``multiple_of=9``); bad values are dropped with a warning naming them."""
    fields = {f.name for f in dataclasses.fields(MaskConfig)}
    values: dict[str, Any] = {}
    warnings: list[str] = []
    known = sorted((fields & set(_PARSERS)) | {CACHE_PARAM, DIM_PARAM, VIEW_PARAM})
    for name, raw in params.items():
        if name not in fields or name not in _PARSERS:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.7) if name not in known else None
            if close:
                text = _first(raw)
                warnings.append(
                    f"ignored link setting {name}={shorten(text, 40, quote=True)}: no such setting; did you mean {close[0]}=?"
                )
            continue
        text = _first(raw)
        try:
            value = _PARSERS[name](text)
            MaskConfig(**{name: value})  # the config's own checks, one field at a time
        except DietError as exc:  # the config's own rule says what is allowed
            warnings.append(f"ignored link setting {name}={shorten(text, 40, quote=True)}: {exc.message}; the default is used")
            continue
        except (ValueError, TypeError) as exc:
            warnings.append(f"ignored link setting {name}={shorten(text, 40, quote=True)}: {str(exc)[:120]}; the default is used")
            continue
        values[name] = value
    config = MaskConfig(**values)
    stepped = on_steps(config)
    for name in ("sparsity", "threshold", "weights"):
        if name in values and getattr(stepped, name) != getattr(config, name):
            shown = getattr(stepped, name)
            shown = ",".join(f"{t}:{w:g}" for t, w in shown.items()) if name == "weights" else f"{shown:g}"
            warnings.append(
                f"link setting {name}={shorten(_first(params[name]), 40, quote=True)} is between the slider's steps; {shown} is used"
            )
    cache = _first(params[CACHE_PARAM]) if CACHE_PARAM in params else None
    return stepped, (cache or None), warnings


def decode_dim(params: Mapping[str, str | Sequence[str]]) -> tuple[int | None, list[str]]:
    """``(dim or None, warnings)`` from a link's ``dim=``: a whole number, else dropped with a warning.
    Whether it exists in the cache is checked where the cache is known (the Dimension page)."""
    if DIM_PARAM not in params:
        return None, []
    text = _first(params[DIM_PARAM]).strip()
    if re.fullmatch(r"[0-9]{1,9}", text):  # ASCII only
        return int(text), []
    return None, [
        f"ignored link setting {DIM_PARAM}={shorten(text, 40, quote=True)}: a dimension is an index, 0 or more, e.g. {DIM_PARAM}=507"
    ]


def decode_view(params: Mapping[str, str | Sequence[str]]) -> tuple[str | None, list[str]]:
    """``(tab label or None, warnings)`` from a link's ``view=`` (one of ``AGREEMENT_VIEWS``' keys)."""
    if VIEW_PARAM not in params:
        return None, []
    text = _first(params[VIEW_PARAM]).strip()
    if text in AGREEMENT_VIEWS:
        return AGREEMENT_VIEWS[text], []
    return None, [
        f"ignored link setting {VIEW_PARAM}={shorten(text, 40, quote=True)}: it names the Agreement page's open tab, "
        f"one of {', '.join(AGREEMENT_VIEWS)}"
    ]


def view_key(label: str) -> str | None:
    """The ``AGREEMENT_VIEWS`` key of the tab labelled ``label`` (None for no such tab)."""
    return next((k for k, v in AGREEMENT_VIEWS.items() if v == label), None)


def encode_view(label: str) -> dict[str, str]:
    """The ``view=`` parameter for Agreement's open tab ``label`` (none for the default tab)."""
    slug = view_key(label)
    return {} if slug is None or slug == next(iter(AGREEMENT_VIEWS)) else {VIEW_PARAM: slug}


def reconcile_config(
    config: MaskConfig, task_names: Sequence[str], hidden_size: int | None = None
) -> tuple[MaskConfig, list[str]]:
    """Drop tasks/weights (and a single or held-out task) that the loaded cache does not have (a link
    made on another cache), and a multiple_of over its width, each with a warning."""
    known = set(task_names)
    warnings: list[str] = []
    weights = {t: w for t, w in config.weights.items() if t in known}
    tasks = None if config.tasks is None else [t for t in config.tasks if t in known]
    named = [config.single_task, config.held_out_task]
    dropped = sorted((set(config.weights) | set(config.tasks or []) | {t for t in named if t}) - known)
    if dropped:
        shown = ", ".join(shorten(t, 40) for t in dropped[:5]) + (f" and {len(dropped) - 5} more" if len(dropped) > 5 else "")
        warnings.append(f"this cache has no task(s) {shown}; their settings were ignored")
    if tasks is not None and not tasks:
        tasks = None
    single = config.single_task if config.single_task in known else None
    held_out = config.held_out_task if config.held_out_task in known else None
    multiple = config.multiple_of
    if hidden_size is not None and multiple > hidden_size:  # Export's prune check said it in CLI words (--multiple-of)
        multiple = MaskConfig().multiple_of
        warnings.append(
            f"ignored link setting multiple_of={config.multiple_of}: this cache has {hidden_size} dims; {multiple} is used"
        )
    changed = {"weights": weights, "tasks": tasks, "single_task": single, "held_out_task": held_out, "multiple_of": multiple}
    return dataclasses.replace(config, **changed), warnings


# ------------------------------------------------------------------------------------------------
# Numbers and commands shown by the app
# ------------------------------------------------------------------------------------------------


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


def settings_hash(config: MaskConfig, cache_hash: str = "") -> str:
    """Six hex digits of the settings (and the cache they apply to): two masks from different
    settings never share a default export name."""
    return hashlib.sha256((config.to_json() + cache_hash).encode()).hexdigest()[:6]


def default_export_name(model_name: str, config: MaskConfig, cache_hash: str = "") -> str:
    """A plain export name such as ``smollm2-135m-diet-s0.2-3fa9c1`` (a model given as a path uses its
    folder name; the suffix is ``settings_hash``)."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model_name.rstrip("/\\")).name).strip("-.") or "model"
    tail = f"-{config.method}-s{config.sparsity:g}-{settings_hash(config, cache_hash)}"
    return check_export_name(base[: 128 - len(tail)] + tail)


def check_explorable(cache) -> None:
    """The pages need at least one evaluation task; a cache of only the generic wikitext set is
    refused with a DietError instead of failing on every page (``load_cache`` refuses one without a site)."""
    cache.require_tasks()
