"""Shared widgets and error display: the sidebar cache picker, the mask-setting controls every page
shares (same key on every page, so a value set on one page shows on the others), and the model
checks of the pages that load one.

Streamlit lives here and in the page scripts, never in ``diet_explore/``: every number shown comes
from a library call; state is in ``state.py``, cached loaders in ``loaders.py``, pure rules in
``settings.py``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import streamlit as st

from diet_explore import plots
from diet_explore.core.atomic import check_path
from diet_explore.core.errors import DietError
from diet_explore.evaluation.decision import SCALES, format_entry
from diet_explore.masking.build import MaskConfig, MaskResult
from diet_explore.masking.dims import check_dim, display_token
from diet_explore.profiling.cache import ScoreCache, list_caches
from diet_explore_app import loaders, state
from diet_explore_app import settings as S
from diet_explore_app.loaders import Loaded
from diet_explore_app.state import default, follow, get, kw, put, reset, sel_kw

OTHER = "Other folder…"
FAVICON = (Path(__file__).parent / "favicon.png").read_bytes()  # the app's page icon (app.py)
K_CACHE_CHOICE, K_CACHE_PATH = "cache_choice", "cache_path"
K_MODEL = "pe_model"
K_RESET = "reset_paper_default"

# One glossary: the tooltips of the widgets and metrics, and the Overview page's glossary.
HELP = {
    "sparsity": "Fraction of the hidden dimensions to prune. Each task prunes its own lowest-scoring dims at this "
    "sparsity; the vote merges them into one mask.",
    "tau": "τ, the vote threshold: a dimension is kept when the tasks that keep it hold at least τ of the total task "
    "weight. 0.5 is the paper's majority vote; a higher τ prunes more.",
    "weights": "How much a task's vote counts. 0 leaves the task out of the vote (and out of the agreement plots).",
    "jaccard": "Jaccard index of two sets: |A ∩ B| / |A ∪ B|. 1 = the same dims, 0 = no dim in common. Here the sets "
    "are the dims each task (or each mask) prunes.",
    "upset": "UpSet plot: each bar counts the dims pruned by exactly the tasks marked below it and by no other task; "
    "the largest combinations come first.",
    "stable": "Stable dims are kept in every bootstrap resample or in none; unstable dims are kept in more than 5% and "
    "fewer than 95% of them, so another draw of calibration samples could flip them.",
    "site": "Where the activations were measured: residual = the residual stream after each decoder block (the "
    "paper's site); normed = the normalised inputs of attention and MLP.",
    "layer_agg": "How a dimension's per-layer scores become one score: mean over layers (the paper's), max over "
    "layers, or the mean of the last k layers.",
    "acc": "acc: the answer choice with the highest log-likelihood is right. acc_norm: the same with each "
    "log-likelihood divided by the choice's length in characters (lm-eval's rule). The main metric is acc_norm for "
    "HellaSwag, ARC and OpenBookQA and acc elsewhere, as papers report them.",
    "exact": "Keep exactly the target count: the vote's order decides, ties broken by the normalised score. Off, "
    "the vote keeps what passes τ, which is often fewer pruned dims than the target.",
    "multiple": "Round the kept count to a multiple of this. Llama and Gemma configs need a multiple of the attention "
    "head count to save the pruned model; 8 suits GPU kernels; 1 = any count.",
}
GLOSSARY = [  # (term, HELP key) in the order the Overview lists them
    ("Sparsity", "sparsity"),
    ("τ (vote threshold)", "tau"),
    ("Task weight", "weights"),
    ("Jaccard", "jaccard"),
    ("UpSet", "upset"),
    ("Stable / unstable dims", "stable"),
    ("Site", "site"),
    ("Layer aggregation", "layer_agg"),
    ("acc vs acc_norm", "acc"),
]


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
        found = (
            f"pick one of the {len(caches)} found under `{display_path(root)}` in the sidebar's list, or type a cache folder"
            if caches
            else f"none was found under `{display_path(root)}`. Type a cache folder in the sidebar"
        )
        st.info(
            f"No score cache selected: {found}, or make one with "
            "`diet-explore profile --model smollm2-135m --out cache/smollm2-135m`."
        )
        return None
    try:
        check_path(typed or choice, "cache folder")  # a 5,000-character link value: a message, not an OSError
        path = str(_typed_path(typed) if choice == OTHER else S.base_dir() / choice if not Path(choice).is_absolute() else choice)
        loaded = Loaded(path, loaders.manifest_sha(path))
        loaded.pre  # noqa: B018  (load now, so a bad cache is reported here)
        S.check_explorable(loaded.cache)  # no evaluation task, or no site: every page would fail
    except DietError as exc:
        show_error(exc)
        return None
    carry_multiple(loaded.cache)
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


# The massive-activation ratio, two ways: one header each (one "× median" header meant both, 103.9 on
# Rankings and 42.0 on Dimension for the same dim and task)
RATIO_ACROSS_TASKS = "× median dim (median of tasks)"  # masking.massive: score / the task's median dim, median over tasks
RATIO_THIS_TASK = "× median dim (this task)"  # the Dimension card: score / this task's median dim
SPARSITY_LABEL = "Sparsity (fraction of hidden dims pruned)"
THRESHOLD_LABEL = "Vote threshold τ (share of task weight that must keep a dim)"


def sparsity_slider() -> float:
    return st.slider(SPARSITY_LABEL, 0.0, S.SPARSITY_MAX, step=S.SPARSITY_STEP, help=HELP["sparsity"], **kw(S.KEY_SPARSITY))


def ignored_now() -> dict[str, str]:
    """The settings the current method does not read, with the reason (``masking.config.ignored_settings``,
    the rule the CLI refuses flags by): their widgets are disabled and say why."""
    from diet_explore.masking.config import ignored_settings

    try:
        return ignored_settings(MaskConfig(method=str(get(S.KEY_METHOD, "diet")), layer_agg=str(get(S.KEY_LAYER_AGG, "mean"))))
    except DietError:  # a setting the page reports itself
        return {}


def disabled_kw(name: str, help_text: str, ignored: dict[str, str] | None) -> dict:
    """``disabled`` and ``help`` for the widget of setting ``name``: disabled, with the reason, when
    ``ignored`` (``ignored_now()``) names it."""
    reason = (ignored or {}).get(name)
    if reason is None:
        return {"help": help_text}
    return {"disabled": True, "help": f"{help_text}\n\n**Not read now**: {reason}."}


def threshold_slider(ignored: dict[str, str] | None = None) -> float:
    """The τ slider; ``ignored``: ``ignored_now()`` (disabled, with the reason, when the method reads no τ)."""
    return st.slider(
        THRESHOLD_LABEL, 0.0, 1.0, step=S.THRESHOLD_STEP, **disabled_kw("threshold", HELP["tau"], ignored), **kw(S.KEY_THRESHOLD)
    )


def slider_settings(cache: ScoreCache) -> dict[str, float]:
    """The shared settings sliders by their label (what the page shows them as), with the values the
    page was computed with."""
    values = {SPARSITY_LABEL: float(get(S.KEY_SPARSITY, 0.2)), THRESHOLD_LABEL: float(get(S.KEY_THRESHOLD, 0.5))}
    return values | {t: float(get(S.weight_key(t), 1.0)) for t in cache.task_names}


def rendered_marker(cache: ScoreCache) -> None:
    """At the end of a run: the slider values this page's numbers were computed with, for
    UPDATING_JS to compare with the sliders shown (hidden, in the sidebar)."""
    import html
    import json

    values = html.escape(json.dumps(slider_settings(cache)), quote=True)
    with st.sidebar:
        st.html(f'<span class="diet-rendered" data-values="{values}" hidden></span>')


def open_tab(key: str, labels: Sequence[str]):
    """Lazy ``st.tabs``: only the open tab's content is built, sent and drawn (a click reruns the
    page). The open tab is the setting ``key`` (``state.tabs_kw``: remembered across pages, in the
    link where the page puts it there). Returns (its label, its container)."""
    labels = list(labels)
    tabs = st.tabs(labels, **state.tabs_kw(key, labels))
    return next(((lab, t) for lab, t in zip(labels, tabs, strict=True) if t.open), (labels[0], tabs[0]))


def open_expander(key: str, label: str):
    """Lazy ``st.expander``: its content is built, sent and drawn only while it is open (opening or
    closing it reruns the page, or the fragment it is in). Open or closed is the setting ``key``,
    closed at first. Returns (whether it is open, its container)."""
    box = st.expander(label, **state.expander_kw(key))
    return bool(box.open), box


def weight_slider(task: str, ignored: dict[str, str] | None = None) -> None:
    st.slider(
        task, 0.0, S.WEIGHT_MAX, step=S.WEIGHT_STEP, **disabled_kw("weights", HELP["weights"], ignored), **kw(S.weight_key(task))
    )


def weight_sliders(cache: ScoreCache, ignored: dict[str, str] | None = None) -> None:
    """One weight slider per evaluation task (the same keys on every page)."""
    for t in cache.task_names:
        weight_slider(t, ignored)


def vote_settings(cache: ScoreCache) -> None:
    """Sparsity and τ side by side, and the task weights in an expander: the settings the Agreement
    and Rankings pages follow (the Mask builder shows the same widgets, same keys, in full)."""
    c1, c2 = st.columns(2)
    with c1:
        sparsity_slider()
    with c2:  # the weights stay live: they choose the tasks whose vote the page shows, whatever the method
        threshold_slider({k: v for k, v in ignored_now().items() if k == "threshold"})
    with st.expander("Task weights (0 leaves a task out)", expanded=False):  # a fixed label: a new one would fold it
        cols = st.columns(4)
        for i, t in enumerate(cache.task_names):
            with cols[i % 4]:
                weight_slider(t)


def reset_button(cache: ScoreCache) -> None:
    """'Reset to paper default': equal weights, τ = 0.5, the diet vote on the residual stream, mean over
    layers, no exact count or rounding; the sparsity stays (the paper's mask is defined at any sparsity)."""
    st.button(
        "Reset to paper default",
        key=K_RESET,
        on_click=reset_to_paper_default,
        args=(tuple(cache.task_names), tuple(cache.sites)),
        help="Equal task weights, τ = 0.5, the diet vote on the residual stream, mean over layers, "
        "no exact count, no rounding. The sparsity stays.",
    )


def reset_to_paper_default(task_names: tuple[str, ...], sites: tuple[str, ...]) -> None:
    """The button's callback (runs before the script, so every widget then mounts with the new value)."""
    paper = S.state_from_config(MaskConfig(sparsity=float(get(S.KEY_SPARSITY, 0.2))), list(task_names))
    if paper[S.KEY_SITE] not in sites:
        paper[S.KEY_SITE] = sites[0]
    for key, value in paper.items():
        reset(key, value)


def score_controls(cache: ScoreCache, stacked: bool = False, ignored: dict[str, str] | None = None) -> tuple[str, str, int]:
    """Site, layer aggregation (and last k): how a task's (L, D) scores become (D,). ``stacked``: one
    under the other (a narrow column, where three side by side cut their values off); ``ignored``:
    ``ignored_now()`` where the mask is built (random and magnitude read no scores)."""
    c1, c2, c3 = (st.container(), st.container(), st.container()) if stacked else st.columns(3)
    site = c1.selectbox("Site", cache.sites, **disabled_kw("site", HELP["site"], ignored), **sel_kw(S.KEY_SITE, cache.sites))
    agg = c2.selectbox(
        "Layer aggregation",
        list(S.LAYER_AGGS),
        **sel_kw(S.KEY_LAYER_AGG, list(S.LAYER_AGGS)),
        **disabled_kw("layer_agg", HELP["layer_agg"], ignored),
    )
    last_k = get(S.KEY_LAST_K)
    if agg == "last_k":
        if int(last_k) > cache.num_layers:  # chosen on a deeper cache while another aggregation was on
            reset(S.KEY_LAST_K, cache.num_layers)
        last_k = c3.number_input("Last k layers", 1, cache.num_layers, step=1, **kw(S.KEY_LAST_K))
    return site, agg, int(last_k)


def colour_range_toggle(key: str) -> bool:
    """A heatmap's colour scale: the full range of the measure, or fitted to the values shown."""
    default(key, False)
    return st.toggle(
        "Fit the colours to the values shown",
        help="Off: colours span the measure's whole range. On: they span the off-diagonal values, so close "
        "values (e.g. 0.87 to 0.98) are told apart.",
        **kw(key),
    )


def chart(fig, key: str, where=None) -> None:
    """Every plotly figure the app shows (built by ``plots`` or another ``@plots.figure_builder``),
    in ``where`` (a column or container; the page by default), in its own light look rather than
    Streamlit's theme. Streamlit's theme adds a template the chart copies right after it mounts,
    and plotly redraws a figure whose template is another object in full: a second full draw on
    every slider move (``plots.finish`` says the rest). The app's theme is pinned to light
    (``.streamlit/config.toml``), so the figures' look matches the page."""
    (where or st).plotly_chart(fig, key=key, theme=None)


def heat_table(table: plots.HeatTable) -> None:
    """A task × task matrix as a coloured table under its title (``plots.task_heat_table``), values to
    two decimals."""
    st.markdown(f"**{table.title}**")  # words and numbers the library wrote, no user text
    st.table(table.frame.style.apply(lambda _: table.css, axis=None).format("{:.2f}"))


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
    if not str(get(K_MODEL, "") or "").strip():  # an emptied field shows the model it stands for, not blank
        reset(K_MODEL, cache.model_name)
    return str(get(K_MODEL)).strip()


def saveable_hint(cache: ScoreCache, n_keep: int) -> str | None:
    """A warning when ``n_keep`` could not be saved as a pruned model folder, naming the fix."""
    name = model_name_for(cache)
    need = loaders.saveable_multiple(name)
    if not need or n_keep % need == 0:
        return None
    return (
        f"A pruned {name} folder needs a multiple of {need} kept dims (its attention head count), and {n_keep} is not: "
        f"the button below sets the Mask builder's *Kept count a multiple of* to {need}. Evaluating this mask in memory "
        f"works as it is, and the Sweeps page evaluates it as tuned (`diet-explore compare` rounds to {need} by default)."
    )


K_ROUNDED = "_rounded"  # what the round button changed: {"from", "to", "multiple"} kept dims


def saveable_fix(loaded: Loaded, config: MaskConfig, n_keep: int, box, key: str) -> None:
    """``saveable_hint`` in ``box`` (``st.info`` or ``st.warning``) with the fix one click away: a button
    that sets *Kept count a multiple of* to what the model needs (the Mask builder's setting), naming
    the kept count before and after (rounding changes the mask: it is no longer the one evaluated)."""
    import dataclasses

    hint = saveable_hint(loaded.cache, n_keep)
    if hint is None:
        return
    box(hint)
    need = loaders.saveable_multiple(model_name_for(loaded.cache))
    try:
        rounded = loaders.mask_for(loaded.path, loaded.sha, dataclasses.replace(config, multiple_of=need).to_json()).n_keep
    except DietError:  # e.g. the multiple exceeds the hidden size: the page names that when it is set
        rounded = None
    after = f": {n_keep} → {rounded} kept dims" if rounded is not None else ""
    st.button(
        f"Round the kept count to a multiple of {need}{after}",
        key=key,
        on_click=_round_kept_count,
        args=(need, n_keep, rounded),
        help="A different mask: the dims nearest the vote's threshold are added or dropped, so results of the mask "
        "evaluated before rounding no longer apply to it.",
    )


def _round_kept_count(need: int, before: int, after: int | None) -> None:
    reset(S.KEY_MULTIPLE, need)
    st.session_state[K_ROUNDED] = {"from": before, "to": after, "multiple": need}


def rounded_note(config: MaskConfig, n_keep: int) -> None:
    """After the round button: the kept count went from A to B, and this is not the mask evaluated
    before (shown while the rounding is on)."""
    done = st.session_state.get(K_ROUNDED)
    if not done or config.multiple_of != done["multiple"] or done["from"] == n_keep:
        return
    st.warning(
        f"**Rounded: {done['from']} → {n_keep} kept dims** (a multiple of {done['multiple']}). This is not the mask "
        f"evaluated before rounding: evaluate it again on Prune & evaluate before quoting its numbers. Set *Kept count "
        "a multiple of* back to 1 on the Mask builder to return to it."
    )


K_MULTIPLE_MODEL = "_multiple_model"  # the model the kept-count multiple was chosen on


def carry_multiple(cache: ScoreCache) -> None:
    """A kept-count multiple chosen on another model's cache is never carried silently: it becomes the
    new model's head-count multiple when it was the old one's (re-derived), else 1 (any count), with a
    note among the page's warnings. Called once per run, before any settings widget."""
    if not state.has(S.KEY_MULTIPLE):
        return
    m, model = int(get(S.KEY_MULTIPLE)), cache.model_name
    chosen_for = st.session_state.get(K_MULTIPLE_MODEL)
    st.session_state[K_MULTIPLE_MODEL] = model
    if m <= 1 or chosen_for is None or chosen_for == model:
        return
    need = loaders.saveable_multiple(model)
    rederive = bool(need and need > 1 and m == loaders.saveable_multiple(chosen_for))
    new = need if rederive else 1
    reset(S.KEY_MULTIPLE, new)
    st.session_state.pop(K_ROUNDED, None)
    why = (
        f"re-derived as {new}, the attention head count {model} needs to save a pruned folder"
        if rederive
        else "reset to 1 (any count); set it again on the Mask builder if this model needs one"
    )
    st.session_state[state.K_LINK_WARNINGS] = st.session_state.get(state.K_LINK_WARNINGS, []) + [
        f"*Kept count a multiple of* {m} was chosen on a {chosen_for} cache; this cache is {model}: {why}."
    ]


class NotInstalled(DietError):
    """A built-in model whose weights are not installed yet: its hint is the install command."""


def model_problem(name: str) -> DietError | None:
    """Why ``name`` cannot load here, as a ``DietError`` (None: it can): a built-in model's install
    command (``NotInstalled``), a missing folder, a hub id neither reachable nor in the hub cache."""
    from diet_explore.models.builtin import BUILTIN_MODELS, install_command, is_installed

    if name not in BUILTIN_MODELS:
        problem = loaders.model_config_problem(name)
        return DietError(*problem) if problem else None
    if not is_installed(name):
        return NotInstalled(f"the weights of {name!r} are not installed here", f"install them with `{install_command(name)}`")
    return None


def check_model_installed(name: str) -> None:
    """``model_problem`` as an exception (for code paths that must not go on)."""
    problem = model_problem(name)
    if problem is not None:
        raise problem


def show_model_problem(problem: DietError) -> str:
    """An info box with the install command for a model that is only not installed yet (an error box
    for a model that is nowhere); returns the reason the button that needs it is disabled."""
    if isinstance(problem, NotInstalled):
        st.info(f"**{problem.message[0].upper()}{problem.message[1:]}.** {problem.hint[0].upper()}{problem.hint[1:]}.")
    else:
        show_error(problem)
    return f"Disabled: {problem.message}"


def note_metric(where, label: str, value, note: str | None = None, help: str | None = None) -> None:
    """A metric whose small line under the value is a neutral note (a CI, the dense value, the
    target), not a green or red change: ``where`` is ``st`` or a column."""
    where.metric(label, value, delta=note, delta_color="off", delta_arrow="off", help=help)


def estimate_metric(where, label: str, entry: dict | None, metric: str = "main") -> None:
    """A paired-metric entry (``evaluation.metrics``: delta, ci_low, ci_high, n) as a metric: the value
    is ``decision.format_entry``'s "Δ [low, high]" (accuracy in points, log-likelihoods in nats), the
    note under it says the unit and on how many paired examples."""
    entry = entry or {}
    unit = SCALES.get(metric, SCALES["gold_ll_per_char"]).unit.strip()
    n = entry.get("n")
    note = f"{unit}, Δ [95% CI]" + (f", {int(n):,} paired" if n else "") if entry.get("delta") is not None else None
    note_metric(where, label, format_entry(entry, metric), note=note)


def saved_size(path: Path) -> str:
    """A saved file's or folder's size as people read it (KiB below 1 MiB)."""
    from diet_explore.pruning.saving import size_on_disk

    n = path.stat().st_size if path.is_file() else size_on_disk(path)
    return f"{n / 2**20:,.1f} MiB" if n >= 2**20 else f"{n / 2**10:,.1f} KiB"


UPDATING_CSS = """
<style>
/* An update is under way the moment a widget changes. Streamlit marks the old elements stale, but
   shows it only after 0.5 s (then fades them over 1 s), and under load it marks them a frame or a few
   hundred milliseconds after the slider has moved: old numbers stood beside a new slider value as if
   current. Stale or about to be (html.diet-updating, set by UPDATING_JS in the key press itself):
   faded at once, with an "Updating…" badge. */
[data-testid="stElementContainer"][data-stale="true"],
html.diet-updating [data-testid="stMain"] [data-testid="stElementContainer"]:not(:focus-within) {
  opacity: 0.4 !important; transition: opacity 60ms ease-in !important;
}
.stApp:has([data-testid="stElementContainer"][data-stale="true"])::after, html.diet-updating .stApp::after {
  content: "Updating…"; position: fixed; top: 0.55rem; left: 50%; transform: translateX(-50%); z-index: 1000100;
  padding: 0.15rem 0.8rem; border-radius: 1rem; font-size: 0.85rem; pointer-events: none;
  background: #ffbd45; color: #262730; box-shadow: 0 1px 4px rgba(0, 0, 0, 0.2);
}
/* Nothing is cut off on a narrow window (a 1024-px projector, a laptop with the sidebar open): metric
   values and labels, widget labels and button labels wrap instead of ending in "…" ("4…", "Kept di…"). */
[data-testid="stMetric"] *, [data-testid="stWidgetLabel"] *, [data-testid="stMain"] button p {
  white-space: normal !important; text-overflow: clip !important; overflow: visible !important;
  overflow-wrap: break-word;
}
@media (max-width: 1280px) { [data-testid="stMetricValue"] { font-size: 1.5rem !important; } }
@media (max-width: 900px) { [data-testid="stMetricValue"] { font-size: 1.15rem !important; } }
</style>
"""

# Runs in the page (st.html), every animation frame: the page is updating while a settings slider
# shows another value than the one the page was computed with (``rendered_marker``, written at the
# end of each run), from the frame the slider moves until the run with that value is on screen.
# Other widgets (number inputs, toggles) set it from the key press or release itself, until
# Streamlit's stale marks came and have been gone for QUIET ms, or at once when the value did not
# change. Streamlit's own sign came late: it marks elements stale a frame to a few hundred ms after
# the slider moved, shows it after 0.5 s, and looks idle between a run and the rerun queued behind it.
UPDATING_JS = """
<script>
(() => {
  if (window.__dietUpdating) return;
  window.__dietUpdating = true;
  const root = document.documentElement;
  const WIDGETS = '[data-testid="stNumberInput"], [data-testid="stCheckbox"], [data-testid="stToggle"]';
  const KEYS = new Set(["ArrowLeft", "ArrowRight", "ArrowUp", "ArrowDown", "Home", "End", "PageUp", "PageDown", "Enter"]);
  const QUIET = 250;
  const busy = () => document.querySelector('[data-testid="stElementContainer"][data-stale="true"]')
    || document.querySelector('[data-testid="stStatusWidgetRunningIcon"]');
  const mismatch = () => {
    const m = document.querySelector(".diet-rendered");
    if (!m) return false;
    let rendered;
    try { rendered = JSON.parse(m.dataset.values); } catch (e) { return false; }
    for (const input of document.querySelectorAll('[data-testid="stSlider"] input[type="range"]')) {
      const label = input.getAttribute("aria-label");
      if (label in rendered && Math.abs(Number(input.value) - rendered[label]) > 1e-9) return true;
    }
    return false;
  };
  let hook = false, since = 0, seen = false, idleFrom = null, widget = null, before = null;
  const hookDone = (now) => {
    if (busy()) { seen = true; idleFrom = null; return false; }
    if (idleFrom === null) idleFrom = now;
    return seen ? now - idleFrom >= QUIET : now - since > 1500 || (now - since > 150 && widget.innerText === before);
  };
  const frame = () => {
    const now = performance.now();
    if (hook && hookDone(now)) hook = false;
    root.classList.toggle("diet-updating", hook || mismatch());
    requestAnimationFrame(frame);
  };
  requestAnimationFrame(frame);
  const start = (ev) => {
    if (ev.type === "keydown" && !KEYS.has(ev.key)) return;
    const w = ev.target instanceof Element ? ev.target.closest(WIDGETS) : null;
    if (!w) return;
    widget = w; before = w.innerText; since = performance.now(); seen = false; idleFrom = null; hook = true;
    root.classList.add("diet-updating");
  };
  document.addEventListener("keydown", start, true);
  document.addEventListener("pointerup", start, true);
})();
</script>
"""


def updating_sign() -> None:
    """Stale numbers never stand without a sign (UPDATING_CSS, UPDATING_JS); app.py adds both on every
    run (the script, in the sidebar, runs once per page load)."""
    st.markdown(UPDATING_CSS, unsafe_allow_html=True)
    with st.sidebar:
        st.html(UPDATING_JS, unsafe_allow_javascript=True)


def below_subheader(markdown: str) -> str:
    """``markdown`` with its headings moved under a page's subheader (``#`` becomes ``####``): a
    verdict file's own title rendered larger than the page's "Verdict" section."""
    return re.sub(r"^(#{1,3})(?=\s)", lambda m: "#" * min(len(m.group(1)) + 3, 6), markdown, flags=re.M)


# ------------------------------------------------------------------------------------------------
# The Dimension page: opening it from a table row or a typed index, and its ``dim=`` link parameter
# ------------------------------------------------------------------------------------------------
VIEWS_DIR = Path(__file__).resolve().parent / "views"


def view(name: str) -> str:
    """A page script's absolute path: st.Page, st.switch_page and st.page_link resolve a relative one
    against the entry script's folder, which is the checkout's root under `streamlit run app.py`."""
    return str(VIEWS_DIR / name)


DIM_PAGE = view("dimension.py")
DIM_URL_PATH = "dimension"
AGREEMENT_URL_PATH = "agreement"


def page_query_params(page) -> dict[str, str] | None:
    """The page's own URL parameters: the Dimension page's ``dim``, Agreement's open tab (``view``)."""
    path = getattr(page, "url_path", None)
    if path == DIM_URL_PATH and state.has(state.K_DIM):
        return {S.DIM_PARAM: str(int(get(state.K_DIM)))}
    if path == AGREEMENT_URL_PATH and state.has(state.K_VIEW):
        return S.encode_view(get(state.K_VIEW))
    return None


def open_dim(dim: int) -> None:
    """Show ``dim`` on the Dimension page (switches page: nothing after this runs)."""
    reset(state.K_DIM, int(dim))
    st.switch_page(DIM_PAGE)


def dim_table(df, key: str, dim_column: str = "dim", **kwargs) -> None:
    """A table of dims; picking a row opens that dim on the Dimension page."""
    event = st.dataframe(df, key=key, on_select="rerun", selection_mode="single-row", hide_index=True, **kwargs)
    rows = list(getattr(getattr(event, "selection", None), "rows", None) or [])
    if rows and 0 <= rows[0] < len(df):
        open_dim(int(df.iloc[rows[0]][dim_column]))


def dim_jump(cache: ScoreCache, key: str, label: str = "Inspect a dimension") -> None:
    """Type a dim's index and open it on the Dimension page."""
    c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
    # no example index: 507 (SmolLM2's massive dim) was offered for every model, Gemma's is 163
    typed = c1.text_input(label, key=key, placeholder=f"an index from 0 to {cache.hidden_size - 1}")
    if c2.button("Open in Dimension", key=f"{key}_go") and typed.strip():
        try:
            dim = check_dim(typed, cache.hidden_size)
        except DietError as exc:
            show_error(exc)
            return
        open_dim(dim)


# Characters that Streamlit's markdown would read as HTML, formatting or maths inside a context line
_MD_SPECIAL = {c: f"&#{ord(c)};" for c in "\\`*_{}[]()#+-.!|$~<>&\"'"}


def context_html(tokens: list[str], marked: int) -> str:
    """A decoded context as inline HTML for ``st.markdown(unsafe_allow_html=True)``: every character
    that markdown or HTML could read escaped, the activating token (``marked``) highlighted."""
    parts = []
    for i, t in enumerate(tokens):
        shown = "".join(_MD_SPECIAL.get(ch, ch) for ch in display_token(t))
        if i == marked:
            shown = f'<mark style="background:#ffd166;padding:0 2px;border-radius:3px"><b>{shown}</b></mark>'
        parts.append(shown)
    return "".join(parts)
