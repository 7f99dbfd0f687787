"""Sweeps, the one page for method × sparsity sweeps: run one as a background job (``compare``,
with the Mask builder's mask settings, dense results reused), watch it, and browse every sweep
(committed under docs/results, run in the app, or any folder) as tables, the decision in words and
curves. Runs that finish also go to the run store (the History page)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from diet_explore.core.errors import DietError
from diet_explore.experiments.executors import executor_setting, queue_sweep, ray_missing
from diet_explore.experiments.reports import as_sweep, curve_figure, curve_frame
from diet_explore.experiments.results import METHODS, read_results
from diet_explore.experiments.sweep import CompareConfig, compare_mask
from diet_explore.masking.build import MaskConfig
from diet_explore_app import jobs_ui, state, sweeps
from diet_explore_app import widgets as ui

K_METHODS, K_SPARSITIES, K_LIMIT, K_TASKS, K_PPL, K_PPL_WINDOWS, K_RUN = (
    "sw_methods",
    "sw_sparsities",
    "sw_limit",
    "sw_tasks",
    "sw_ppl",
    "sw_ppl_windows",
    "sw_run",
)
K_EXECUTOR, K_WORKERS = "sw_executor", "sw_workers"
K_WATCH = "_sw_job"
RUN_ON = {"local": "Local process", "ray": "Ray actors"}  # the executors a sweep can run on (executors.EXECUTORS)
SPARSITY_CHOICES = [round(0.05 * i, 2) for i in range(1, 19)]  # 0.05 … 0.9, the Mask builder's range
CURVES = ("main", "gold_ll_per_char", "ppl")
# What a new form starts from: the Prune & evaluate page's evaluation settings (so a sweep after a
# job scores the same examples with the same settings, and reuses its dense results)
PE_LIMIT, PE_PPL, PE_PPL_WINDOWS = "pe_limit", "pe_ppl", "pe_ppl_windows"


def render_sweep(job: dict[str, Any]) -> None:
    """The watched sweep job's finished runs as curves: only curves that have points."""
    rows = read_results(jobs_ui.store().folder(job["job_id"]) / "sweep")
    finished = len([r for r in rows if r.get("method") != "dense"])
    if not finished:
        st.caption("No run finished yet: the curves appear as each method × sparsity finishes.")
        return
    if job["status"] != "done":
        st.caption(f"{finished} pruned run(s) finished so far besides the dense model (partial).")
    sweep = as_sweep(rows)
    for curve in CURVES:
        if not curve_frame(sweep, curve).empty:  # never an empty "no points" chart
            ui.chart(curve_figure(sweep, curve), f"sw_curve_{curve}")
    st.caption("The full tables and the decision in words: pick this sweep under Sweep results below.")


def _mask_label(config: dict[str, Any]) -> str | None:
    try:
        return MaskConfig.from_dict(config["mask"]).label() if isinstance(config.get("mask"), dict) else None
    except DietError:
        return None


def sweep_form(loaded, shown: dict[str, Any] | None) -> None:
    """The form, started from the sweep job shown below (after a reload it matches that job), else
    from the Prune & evaluate page's settings; the mask settings are the Mask builder's."""
    cache = loaded.cache
    job_cfg = (shown or {}).get("config") or {}
    tuned, result = ui.current_mask(loaded)  # the Mask builder's mask and what it keeps (its own memo)
    # the DIET run of every sweep starts from the Mask builder's sparsity too, so its count is there to compare
    sparsities = sorted({0.1, 0.2} | ({round(tuned.sparsity, 2)} & set(SPARSITY_CHOICES)))
    state.default(K_METHODS, [m for m in job_cfg.get("methods", ["diet", "random", "magnitude", "wiki"]) if m in METHODS])
    state.default(K_SPARSITIES, [s for s in job_cfg.get("sparsities", sparsities) if s in SPARSITY_CHOICES] or sparsities)
    state.default(K_LIMIT, int(job_cfg.get("limit", state.get(PE_LIMIT, 20))))
    state.default(K_PPL, bool(job_cfg.get("perplexity", state.get(PE_PPL, True))))
    state.default(K_PPL_WINDOWS, int(job_cfg.get("ppl_windows", state.get(PE_PPL_WINDOWS, 16))))
    job_tasks = [t for t in job_cfg.get("tasks") or [] if t in cache.task_names] if isinstance(job_cfg.get("tasks"), list) else []
    state.default(K_TASKS, job_tasks or list(cache.task_names))
    if not set(state.get(K_TASKS)) <= set(cache.task_names):
        state.reset(K_TASKS, [t for t in state.get(K_TASKS) if t in cache.task_names] or list(cache.task_names))
    mask = compare_mask(tuned)  # what CompareConfig makes of it: its label is each DIET run's
    counts = (
        "every method keeps the same number of dims at a sparsity"
        if mask.exact
        else "DIET keeps the vote's own count, the other methods the target count (turn on Exact count on the "
        "Mask builder for one count everywhere)"
    )
    kept = (  # the Mask builder's count is the DIET run's only when the Mask builder's method is DIET
        f"At its sparsity {tuned.sparsity:g} the DIET run keeps **{result.n_keep}** of {result.hidden_size} dims, as the "
        "Mask builder shows: every run is evaluated as tuned, never rounded. "
        if tuned.method == "diet"
        else f"The Mask builder's method is {tuned.method}: a sweep runs the methods picked below, and these settings "
        "act on its DIET runs. "
    )
    st.markdown(
        f"Mask settings from the Mask builder: **{mask.label()}** (τ {mask.threshold:g}"
        + (", weights " + ", ".join(f"{t}×{w:g}" for t, w in mask.weights.items()) if mask.weights else "")
        + f"). {kept}Each run sets its own method and sparsity; {counts}; all on the same held-out examples; the dense "
        "model's results are reused when an earlier run has them."
    )
    ran = _mask_label(job_cfg)
    if ran and ran != mask.label():
        st.caption(f"The sweep shown below ran with other mask settings: {ran}.")
    c1, c2 = st.columns(2)
    c1.multiselect("Methods", list(METHODS), **state.multi_kw(K_METHODS))
    c2.multiselect("Sparsities", SPARSITY_CHOICES, **state.multi_kw(K_SPARSITIES))
    st.multiselect("Tasks", list(cache.task_names), **state.multi_kw(K_TASKS))  # full width: 2/3 cut the 7th off
    c3, c4, c5 = st.columns([1, 1, 1], vertical_alignment="bottom")
    c3.number_input("Held-out examples per task", 1, 2000, step=5, **state.kw(K_LIMIT))
    c4.toggle("Wiki perplexity", **state.kw(K_PPL))
    c5.number_input("Perplexity windows (128 tokens)", 1, 512, step=4, **state.kw(K_PPL_WINDOWS), disabled=not state.get(K_PPL))
    name = ui.model_name_for(cache)
    st.caption(f"Model: `{name}` (the Prune & evaluate page's model field).")
    problem = ui.model_problem(name)  # e.g. weights not installed: an info box, and the button says why it is off
    if problem is None or isinstance(problem, ui.NotInstalled):
        reason = ui.show_model_problem(problem) if problem else None
    else:  # a model that is nowhere: the sweeps below still show, so a warning rather than a page error
        reason = f"{problem.message} ({problem.hint})"
        st.warning(f"No sweep can run with this model: {reason}.")
    executor, workers = run_on()
    # no worker warmed here: this page is also where sweeps are only read, and Run sweep starts one
    jobs_store = jobs_ui.store()
    if st.button(
        "Run sweep",
        key=K_RUN,
        type="primary",
        disabled=reason is not None,
        help=reason or "runs in the background: you can switch pages",
    ):
        if not state.get(K_METHODS) or not state.get(K_SPARSITIES) or not state.get(K_TASKS):
            raise DietError("no method, sparsity or task selected", "pick at least one of each")
        config = CompareConfig(
            model=name,
            cache=loaded.path,
            mask=mask,
            # the tuned counts, never rounded to the model's head multiple: a sweep evaluates in memory and
            # saves nothing, so its DIET run keeps what the Mask builder, Prune & evaluate and Export show
            round_to_model=False,
            sparsities=sorted(float(s) for s in state.get(K_SPARSITIES)),
            methods=list(state.get(K_METHODS)),
            tasks=list(state.get(K_TASKS)),
            limit=int(state.get(K_LIMIT)),
            perplexity=bool(state.get(K_PPL)),
            ppl_windows=int(state.get(K_PPL_WINDOWS)),
        )
        label = (
            f"{', '.join(config.methods)} × {', '.join(f'{s:g}' for s in config.sparsities)}, "
            f"{len(config.tasks)} tasks × {config.limit}, mask {mask.label()}"
        )
        jobs_ui.watch(*queue_sweep(jobs_store, config, label, executor, workers), K_WATCH)


def run_on() -> tuple[str, int]:
    """Where Run sweep runs (the executor and its workers): starts at ``diet-explore app --executor
    --workers``; Ray is greyed out, with the install command, where it is not installed."""
    try:
        launch, launch_workers = executor_setting()
    except DietError:  # a bad DIET_EXPLORE_EXECUTOR: Run sweep says so, with the fix (queue_sweep starts the worker)
        launch, launch_workers = "local", 1
    missing = ray_missing()
    state.default(K_EXECUTOR, launch if missing is None else "local")
    state.default(K_WORKERS, launch_workers)
    c1, c2 = st.columns([2, 1], vertical_alignment="bottom")
    c1.radio(
        "Run on",
        list(RUN_ON),
        format_func=RUN_ON.get,
        horizontal=True,
        disabled=missing is not None,
        help=missing or "Ray: one job per method × sparsity, on that many actors (one per GPU), the dense model scored once",
        **state.sel_kw(K_EXECUTOR, RUN_ON),
    )
    on_ray = missing is None and state.get(K_EXECUTOR) == "ray"
    c2.number_input("Ray workers", 1, 256, step=1, disabled=not on_ray, **state.kw(K_WORKERS))
    if missing:
        st.caption(f"Ray is greyed out: {missing}.")
    return ("ray", int(state.get(K_WORKERS))) if on_ray else ("local", 1)


st.title("Sweeps")
with ui.shown_errors():
    jobs_store = jobs_ui.store()
    found, _ = jobs_ui.list_jobs(jobs_store)
    shown = jobs_ui.pick(found, "sweep", st.session_state.get(K_WATCH))
    st.subheader("Run a sweep")
    loaded = ui.loaded()
    if loaded is None:
        st.caption("Load a score cache to run a sweep; the sweeps below need none.")
    else:
        with ui.shown_errors():
            sweep_form(loaded, shown)
    jobs_ui.job_panel(jobs_store, "sweep", K_WATCH, render_sweep)
    jobs_ui.all_jobs(jobs_store)

    st.subheader("Sweep results")
    st.caption(
        "Committed sweeps (`docs/results`), sweeps run here, or any folder made by `diet-explore compare --out DIR`: "
        "every delta and interval is recomputed from the per-example results (Newcombe / Wilson / bootstrap 95% CIs)."
    )
    labels = sweeps.sweep_choices()
    options = [*labels, sweeps.OTHER]
    # open on a sweep of the model being explored (compare-<model>...), else the first one
    model = loaded.cache.model_name if loaded is not None else None
    state.default(sweeps.K_SWEEP, next((n for n in labels if model and f"-{model}" in n), options[0]))
    state.default(sweeps.K_SWEEP_PATH, "")
    choice = st.selectbox("Sweep", options, **state.sel_kw(sweeps.K_SWEEP, options))
    if choice == sweeps.OTHER:
        typed = st.text_input(
            "Sweep folder (made by `compare --out DIR`) or results file", **state.kw(sweeps.K_SWEEP_PATH)
        ).strip()
        if not typed:
            st.info("Type the folder of a sweep: its `results.jsonl` grows as the sweep runs, and this page follows it.")
            st.stop()
        path = Path(typed).expanduser()
    else:
        path = labels[choice]
    running = any(
        j["type"] == "sweep" and j["status"] in ("running", "queued") and jobs_store.folder(j["job_id"]) / "sweep" == path
        for j in found
    )
    sweeps.show_sweep(path, running=running)
