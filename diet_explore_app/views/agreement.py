"""Agreement: how much the tasks agree on which dims to prune, at the chosen sparsity."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from diet_explore.core.errors import DietError
from diet_explore_app import loaders, state
from diet_explore_app import settings as S
from diet_explore_app import widgets as ui

K_FIT = "agree_fit_colours"
K_VIEW = state.K_VIEW
VIEWS = tuple(S.AGREEMENT_VIEWS.values())  # one tab each; the link names the open one (view=)


NOTHING_PRUNED = "No dim is pruned at this sparsity, so there is nothing to compare: raise the sparsity above 0."


def show_view(view: str, key: tuple, config_json: str, pruned: int) -> None:
    """One of the page's figures: the open tab's (``view``, a key of ``settings.AGREEMENT_VIEWS``);
    ``pruned``: dims each task prunes (0: the overlap of empty sets says nothing, so no figure)."""
    if view in ("overlap", "intersections") and pruned == 0:
        st.caption(NOTHING_PRUNED)
    elif view == "overlap":
        fit = ui.colour_range_toggle(K_FIT)
        ui.heat_table(loaders.jaccard_table(*key, fit))
        st.caption(ui.HELP["jaccard"])
    elif view == "votes":
        ui.chart(loaders.vote_histogram_figure(key[0], key[1], config_json), "agree_vote_hist")
        st.caption(
            "How many dims got k prune votes (k of the voting tasks put the dim in their own lowest-scoring set), "
            "each bar split by what the current mask (the Mask builder's) does with them: with task weights, an "
            "exact count or a rounded count, dims with the same number of votes can go either way."
        )
    elif view == "matrix":
        ui.chart(loaders.vote_matrix_figure(*key), "agree_vote_matrix")
        st.caption("Every dim (row, most prune votes first) against every task (column): red where the task prunes it.")
    else:
        upset = loaders.upset_figure(*key)
        if upset is None:
            st.caption(NOTHING_PRUNED)
        else:
            ui.chart(upset, "agree_upset")
            st.caption(ui.HELP["upset"])


def split_display(split: pd.DataFrame) -> pd.DataFrame:
    """``masking.dims.split_votes`` as a table that fits the page: each task's score marked with its
    vote (✓ keeps, ✗ prunes) in place of the two long "kept by" / "pruned by" name lists."""
    shown = split.drop(columns=["kept by", "pruned by"])
    tasks = list(split.columns[list(split.columns).index("mask") + 1 :])
    kept = [set(k.split(", ")) if k else set() for k in split["kept by"]]
    for t in tasks:
        shown[t] = [f"{'✓' if t in k else '✗'} {v:.3f}" for k, v in zip(kept, split[t], strict=True)]
    return shown


st.title("Agreement")
with ui.shown_errors():
    loaded = ui.require_cache()
    cache = loaded.cache
    ui.vote_settings(cache)
    site, agg, last_k = ui.score_controls(cache)
    config = state.current_config(cache)
    sparsity, tau = config.sparsity, config.threshold
    vote = loaders.vote_view_for(loaded.path, loaded.sha, config.to_json())  # the vote exactly as the mask is built
    tasks = vote.tasks
    if not tasks:
        raise DietError("every task has weight 0, so there is nothing to compare", "raise a task's weight above 0")
    report = loaders.agreement_for(loaded.path, loaded.sha, sparsity, tuple(tasks), site, agg, last_k)
    t = len(tasks)
    jac = report.jaccard.to_numpy()
    off = jac[~np.eye(t, dtype=bool)]
    pruned = int(report.prune[0].sum())
    st.markdown(f"Mask **{config.label()}**: kept {vote.n_keep} of {vote.hidden_size} hidden dims")  # as every page names it
    c = st.columns(4)
    c[0].metric("Pruned per task", pruned, help=ui.HELP["sparsity"])
    # two empty pruned sets are identical (Jaccard 1) by the library's rule, which says nothing here
    c[1].metric("Mean pairwise Jaccard", f"{off.mean():.3f}" if off.size and pruned else "n/a", help=ui.HELP["jaccard"])
    c[2].metric("Pruned by every task", int((vote.prune_votes == t).sum()))
    c[3].metric(
        f"Pruned by the vote at τ = {tau:g}" if vote.reads_threshold else f"Pruned by the {config.method} mask",
        vote.n_pruned,
        help=f"What the current mask ({config.label()}) prunes, as the Mask builder builds it: the task weights, τ, "
        "an exact count and a rounded count all count. " + ui.HELP["tau"],
    )
    st.caption(
        f"Tasks compared (weight > 0): {', '.join(tasks)}. Each prunes its own lowest-scoring "
        f"{int(report.prune[0].sum())} of {cache.hidden_size} dims."
    )

    # one view at a time (lazy tabs: only the open tab's figure is built, sent and drawn, so a sparsity
    # move redraws one plotly figure, not four: 603 -> 268-309 ms in benchmarks/bench_browser.py)
    key = (loaded.path, loaded.sha, sparsity, tuple(tasks), site, agg, last_k)
    label, tab = ui.open_tab(K_VIEW, VIEWS)
    with tab:
        show_view(S.view_key(label), key, config.to_json(), pruned)

    st.subheader("Where tasks disagree")
    if not pruned:
        st.caption(NOTHING_PRUNED)
    else:
        split = loaders.split_votes_for(loaded.path, loaded.sha, config.to_json(), 20)
        st.caption(
            "The dims kept by about half of the voting weight (closest to one half first, then the widest spread of "
            "per-task ranks), with each task's score: ✓ the task keeps the dim at this sparsity, ✗ it prunes it. "
            "Pick a row to read why on the Dimension page."
        )
        ui.dim_table(split_display(split), key="agree_split")
    ui.dim_jump(cache, key="agree_jump")
