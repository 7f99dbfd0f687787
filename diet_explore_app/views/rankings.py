"""Rankings: how each task scores the hidden dims, and where in depth a dim is active."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from diet_explore.core.config import parse_int
from diet_explore.core.errors import DietError
from diet_explore.masking.massive import MASSIVE_FACTOR
from diet_explore.masking.selection import keep_count, rank_dims
from diet_explore_app import loaders, state
from diet_explore_app import settings as S
from diet_explore_app import widgets as ui

K_TASK, K_TOP_N, K_DIMS, K_FIT = "rank_task", "rank_top_n", "rank_dims", "rank_fit_colours"
K_PER_DIM = "rank_heat_per_dim"  # the layer heatmap: each dim on its own colour scale
K_VIEW = "rank_view"  # the open tab, remembered in the session
# the first view is a table, so a pasted link opens without plotly's script (``plots.task_heat_table``)
VIEWS = ("Task correlation", "Sorted scores", "Score distributions")
K_DIM_VIEW = "rank_dim_view"  # the open tab below the figure: the task's dims as tables, or by layer
DIM_VIEWS = ("Top and bottom dims", "Score by layer")


def parse_dims(text: str, hidden_size: int) -> list[int]:
    dims = []
    for item in text.replace(" ", ",").split(","):
        if not item:
            continue
        value = parse_int(item)  # ASCII digits: isdigit() took "²", which int() then refused
        if value is None or not 0 <= value < hidden_size:
            raise DietError(
                f"dimension {item!r} is not an index in 0..{hidden_size - 1}",
                "type comma-separated dimension indices, e.g. 12, 407",
            )
        dims.append(value)
    return list(dict.fromkeys(dims))


@st.fragment
def dim_tables(loaded, tasks: list[str], scores: dict, site: str) -> None:
    """One task's top and bottom dims, or where in depth its dims are active (the layer heatmap): their
    own widgets (task, table size, dims, tab) rerun only this part of the page, not the figure above.
    One view at a time (lazy tabs): a pasted link draws one plotly figure, not two (0.6-0.8 s less
    to a fully rendered page on a busy machine)."""
    cache = loaded.cache
    with ui.shown_errors():
        state.default(K_TASK, cache.task_names[0])
        state.default(K_TOP_N, 10)
        state.default(K_DIMS, "")
        c1, c2 = st.columns(2)
        task = c1.selectbox("Task", tasks, **state.sel_kw(K_TASK, tasks))
        top_n = int(c2.number_input("Dims in the tables", 1, 200, step=1, **state.kw(K_TOP_N)))
        s = scores[task]
        order = rank_dims(s)
        label, tab = ui.open_tab(K_DIM_VIEW, DIM_VIEWS)
        with tab:
            if label == DIM_VIEWS[0]:
                top_bottom(loaded, s, order, task, top_n)
            else:
                layer_heatmap(loaded, task, site, order, top_n)
        ui.dim_jump(cache, key="rank_jump")


def top_bottom(loaded, s: np.ndarray, order: np.ndarray, task: str, top_n: int) -> None:
    """The ``top_n`` highest and lowest scoring dims of ``task``, with what the current mask does with them."""
    cache = loaded.cache
    config = state.current_config(cache)  # the Mask builder's settings (an error box when every weight is 0)
    site, agg, last_k = config.site, config.layer_agg, config.last_k
    vote = loaders.vote_view_for(loaded.path, loaded.sha, config.to_json())  # the vote exactly as the mask is built
    share, kept = vote.share, vote.keep
    massive = loaders.massive_for(loaded.path, loaded.sha, site, agg, last_k)

    def table(idx: np.ndarray, start_rank: int) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "rank": np.arange(start_rank, start_rank + idx.size),
                "dim": idx,
                "score": np.round(s[idx], 5),
                "task weight keeping it": np.round(share[idx], 3),
                f"kept by the mask ({vote.config.label()})": kept[idx],
                ui.RATIO_ACROSS_TASKS: np.round(massive.ratio[idx], 2),
                "massive": massive.flagged[idx],
            }
        )

    st.caption(
        "*task weight keeping it*: the share of the total task weight whose tasks keep the dim at this sparsity "
        "(a weight-0 task counts for nothing); the vote keeps a dim when that share reaches τ. *kept by the mask*: "
        "what the current mask (the Mask builder's) does with it, exact count and rounding included."
    )
    flagged = ", ".join(map(str, massive.dims)) or "none"
    st.markdown(
        f"**Massive-activation dims**: {flagged} (score ≥ {MASSIVE_FACTOR:g}× the median dim's, in the median task; "
        "“× median dim” below). Pick a table row to open that dim on the Dimension page."
    )
    # one above the other: side by side, seven columns each scrolled sideways
    st.markdown(f"**Top {top_n}** ({task})")
    ui.dim_table(table(order[:top_n], 1), key="rank_top_table")
    st.markdown(f"**Bottom {top_n}** ({task})")
    ui.dim_table(table(order[-top_n:], cache.hidden_size - order[-top_n:].size + 1), key="rank_bottom_table")


def layer_heatmap(loaded, task: str, site: str, order: np.ndarray, top_n: int) -> None:
    """Score by layer of the typed dims (empty: the task's top ``top_n``, at most 40)."""
    cache = loaded.cache
    st.text_input(
        "Dimensions for the layer heatmap (empty: this task's top dims)", **state.kw(K_DIMS), placeholder="e.g. 12, 407, 530"
    )
    dims = parse_dims(state.get(K_DIMS), cache.hidden_size) or order[: min(top_n, 40)].tolist()
    if task not in cache.tasks:
        return
    state.default(K_PER_DIM, True)
    per_dim = st.toggle(
        "Scale each dim to its own peak",
        help="On: each column's colours span that dim's own layers, so where in depth it is active shows even "
        "beside a massive dim 100× larger. Off: one colour scale of raw scores for all columns.",
        **state.kw(K_PER_DIM),
    )
    dims_key = tuple(int(d) for d in dims)
    heat = loaders.layer_heatmap_figure(loaded.path, loaded.sha, task, site, dims_key, per_dim)
    ui.chart(heat, "rank_layer_heatmap")


st.title("Rankings")
with ui.shown_errors():
    loaded = ui.require_cache()
    cache, pre = loaded.cache, loaded.pre
    tasks = list(cache.tasks)  # evaluation tasks and generic text
    ui.vote_settings(cache)
    site, agg, last_k = ui.score_controls(cache)
    try:
        config = state.current_config(cache)  # the Mask builder's settings
    except DietError:  # every weight 0: the dim tables below say so; the scores above do not need a mask
        config = None
    if config is not None:
        vote = loaders.vote_view_for(loaded.path, loaded.sha, config.to_json())  # the vote exactly as the mask is built
        st.markdown(f"Mask **{config.label()}**: kept {vote.n_keep} of {vote.hidden_size} hidden dims")  # as every page names it
    sparsity = float(state.get(S.KEY_SPARSITY))
    scores = loaders.task_scores(loaded.path, loaded.sha, site, agg, last_k)  # (D,) each
    n_keep = keep_count(cache.hidden_size, sparsity)

    # one view at a time (lazy tabs, as on Agreement: only the open tab's table or figure is built, sent and drawn)
    label, tab = ui.open_tab(K_VIEW, VIEWS)
    with tab:
        if label == VIEWS[0]:
            fit = ui.colour_range_toggle(K_FIT)
            ui.heat_table(loaders.correlation_table(loaded.path, loaded.sha, tuple(tasks), site, agg, last_k, fit))
            st.caption("How alike two tasks rank the hidden dims: Spearman's ρ between their dim scores (1: the same order).")
        elif label == VIEWS[1]:
            curves = loaders.score_curves_figure(loaded.path, loaded.sha, site, agg, last_k, n_keep)
            ui.chart(curves, "rank_curves")
            st.caption(f"Dashed line: the {n_keep} dims each task keeps at sparsity {sparsity:.2f}.")
        else:
            dists = loaders.score_distributions_figure(loaded.path, loaded.sha, site, agg, last_k)
            ui.chart(dists, "rank_distributions")

    dim_tables(loaded, tasks, scores, site)
