"""History: every stored run (the app's jobs and `compare` sweeps) with the settings that tell them
apart; pick two or more to see them per task side by side and, where they share examples, the
paired difference between them with its CI."""

from __future__ import annotations

import streamlit as st

from diet_explore import plots
from diet_explore.experiments import history as H
from diet_explore_app import loaders
from diet_explore_app import widgets as ui

K_PICK = "hist_pick"

st.title("History")
with ui.shown_errors():
    store = loaders.run_store()
    skipped: list[str] = []
    records = store.records(skipped)  # a damaged run file is skipped and said here
    for line in skipped:
        st.warning(line)
    frame = H.history_frame(records)
    if frame.empty:
        st.caption(f"No runs yet in {ui.display_path(store.root)}: run Prune & evaluate, a Sweep or `diet-explore compare`.")
        st.stop()
    st.markdown(
        f"**{len(frame)} run{'' if len(frame) == 1 else 's'}** in `{ui.display_path(store.root)}`. Columns say what differs: method, site, sparsity, "
        "kept dims, tasks, examples per task (`limit`), τ (`threshold`) and task weights; then the average paired "
        "Δ main metric vs dense with its 95% CI, agreement with the dense model's choices, Δ gold log-likelihood per "
        "character and perplexity."
    )
    st.dataframe(frame, hide_index=True, key="hist_table")
    st.download_button(
        "Download the history as CSV", frame.to_csv(index=False), "diet-explore-runs.csv", "text/csv", key="hist_csv"
    )
    st.plotly_chart(plots.run_history(frame, x="sparsity", y="delta_avg"), key="hist_plot")

    st.subheader("Compare runs")
    by_id = {r["run_id"]: r for r in records}
    labels = {
        row.run_id: f"{row.run_id} · {row.method} @ {row.sparsity:g} · kept {row.n_keep} · {row.limit}/task"
        for row in frame.itertuples()
    }
    picked = st.multiselect(
        "Runs to compare (the first is the reference)",
        list(labels),
        format_func=lambda r: labels[r],
        key=K_PICK,
        max_selections=6,
    )
    if len(picked) < 2:
        st.caption("Pick two or more runs.")
        st.stop()
    chosen = [by_id[r] for r in picked]
    sub = frame.set_index("run_id").loc[picked].reset_index()
    differ = H.differing(sub)
    st.markdown("**What differs:** " + (", ".join(f"`{c}`" for c in differ) if differ else "nothing in the settings columns"))
    st.dataframe(sub[["run_id", *differ]] if differ else sub[["run_id"]], hide_index=True, key="hist_differs")
    st.markdown("**Per task, side by side**: the pruned model's main metric, its agreement with the dense model, Δ gold LL/char")
    side = H.side_by_side(chosen)
    st.dataframe(side, key="hist_side")
    ref = chosen[0]
    for other in chosen[1:]:
        result = H.paired_between(ref, other)
        st.markdown(f"**{other['run_id']} − {ref['run_id']}**, paired on their shared examples")
        if result is None:
            st.caption(
                "Not paired: one of the runs does not keep its examples (made by an older diet-explore) or they share no task."
            )
            continue
        if not any(result["shared"].values()):
            st.caption("Not paired: the two runs share no example (other tasks, limits, seeds or calibration exclusions).")
            continue
        st.dataframe(H.paired_frame(result), key=f"hist_paired_{other['run_id']}")
    st.download_button(
        "Download the comparison as CSV",
        side.to_csv(),
        "diet-explore-comparison.csv",
        "text/csv",
        key="hist_compare_csv",
    )
