"""Results: the committed sweeps (``docs/results``) and any sweep folder, as tables and curves, without computing anything."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from diet_explore.experiments.proxy import sweep_sources
from diet_explore.experiments.reports import (
    CURVES,
    curve_figure,
    paper_cells,
    results_frame,
    sweep_name,
    table_frame,
    versus_cells,
)
from diet_explore_app import loaders, state
from diet_explore_app import widgets as ui

K_SWEEP, K_SWEEP_PATH, K_MAIN_CURVE = "rs_sweep", "rs_sweep_path", "rs_main_curve"
OTHER = "Other folder…"
MAIN_CURVES = {"Δ vs dense (paired CI)": "delta_main", "the model's own (unpaired CI)": "main"}


def _rows_height(n: int) -> int:
    """Pixels that show every row of a table (Streamlit's rows are 35 px, plus the header)."""
    return 35 * (n + 1) + 3


def summary_first(columns) -> list[str]:
    """Display order of a results table: sparsity, method, kept, then the summary columns (avg, Δ avg,
    agreement, Δ gold LL, ppl), then one per task: at 1400 px the summary sat off-screen past seven tasks.
    (The library's cells keep the paper's order, tasks first, for the markdown tables.)"""
    columns = list(columns)
    start = next((i for i, c in enumerate(columns) if c.startswith("avg")), len(columns))
    return columns[:3] + columns[start:] + columns[3:start]


st.title("Results")
st.caption(
    "Method × sparsity sweeps (`diet-explore compare`) as committed under `docs/results`, or any sweep folder: "
    "the paper-style table, DIET minus each method paired on the same examples, and the curves. Every delta and "
    "interval is recomputed from the per-example results (Newcombe / Wilson / bootstrap 95% CIs, README 'Metrics')."
)
with ui.shown_errors():
    sources = sweep_sources()
    labels = {sweep_name(p): p for p in sources}
    options = [*labels, OTHER]
    # open on a sweep of the model being explored (compare-<model>...), else the first one
    loaded = ui.loaded()
    model = loaded.cache.model_name if loaded is not None else None
    state.default(K_SWEEP, next((n for n in labels if model and f"-{model}" in n), options[0]))
    state.default(K_SWEEP_PATH, "")
    choice = st.selectbox("Sweep", options, **state.sel_kw(K_SWEEP, options))
    if choice == OTHER:
        typed = st.text_input("Sweep folder (made by `compare --out DIR`) or results file", **state.kw(K_SWEEP_PATH)).strip()
        if not typed:
            st.info("Type the folder of a sweep: its `results.jsonl` grows as the sweep runs, and this page follows it.")
            st.stop()
        path = Path(typed).expanduser()
    else:
        path = labels[choice]
    sweep = loaders.sweep_for(path)
    cfg = sweep.config or {}
    for problem in sweep.problems:  # damaged rows are left out (results.row_problem), never fatal
        st.warning(problem)

    grid = len(cfg.get("methods") or []) * len(cfg.get("sparsities") or [])
    c = st.columns(4)
    c[0].metric("Model", str(cfg.get("model", "?")))
    c[1].metric("Examples per task", str(cfg.get("limit", "?")) + (" (at most)" if cfg.get("clip_limit") else ""))
    c[2].metric("Runs", f"{len(sweep.pruned)}" + (f" / {grid}" if grid else ""))
    c[3].metric("Methods", len(sweep.methods()))
    st.caption(f"From `{ui.display_path(sweep.source)}`." + (f" Cache `{cfg['cache']}`, seed {cfg.get('seed')}." if cfg else ""))
    if grid and len(sweep.pruned) < grid:
        st.info(f"{len(sweep.pruned)} of {grid} runs finished: the sweep is running or was stopped; finished runs show below.")
    if sweep.dense is None:
        st.warning("This results file has no dense row yet, so no paired difference can be shown.")

    if sweep.verdict:
        st.subheader("Verdict")
        st.markdown(ui.below_subheader(sweep.verdict))

    st.subheader("Paper-style table")
    paper = table_frame(*paper_cells(sweep))
    st.dataframe(
        paper, hide_index=True, key="rs_paper", height=_rows_height(len(paper)), column_order=summary_first(paper.columns)
    )
    st.caption(
        "Cells: the task's main metric in % ± stderr. Δ avg: paired difference vs dense with its 95% CI"
        + (
            "; agreement: share of examples where the pruned model picks the dense model's choice; Δ gold LL/char: change of "
            "the correct answer's log-likelihood per character (nats)."
            if sweep.has_examples()
            else ". This file predates per-example log-likelihoods, so it has the main metric only."
        )
    )
    head, versus = versus_cells(sweep)
    if versus:
        st.subheader("DIET minus each method")
        st.dataframe(
            table_frame(head, versus),
            hide_index=True,
            key="rs_versus",
            height=_rows_height(len(versus)),
            column_order=summary_first(head),
        )
        st.caption("Paired on the same examples at the same kept count; points (positive = DIET better), 95% CI.")

    st.subheader("Curves")
    mode = st.radio("Main metric", list(MAIN_CURVES), horizontal=True, **state.sel_kw(K_MAIN_CURVE, MAIN_CURVES))
    st.plotly_chart(curve_figure(sweep, MAIN_CURVES[mode]), key="rs_curve_main")
    if sweep.has_examples():
        st.plotly_chart(curve_figure(sweep, "gold_ll_per_char"), key="rs_curve_gold_ll")
    else:
        st.caption(f"No {CURVES['gold_ll_per_char'][1]} curve: this results file does not keep per-example log-likelihoods.")
    st.plotly_chart(curve_figure(sweep, "ppl"), key="rs_curve_ppl")
    st.caption(
        "Perplexity is one number per model over 32 held-out wiki windows, so it has no interval; "
        "single-task and leave-one-out use one model per task and have none."
    )
    st.download_button(
        "Download the long table (CSV)",
        results_frame(sweep).to_csv(index=False),
        file_name=f"{sweep.name}.csv",
        mime="text/csv",
        key="rs_csv",
    )
