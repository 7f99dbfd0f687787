"""Session state: the mask settings every page shares, the shared link, and the URL.

Settings live in plain session keys "_keep_<key>" (get/put/settings), never in the widget keys:
Streamlit forgets a widget's value when the widget is not rendered (another page) and may then
report a stale value for its key. Each settings widget is created with kw(key): its initial value
is the stored setting, and its on_change callback stores every change (callbacks run before the
script, so get() is current on every run). The widget key is never written through the API, so
nothing is echoed to the browser while a slider is being dragged (the `ss[k] = ss[k]` idiom does
that on every run). Streamlit 1.67's persist_state="session" was tried first: on the first run
after a page switch the key was not yet in st.session_state, so settings read before the widget
rendered came back as defaults.

The rules (widget state <-> MaskConfig, query string) are pure functions in ``settings.py``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import streamlit as st

from diet_explore.masking.build import MaskConfig
from diet_explore.profiling.cache import ScoreCache
from diet_explore_app import settings as S

K_BOOTED, K_LINK_CONFIG, K_LINK_WARNINGS, K_LINK_CACHE = "_booted", "_link_config", "_link_warnings", "_link_cache"
K_SINGLE_TASK, K_HELD_OUT = "single_task", "held_out_task"
K_DIM, K_LINK_DIM = "inspect_dim", "_link_dim"  # the Dimension page's dim, and the one a link named
K_STAB_ON, K_STAB_N = "stab_on", "stab_n"  # bootstrap on/off and resamples (Mask builder, Dimension)
K_VIEW = "agree_view"  # Agreement's open tab (a link's view= sets it)
K_STAB_HIST = "stab_hist"  # Mask builder: the keep-frequency histogram's expander is open
K_SYNCED, K_TAKE_LINK = "_synced_params", "_take_link"  # the query string last written; a URL to take again
SHADOW = "_keep_"
K_WRITTEN = "_reset_keys"  # widget keys ``reset`` wrote since their widget last rendered


def _sync(key: str) -> None:
    st.session_state[SHADOW + key] = st.session_state[key]


def has(key: str) -> bool:
    """Whether a setting has a value yet (from the user, the link or a default)."""
    return SHADOW + key in st.session_state


def get(key: str, fallback=None):
    """A setting's current value (valid on every page, whether or not its widget is shown)."""
    return st.session_state.get(SHADOW + key, fallback)


class _Settings(Mapping):
    """Every setting, by widget key: a read-only view that looks each one up when asked. Building a
    dict of them walked the whole session state on every rerun (~6% of a Mask builder rerun's
    script time in py-spy), while ``config_from_state`` asks for a dozen keys."""

    def __getitem__(self, key: str):
        if SHADOW + key not in st.session_state:
            raise KeyError(key)
        return st.session_state[SHADOW + key]

    def __iter__(self) -> Iterator[str]:
        return iter([k[len(SHADOW) :] for k in st.session_state if k.startswith(SHADOW)])

    def __len__(self) -> int:
        return sum(1 for _ in self)


def settings() -> Mapping:
    """Every setting, by widget key (looked up on demand)."""
    return _Settings()


def put(key: str, value) -> None:
    """Set a setting from code (link, defaults, fixes). Takes effect when its widget next mounts."""
    st.session_state[SHADOW + key] = value


def reset(key: str, value) -> None:
    """Set a setting from code even while its widget is on the page: the widget shows ``value`` on
    this run. Call it before the widget is created in the run (a callback, or above the widget).
    The widget's key is written through the API, which is what makes Streamlit send the value to
    the browser: a widget's identity is its key (and range), not its value, so dropping the key
    left the browser showing the old value and sending it back on the next input."""
    put(key, value)
    st.session_state[key] = value
    st.session_state.setdefault(K_WRITTEN, set()).add(key)


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
    """Widget kwargs for a setting: key, the stored value, and the callback that stores changes. The
    value is passed even when the key is in the session: after a page switch that key can hold a
    stale value Streamlit forgot to drop (module docstring). Right after ``reset`` the value is not
    passed: Streamlit takes the written one, and logged that a value was also passed."""
    written = st.session_state.get(K_WRITTEN)
    if written and key in written:
        written.discard(key)
        if key in st.session_state and st.session_state[key] == get(key):  # still there (not dropped by a page switch)
            return {"key": key, "on_change": _sync, "args": (key,)}
    return {"key": key, "value": get(key), "on_change": _sync, "args": (key,)}


def sel_kw(key: str, options) -> dict:
    options = list(options)
    value = get(key)
    return {"key": key, "index": options.index(value) if value in options else 0, "on_change": _sync, "args": (key,)}


def tabs_kw(key: str, labels) -> dict:
    """Lazy ``st.tabs`` kwargs for a remembered open tab: the stored tab first, and the callback that
    stores a click before the rerun. The stored tab is also the ``default``, which is part of the
    widget's identity: stored first, it always equals the tab just clicked, so no click is lost."""
    labels = list(labels)
    value = get(key)
    return {"key": key, "default": value if value in labels else labels[0], "on_change": _sync, "args": (key,)}


def expander_kw(key: str) -> dict:
    """Lazy ``st.expander`` kwargs for a remembered open/closed state (closed at first), stored by its
    callback before the rerun; like a tab's ``default``, ``expanded`` is part of the identity."""
    return {"key": key, "expanded": bool(get(key, False)), "on_change": _sync, "args": (key,)}


def multi_kw(key: str) -> dict:
    return {"key": key, "default": get(key), "on_change": _sync, "args": (key,)}


def history_navigation() -> bool:
    """Whether this run is the browser's Back or Forward (Streamlit marks the rerun it sends then)."""
    from streamlit.runtime.scriptrunner_utils.script_run_context import get_script_run_ctx

    return bool(getattr(get_script_run_ctx(), "is_history_navigation", False))


def boot() -> None:
    """First run of a session: read the shared link (query string). Back and Forward: read it again,
    and its settings replace the current ones (the browser reruns with the earlier URL; the app kept
    its own settings and wrote them back over it, so Back did nothing). Comparing the URL with what
    the app last wrote would misfire: a fast key press can rerun before the browser took the last URL."""
    params = st.query_params.to_dict()
    if st.session_state.get(K_BOOTED):
        if not history_navigation() or st.session_state.get(K_SYNCED) == params:
            return
        st.session_state[K_TAKE_LINK] = True  # ensure_settings puts the URL's settings over the current ones
    config, cache, warnings = S.decode_query(params)
    dim, dim_warnings = S.decode_dim(params)
    view, view_warnings = S.decode_view(params)
    st.session_state[K_LINK_CONFIG] = config
    st.session_state[K_LINK_CACHE] = cache
    st.session_state[K_LINK_DIM] = dim
    if view is not None:
        put(K_VIEW, view)
    st.session_state[K_LINK_WARNINGS] = warnings + dim_warnings + view_warnings
    st.session_state[K_BOOTED] = True


def ensure_settings(cache: ScoreCache) -> None:
    """Give every setting key a value (from the link on first use); never overwrite a user's value."""
    link: MaskConfig = st.session_state.get(K_LINK_CONFIG) or MaskConfig()
    link, warnings = S.reconcile_config(link, cache.task_names, cache.hidden_size)
    if warnings and not st.session_state.get("_reconcile_warned"):
        st.session_state[K_LINK_WARNINGS] = st.session_state.get(K_LINK_WARNINGS, []) + warnings
        st.session_state["_reconcile_warned"] = True
    take = st.session_state.pop(K_TAKE_LINK, False)  # Back/Forward: the URL's settings replace the current ones
    for key, value in S.state_from_config(link, cache.task_names).items():
        if take and get(key) != value:
            reset(key, value)
        else:
            default(key, value)
    if get(S.KEY_SITE) not in cache.sites:
        put(S.KEY_SITE, cache.sites[0])
    if get(S.KEY_LAYER_AGG) == "last_k" and int(get(S.KEY_LAST_K, 1)) > cache.num_layers:  # a link, or a deeper cache
        st.session_state[K_LINK_WARNINGS] = st.session_state.get(K_LINK_WARNINGS, []) + [
            f"last k = {get(S.KEY_LAST_K)} layers, but this cache has {cache.num_layers}: using {cache.num_layers}"
        ]
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
    if config.method == "single-task":
        config = MaskConfig.from_dict({**config.to_dict(), "single_task": get(K_SINGLE_TASK)})
    if config.method == "leave-one-out":
        config = MaskConfig.from_dict({**config.to_dict(), "held_out_task": get(K_HELD_OUT)})
    return config


def voting_tasks(cache: ScoreCache) -> list[str]:
    """Tasks whose weight slider is above 0 (what Agreement and the vote use)."""
    return [t for t in cache.task_names if float(get(S.weight_key(t), 1.0)) > 0]


def sync_query_params(config: MaskConfig | None, cache_value: str | None, extra: dict[str, str] | None = None) -> None:
    """Write the current settings (and the ``cache=`` value, None for the default cache; ``extra``: a
    page's own parameters, e.g. ``dim``) into the URL, only when they changed."""
    if config is None:
        return
    params = S.encode_query(config, cache_value) | (extra or {})
    if st.query_params.to_dict() != params:
        st.query_params.from_dict(params)
    st.session_state[K_SYNCED] = params
