"""One sweep browser for the Sweeps page: committed sweeps (``docs/results``), the sweeps run in the
app (job folders) and any typed folder in one list, each shown as tables, the decision in words,
and curves, computed from the per-example results (never re-derived here)."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from diet_explore.evaluation.decision import decision_sentences
from diet_explore.experiments.history import run_label
from diet_explore.experiments.proxy import sweep_sources
from diet_explore.experiments.reports import (
    CURVES,
    curve_figure,
    curve_frame,
    paper_cells,
    results_frame,
    sweep_name,
    table_frame,
    versus_cells,
    versus_note,
)
from diet_explore.experiments.results import RESULTS
from diet_explore_app import jobs_ui, loaders, state
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


def app_sweeps() -> dict[str, Path]:
    """The sweeps run in the app: label -> the job's sweep folder (those with a results file yet)."""
    store = jobs_ui.store()
    found, _ = jobs_ui.list_jobs(store)
    out = {}
    for job in sorted((j for j in found if j["type"] == "sweep"), key=lambda j: j["created"], reverse=True):
        folder = store.folder(job["job_id"]) / "sweep"
        if (folder / RESULTS).is_file():
            out[f"app sweep {job['job_id'].rsplit('-', 1)[-1]}: {job.get('label', '')} ({job['status']})"] = folder
    return out


def sweep_choices() -> dict[str, Path]:
    """Every sweep the page offers: the committed ones (and ``DIET_EXPLORE_SWEEP_DIRS``), then the app's."""
    return {sweep_name(p): p for p in sweep_sources()} | app_sweeps()


def _name(row: dict) -> str:
    """A run as a decision sentence names it: its mask's label (``history.run_label``, what the Mask
    builder and History call the same mask, e.g. "diet τ0.6 boolq×2") and its sparsity."""
    return f"{run_label(row)} at sparsity {row['sparsity']:g}"


def say_versus(sweep, running: bool) -> None:
    """DIET against each other method at each sparsity, in words (``decision.decision_sentences``;
    ``running``: the sweep may still add examples to neither run, but a run it has not finished
    is not in the file, so only a sweep still going says "not decided yet")."""
    for ref, other, paired in sweep.versus():
        tasks = len(paired.get("tasks") or {})
        lines = decision_sentences(paired["average"], candidate=_name(ref), reference=_name(other), running=running, tasks=tasks)
        for line in lines:
            st.markdown(f"- {line}")


def show_sweep(path: Path, running: bool = False) -> None:
    """One sweep: its settings, verdict, paper-style table, DIET minus each method, and the curves
    that have points (no empty chart while a sweep is still running)."""
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
        say_versus(sweep, running)
        st.dataframe(
            table_frame(head, versus),
            hide_index=True,
            key="rs_versus",
            height=_rows_height(len(versus)),
            column_order=summary_first(head),
        )
        st.caption(f"{versus_note(sweep)}; points (positive = DIET better), 95% CI.")

    st.subheader("Curves")
    mode = st.radio("Main metric", list(MAIN_CURVES), horizontal=True, **state.sel_kw(K_MAIN_CURVE, MAIN_CURVES))
    drawn = 0
    for curve, key in ((MAIN_CURVES[mode], "rs_curve_main"), ("gold_ll_per_char", "rs_curve_gold_ll"), ("ppl", "rs_curve_ppl")):
        if curve_frame(sweep, curve).empty:  # no empty "no points" chart: say why instead
            why = "no run has finished yet" if running else "this results file has none"
            st.caption(f"No {CURVES[curve][1]} curve: {why}.")
            continue
        ui.chart(curve_figure(sweep, curve), key)
        drawn += 1
    if drawn:
        st.caption(
            "Perplexity is one number per model over held-out wiki windows, so it has no interval; "
            "single-task and leave-one-out use one model per task and have none."
        )
    st.download_button(
        "Download the long table (CSV)",
        results_frame(sweep).to_csv(index=False),
        file_name=f"{sweep.name}.csv",
        mime="text/csv",
        key="rs_csv",
    )
