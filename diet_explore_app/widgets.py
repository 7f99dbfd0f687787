"""Shared widgets and error display: the sidebar cache picker, the mask-setting controls every page
shares (same key on every page, so a value set on one page shows on the others), and the model
checks of the pages that load one.

Streamlit lives here and in the page scripts, never in ``diet_explore/``: every number shown comes
from a library call; state is in ``state.py``, cached loaders in ``loaders.py``, pure rules in
``settings.py``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import streamlit as st

from diet_explore.core.errors import DietError
from diet_explore.masking.build import MaskConfig, MaskResult
from diet_explore.profiling.cache import ScoreCache, list_caches
from diet_explore_app import loaders, state
from diet_explore_app import settings as S
from diet_explore_app.loaders import Loaded
from diet_explore_app.state import default, follow, get, kw, put, reset, sel_kw

OTHER = "Other folder…"
K_CACHE_CHOICE, K_CACHE_PATH = "cache_choice", "cache_path"
K_MODEL = "pe_model"


def show_error(exc: DietError) -> None:
    st.error(f"**{exc.message}**" + (f"\n\nHint: {exc.hint}" if exc.hint else ""))


@contextmanager
def shown_errors() -> Iterator[None]:
    """Run a page body; a ``DietError`` becomes an error box and the app keeps going."""
    try:
        yield
    except DietError as exc:
        show_error(exc)


def display_path(p: Path | str) -> str:
    return S.display_path(p, S.base_dir())


def cache_picker() -> Loaded | None:
    """Sidebar: pick a discovered cache or type a folder; returns the loaded cache or None (error shown)."""
    root = S.cache_root(S.base_dir())
    caches = list_caches(root)
    options = [display_path(p) for p in caches] + [OTHER]
    if not state.has(K_CACHE_CHOICE):
        link = st.session_state.get(state.K_LINK_CACHE)
        default_path = S.default_cache(caches)
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
        st.selectbox(
            "Score cache",
            options,
            **sel_kw(K_CACHE_CHOICE, options),
            help=f"folders with a manifest.json under {display_path(root)}",
        )
        if get(K_CACHE_CHOICE) == OTHER:
            st.text_input("Cache folder", **kw(K_CACHE_PATH), placeholder="path/to/cache-folder")
    choice = get(K_CACHE_CHOICE)
    typed = str(get(K_CACHE_PATH, "")).strip()
    if choice == OTHER and not typed:
        st.info(
            f"No score cache selected (none found under `{display_path(root)}`). Type a cache folder in the "
            "sidebar, or make one with `diet-explore profile --model smollm2-135m --out cache/smollm2-135m`."
        )
        return None
    path = str(_typed_path(typed) if choice == OTHER else S.base_dir() / choice if not Path(choice).is_absolute() else choice)
    loaded = Loaded(path, loaders.manifest_sha(path))
    try:
        loaded.pre  # noqa: B018  (load now, so a bad cache is reported here)
    except DietError as exc:
        show_error(exc)
        return None
    return loaded


def _typed_path(typed: str) -> Path:
    """A typed or linked cache folder; a relative path is relative to the app's folder (``S.base_dir()``)."""
    path = Path(typed).expanduser()
    return path if path.is_absolute() else S.base_dir() / path


def cache_link_value(loaded: Loaded) -> str | None:
    """The ``cache=`` query value: None for the default cache (keeps links short)."""
    default = S.default_cache(list_caches(S.cache_root(S.base_dir())))
    if default is not None and Path(loaded.path).resolve() == default.resolve():
        return None
    return display_path(loaded.path)


def sparsity_slider() -> float:
    return st.slider("Sparsity (fraction of hidden dims pruned)", 0.0, 0.9, step=0.01, **kw(S.KEY_SPARSITY))


def score_controls(cache: ScoreCache) -> tuple[str, str, int]:
    """Site, layer aggregation (and last k): how a task's (L, D) scores become (D,)."""
    c1, c2, c3 = st.columns(3)
    site = c1.selectbox("Site", cache.sites, **sel_kw(S.KEY_SITE, cache.sites))
    agg = c2.selectbox(
        "Layer aggregation",
        list(S.LAYER_AGGS),
        **sel_kw(S.KEY_LAYER_AGG, list(S.LAYER_AGGS)),
        help="mean over layers is the paper's score",
    )
    last_k = get(S.KEY_LAST_K)
    if agg == "last_k":
        if int(last_k) > cache.num_layers:  # chosen on a deeper cache while another aggregation was on
            reset(S.KEY_LAST_K, cache.num_layers)
        last_k = c3.number_input("Last k layers", 1, cache.num_layers, step=1, **kw(S.KEY_LAST_K))
    return site, agg, int(last_k)


def export_dir() -> Path:
    """Where Export writes (``DIET_EXPLORE_EXPORT_DIR``, else ``artifacts/`` in the app's folder)."""
    return S.env_dir(os.environ, S.EXPORT_DIR_ENV, S.base_dir() / "artifacts")


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
    config = state.current_config(loaded.cache)
    return config, loaders.mask_for(loaded.path, loaded.sha, config.to_json())


def model_name_for(cache: ScoreCache) -> str:
    """The model to prune: the Prune & evaluate page's model field (which follows the cache's model
    until the user types another), else the cache's model."""
    follow(K_MODEL, cache.model_name)
    typed = str(get(K_MODEL, "") or "").strip()
    return typed or cache.model_name


def saveable_hint(cache: ScoreCache, n_keep: int) -> str | None:
    """A warning when ``n_keep`` could not be saved as a pruned model folder, naming the fix."""
    name = model_name_for(cache)
    need = loaders.saveable_multiple(name)
    if not need or n_keep % need == 0:
        return None
    return (
        f"{n_keep} kept dims can be evaluated in memory, but a pruned {name} folder needs a multiple of {need} "
        f"(its attention head count): set *Kept count a multiple of* to {need}."
    )


def check_model_installed(name: str) -> None:
    """A ``DietError`` saying how to get ``name`` when it cannot load here: a built-in model's install
    command, a missing folder, a hub id neither reachable nor in the hub cache."""
    from diet_explore.models.builtin import BUILTIN_MODELS, install_command, is_installed

    if name not in BUILTIN_MODELS:
        problem = loaders.model_config_problem(name)
        if problem:
            raise DietError(*problem)
    elif not is_installed(name):
        raise DietError(f"the weights of {name!r} are not installed here", f"install them with `{install_command(name)}`")
