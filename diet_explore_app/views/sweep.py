"""Sweep: masking methods × sparsities as one background job (``compare``, dense results reused),
drawn as main metric, Δ gold log-likelihood and perplexity vs sparsity, one line per method with
CI bands. Runs that finish go to the run store (the History page) as they finish."""

from __future__ import annotations

from typing import Any

import streamlit as st

from diet_explore.core.errors import DietError
from diet_explore.experiments.reports import as_sweep, curve_figure, markdown_table
from diet_explore.experiments.results import METHODS, read_results
from diet_explore.experiments.sweep import CompareConfig
from diet_explore_app import jobs_ui, state
from diet_explore_app import widgets as ui

K_METHODS, K_SPARSITIES, K_LIMIT, K_TASKS, K_PPL, K_RUN = (
    "sw_methods",
    "sw_sparsities",
    "sw_limit",
    "sw_tasks",
    "sw_ppl",
    "sw_run",
)
K_WATCH = "_sw_job"
SPARSITY_CHOICES = [round(0.05 * i, 2) for i in range(1, 19)]  # 0.05 … 0.9, the Mask builder's range
CURVES = ("main", "gold_ll_per_char", "ppl")


def render_sweep(job: dict[str, Any]) -> None:
    rows = read_results(jobs_ui.store().folder(job["job_id"]) / "sweep")
    if not rows:
        st.caption("No run finished yet: the curves appear as each method × sparsity finishes.")
        return
    if job["status"] != "done":
        st.caption(
            f"{len(rows) - 1 if any(r['method'] == 'dense' for r in rows) else len(rows)} run(s) finished so far (partial)."
        )
    sweep = as_sweep(rows)
    for curve in CURVES:
        st.plotly_chart(curve_figure(sweep, curve), key=f"sw_curve_{curve}")
    with st.expander("Table (paper style)", expanded=False):
        st.markdown(markdown_table(sweep))


st.title("Sweep")
with ui.shown_errors():
    loaded = ui.require_cache()
    cache = loaded.cache
    state.default(K_METHODS, ["diet", "random", "magnitude", "wiki"])
    state.default(K_SPARSITIES, [0.1, 0.2])
    state.default(K_LIMIT, 20)
    state.default(K_PPL, True)
    state.follow(K_TASKS, list(cache.task_names))
    if not set(state.get(K_TASKS)) <= set(cache.task_names):
        state.reset(K_TASKS, [t for t in state.get(K_TASKS) if t in cache.task_names] or list(cache.task_names))
    st.markdown(
        "Every method keeps the same number of dims at each sparsity (a multiple of what the model needs to save), "
        "on the same held-out examples; the dense model's results are reused when an earlier run has them."
    )
    c1, c2 = st.columns(2)
    c1.multiselect("Methods", list(METHODS), **state.multi_kw(K_METHODS))
    c2.multiselect("Sparsities", SPARSITY_CHOICES, **state.multi_kw(K_SPARSITIES))
    st.multiselect("Tasks", list(cache.task_names), **state.multi_kw(K_TASKS))  # full width: 2/3 cut the 7th off
    c3, c4 = st.columns([1, 2], vertical_alignment="bottom")
    c3.number_input("Held-out examples per task", 1, 2000, step=5, **state.kw(K_LIMIT))
    c4.toggle("Wiki perplexity", **state.kw(K_PPL))
    name = ui.model_name_for(cache)
    st.caption(f"Model: `{name}` (the Prune & evaluate page's model field).")
    ui.check_model_installed(name)
    jobs_store = jobs_ui.store()
    jobs_ui.warm_worker(jobs_store, name)

    if st.button("Run sweep", key=K_RUN, type="primary", help="runs in the background: you can switch pages"):
        if not state.get(K_METHODS) or not state.get(K_SPARSITIES) or not state.get(K_TASKS):
            raise DietError("no method, sparsity or task selected", "pick at least one of each")
        config = CompareConfig(
            model=name,
            cache=loaded.path,
            sparsities=sorted(float(s) for s in state.get(K_SPARSITIES)),
            methods=list(state.get(K_METHODS)),
            tasks=list(state.get(K_TASKS)),
            limit=int(state.get(K_LIMIT)),
            perplexity=bool(state.get(K_PPL)),
        )
        label = (
            f"{', '.join(config.methods)} × {', '.join(f'{s:g}' for s in config.sparsities)}, "
            f"{len(config.tasks)} tasks × {config.limit}"
        )
        jobs_ui.submit(jobs_store, "sweep", config.to_dict(), label, K_WATCH)

    jobs_ui.job_panel(jobs_store, "sweep", K_WATCH, render_sweep)
    jobs_ui.all_jobs(jobs_store)
