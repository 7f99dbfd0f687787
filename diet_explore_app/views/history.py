"""History, the page of runs: every stored run (the app's jobs and `compare` sweeps) named by its
mask label, one run-history line per label (runs of different settings are never joined), and a
candidate run against a reference run, paired on their shared examples and stated in words."""

from __future__ import annotations

import streamlit as st

from diet_explore import plots
from diet_explore.experiments import history as H
from diet_explore.experiments.history import runs_frame
from diet_explore_app import loaders, tables
from diet_explore_app import widgets as ui

K_REF, K_PICK = "hist_ref", "hist_pick"
SETTING_NAMES = {  # history.SETTINGS column -> what a reader calls it
    "source": "made by",
    "model": "model",
    "label": "mask",
    "method": "method",
    "site": "site",
    "target_sparsity": "target sparsity",
    "actual_sparsity": "actual sparsity",
    "n_keep": "kept dims",
    "tasks": "tasks",
    "limit": "examples per task",
    "threshold": "τ",
    "weights": "task weights",
}

st.title("History")
with ui.shown_errors():
    store = loaders.run_store()
    skipped: list[str] = []
    records = store.records(skipped)  # a damaged run file is skipped and said here
    for line in skipped:
        st.warning(line)
    frame = runs_frame(records)
    if frame.empty:
        st.caption(
            f"No runs yet in the run store (`{ui.display_path(store.root)}`): run Prune & evaluate, a Sweep or "
            "`diet-explore compare`, and each run is listed here."
        )
        st.stop()
    st.markdown(
        f"**{len(frame)} run{'' if len(frame) == 1 else 's'}** in `{ui.display_path(store.root)}`, newest first. "
        "Each is named by its mask (method and every setting that differs from the paper default). Main %: the mean over "
        "tasks of the main metric, dense → pruned; Δ: the mean of pruned − dense on the same examples, in points, with its "
        "95% CI; Δ gold LL: the gold answer's log-likelihood per character (nats); PPL: wiki perplexity, dense → pruned."
    )
    st.dataframe(tables.format_history_table(frame), hide_index=True, key="hist_table")
    st.download_button(
        "Download the history as CSV", frame.to_csv(index=False), "diet-explore-runs.csv", "text/csv", key="hist_csv"
    )
    # one line per mask label (and model, tasks and examples per task where runs differ in them): runs
    # built by different rules (τ, weights, site, ...) or scored on other examples are never joined
    # in points, as the table beside it (history.in_points)
    lines = H.in_points(H.with_lines(frame))
    chart = plots.run_history(lines, x="sparsity", y="delta_points", color="line", ci=("ci_low_points", "ci_high_points"))
    ui.chart(chart, "hist_plot")

    st.subheader("Compare runs")
    by_id = {r["run_id"]: r for r in records}
    headings = {r: H.run_heading(by_id[r]) + f" · {by_id[r].get('limit')}/task" for r in frame["run_id"]}
    reference = st.selectbox("Reference run", list(headings), format_func=lambda r: headings[r], key=K_REF)
    selected = st.multiselect(
        "Candidate runs (each is compared as candidate − reference)",
        list(headings),
        format_func=lambda r: headings[r],
        key=K_PICK,
        max_selections=5,
    )
    picked = [r for r in selected if r != reference]  # the reference against itself says nothing
    if not picked:
        st.caption("Pick one or more candidate runs.")
        st.stop()
    chosen = [by_id[reference], *(by_id[r] for r in picked)]
    sub = frame.set_index("run_id").loc[[reference, *picked]].reset_index()
    differ = H.differing(sub)
    st.markdown(
        "**What differs:** " + (", ".join(SETTING_NAMES.get(c, c) for c in differ) if differ else "nothing in the settings")
    )
    if differ:
        shown = sub[["label", *[c for c in differ if c != "label"]]].rename(columns=SETTING_NAMES)
        for c in ("τ", "task weights", "site"):  # blank there: a setting the run's method ignores (history.run_settings)
            if c in shown:
                shown[c] = shown[c].astype(object).where(shown[c].notna(), "not read")
        st.dataframe(shown, hide_index=True, key="hist_differs")
    for run_id in picked:
        candidate = by_id[run_id]
        result = H.compare_runs(candidate, by_id[reference])
        st.markdown(f"**{H.run_heading(candidate)} − {H.run_heading(by_id[reference])}**, paired on their shared examples")
        if result is None:
            st.caption(
                "Not paired: one of the runs does not keep its examples (made by an older diet-explore) or they share no task."
            )
            continue
        if not any(result["shared"].values()):
            st.caption("Not paired: the two runs share no example (other tasks, limits, seeds or calibration exclusions).")
            continue
        for line in result["sentences"]:
            st.markdown(line)
        st.dataframe(H.paired_frame(result), key=f"hist_paired_{run_id}")
    st.markdown(
        "**Per task, side by side**: the pruned model's main metric and its agreement with the dense model (%), "
        "Δ gold LL/char vs dense (nats)"
    )
    side = H.side_by_side(chosen)
    st.dataframe(H.side_by_side_text(side), key="hist_side")  # printed by the one number rule; the CSV keeps full precision
    st.download_button(
        "Download the comparison as CSV",
        side.to_csv(),
        "diet-explore-comparison.csv",
        "text/csv",
        key="hist_compare_csv",
    )
