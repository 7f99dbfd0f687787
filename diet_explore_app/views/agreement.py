"""Agreement: how much the tasks agree on which dims to prune, at the chosen sparsity."""

from __future__ import annotations

import numpy as np
import streamlit as st

from diet_explore import plots
from diet_explore.core.errors import DietError
from diet_explore_app import loaders, state
from diet_explore_app import widgets as ui

st.title("Agreement")
with ui.shown_errors():
    loaded = ui.require_cache()
    cache = loaded.cache
    sparsity = ui.sparsity_slider()
    site, agg, last_k = ui.score_controls(cache)
    tasks = state.voting_tasks(cache)
    if not tasks:
        raise DietError(
            "every task has weight 0, so there is nothing to compare", "raise a task's weight on the Mask builder page"
        )
    report = loaders.agreement_for(loaded.path, loaded.sha, float(sparsity), tuple(tasks), site, agg, last_k)
    t = len(tasks)
    jac = report.jaccard.to_numpy()
    off = jac[~np.eye(t, dtype=bool)]
    votes = report.vote_counts
    c = st.columns(4)
    c[0].metric("Pruned per task", int(report.prune[0].sum()))
    c[1].metric("Mean pairwise Jaccard", f"{off.mean():.3f}" if off.size else "n/a")
    c[2].metric("Pruned by every task", int((votes == t).sum()))
    c[3].metric("Pruned by at least half", int((votes >= t / 2).sum()))
    st.caption(
        f"Tasks compared (weight > 0): {', '.join(tasks)}. Each prunes its own lowest-scoring "
        f"{int(report.prune[0].sum())} of {cache.hidden_size} dims."
    )

    st.plotly_chart(plots.jaccard_heatmap(jac, tasks, report.sparsity), key="agree_jaccard")
    left, right = st.columns(2)
    with left:
        st.plotly_chart(plots.vote_histogram(votes, t), key="agree_vote_hist")
    with right:
        st.plotly_chart(plots.vote_matrix(report.prune, tasks), key="agree_vote_matrix")
    if not report.upset.empty:
        st.plotly_chart(plots.upset_bars(report.upset, tasks), key="agree_upset")

    st.subheader("Where tasks disagree")
    config = state.current_config(cache)
    split = loaders.split_votes_for(loaded.path, loaded.sha, config.to_json(), 20)
    st.caption(
        "The dims kept by about half of the voting weight (closest to one half first, then the widest spread of "
        "per-task ranks), with each task's score. Pick a row to read why on the Dimension page."
    )
    ui.dim_table(split, key="agree_split")
    ui.dim_jump(cache, key="agree_jump")
