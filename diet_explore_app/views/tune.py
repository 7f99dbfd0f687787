"""Tune: an Optuna search over the vote's settings as a background job (``experiments/tune.py``).
Trials stream in as they finish; the best setting is scored once on held-out test examples the
search never saw, against the paper default and the baselines; one click puts it in the Mask
builder (and so in Export and Prune & evaluate)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from diet_explore.core import atomic
from diet_explore.core.errors import DietError
from diet_explore.evaluation.decision import format_entry
from diet_explore.experiments import tune
from diet_explore.experiments.tune_plots import history_figure, importance_figure, parallel_figure, param_title
from diet_explore.masking.build import MaskConfig
from diet_explore_app import jobs_ui, state
from diet_explore_app import settings as S
from diet_explore_app import widgets as ui

K_NAME, K_SPARSITY, K_TRIALS, K_MINUTES, K_LIMIT = "tu_name", "tu_sparsity", "tu_trials", "tu_minutes", "tu_limit"
K_OBJECTIVE, K_PRUNER, K_EXACT, K_FIX, K_RUN = "tu_objective", "tu_pruner", "tu_exact", "tu_fix", "tu_run"
K_WATCH = "_tu_job"
SPARSITY_CHOICES = [round(0.05 * i, 2) for i in range(1, 19)]
FIXABLE = {"τ": "threshold", "task weights": "weights", "site": "site", "layer aggregation": "layer_agg"}
PAGES = {"Mask builder": "mask_builder.py", "Export": "export.py", "Prune & evaluate": "prune_eval.py"}


def fixed_from_builder(choices: list[str], current: MaskConfig, space: dict[str, tuple]) -> dict[str, Any]:
    """The settings kept at the Mask builder's values (``choices``: labels of ``FIXABLE``)."""
    fixed: dict[str, Any] = {}
    for label in choices:
        name = FIXABLE[label]
        if name == "weights":
            fixed |= {
                k: current.weights.get(k.removeprefix(tune.WEIGHT_PREFIX), 1.0) for k in space if k.startswith(tune.WEIGHT_PREFIX)
            }
        elif name == "layer_agg":
            fixed["layer_agg"] = current.layer_agg
            if current.layer_agg == "last_k":
                fixed["last_k"] = current.last_k
        elif name in space:
            fixed[name] = getattr(current, name)
    return fixed


def open_best(mask: dict[str, Any], task_names: list[str], page: str) -> None:
    """Put the best setting in the Mask builder's settings (every page reads them) and open ``page``."""
    for key, value in S.state_from_config(MaskConfig.from_dict(mask), task_names).items():
        state.reset(key, value)
    st.switch_page(ui.view(PAGES[page]))


def render_tune(job: dict[str, Any]) -> None:
    result = job.get("result") or {}
    partial = job.get("partial") or {}
    cfg = job["config"]
    objective = cfg.get("objective", "main")
    rows = partial.get("trials") or []
    if not rows:
        st.caption("No trial finished yet: each one appears here as it finishes.")
        return
    s = partial.get("savings") or {}
    st.markdown(
        f"**{len(rows)} trial(s)** of {cfg.get('trials') or '—'}; the pruner ran {s.get('scored', 0):,} of "
        f"{s.get('full', 0):,} example-evaluations ({s.get('saved', 0):,} saved)."
    )
    best = partial.get("best")
    if best:
        st.markdown(f"Best so far (tuning set): trial {best['number']}, **{best['label']}** ({best['n_keep']} dims kept)")
    c1, c2 = st.columns(2)
    ui.chart(history_figure(rows, objective), "tu_history", c1)
    ui.chart(parallel_figure(rows, objective), "tu_parallel", c2)
    with st.expander("Trials", expanded=False):
        st.dataframe(
            [
                {"trial": r["number"], "state": r["state"], "value": r["value"], "mask": r["label"], "examples": r["examples"]}
                | {param_title(k): v for k, v in r["params"].items()}
                for r in rows
            ],
            hide_index=True,
            key="tu_trials",
        )
    if job["status"] != "done" or "report" not in result:
        return
    report = atomic.read_json_object(Path(result["report"])) or {}
    st.subheader("On the test set (examples no trial saw)")
    for line in report.get("sentences") or result.get("sentences") or []:
        st.markdown(f"- {line}")
    vs = (report.get("test") or {}).get("vs_dense") or {}
    labels = report.get("labels") or {}
    if vs:
        st.dataframe(
            [
                {
                    "model": labels.get(k, k),
                    "Δ main vs dense (points)": format_entry(v.get("main")),
                    "Δ gold LL/char vs dense": format_entry(v.get("gold_ll_per_char"), "gold_ll_per_char"),
                    "n": (v.get("main") or {}).get("n"),
                }
                for k, v in vs.items()
            ],
            hide_index=True,
            key="tu_test",
        )
    for name, note in (report.get("notes") or {}).items():
        st.caption(f"{name}: not compared ({note})")
    st.caption(f"Split seed {(report.get('split') or {}).get('seed')}; per-example results in `{result['report']}`.")
    if report.get("importance"):
        ui.chart(importance_figure(report["importance"]), "tu_importance")
    mask = (report.get("best") or {}).get("mask")
    if mask:
        st.markdown(f"**Best mask:** {report['best']['label']} ({report['best']['n_keep']} dims kept)")
        loaded = ui.require_cache()
        cols = st.columns(len(PAGES))
        for col, page in zip(cols, PAGES):
            if col.button(f"Open in {page}", key=f"tu_open_{page}"):
                open_best(mask, list(loaded.cache.task_names), page)


st.title("Tune")
with ui.shown_errors():
    loaded = ui.require_cache()
    cache = loaded.cache
    st.markdown(
        "An Optuna search (TPE) over the vote's settings. Each trial is scored on **tuning** examples in blocks, "
        "and a trial that trails the others at the same number of examples is stopped early. When the budget is "
        "spent, the best setting, the paper default, random, wiki and (llama family) SliceGPT are scored once on "
        "**test** examples no trial saw, split once by a recorded seed; calibration examples are in neither."
    )
    try:
        tune.require_optuna()
    except DietError as exc:
        st.info(exc.message)
        st.stop()
    name = ui.model_name_for(cache)
    state.default(K_SPARSITY, 0.2)
    state.default(K_TRIALS, 30)
    state.default(K_MINUTES, 0)
    state.default(K_LIMIT, 20)
    state.default(K_OBJECTIVE, "main")
    state.default(K_PRUNER, tune.TuneConfig.pruner)
    state.default(K_EXACT, True)
    state.default(K_FIX, [])
    state.follow(K_NAME, f"{Path(str(loaded.path)).name}-{state.get(K_SPARSITY):g}")
    c1, c2, c3, c4 = st.columns(4)
    c1.selectbox("Target sparsity", SPARSITY_CHOICES, **state.sel_kw(K_SPARSITY, SPARSITY_CHOICES))
    c2.number_input("Trials", 1, 2000, **state.kw(K_TRIALS))
    c3.number_input("Minutes (0: no limit)", 0, 24 * 60, **state.kw(K_MINUTES))
    c4.number_input("Held-out examples per task", 2, 2000, step=10, **state.kw(K_LIMIT), help="split into tuning and test")
    c5, c6, c7 = st.columns(3)
    c5.selectbox(
        "Objective", list(tune.OBJECTIVES), format_func=tune.OBJECTIVES.get, **state.sel_kw(K_OBJECTIVE, tune.OBJECTIVES)
    )
    c6.selectbox("Pruner", list(tune.PRUNERS), **state.sel_kw(K_PRUNER, tune.PRUNERS))
    c7.toggle("Keep the target count (τ not searched)", **state.kw(K_EXACT))
    st.multiselect("Keep at the Mask builder's values (not searched)", list(FIXABLE), **state.multi_kw(K_FIX))
    st.text_input("Study name (the same name continues a study)", **state.kw(K_NAME))
    st.caption(f"Model: `{name}` (the Prune & evaluate page's model field).")
    ui.check_model_installed(name)
    jobs_store = jobs_ui.store()
    if st.button("Start tune", key=K_RUN, type="primary", help="runs in the background: you can switch pages"):
        config = tune.TuneConfig(
            model=name,
            cache=str(loaded.path),
            name=str(state.get(K_NAME)).strip(),
            sparsity=float(state.get(K_SPARSITY)),
            exact=bool(state.get(K_EXACT)),
            trials=int(state.get(K_TRIALS)),
            minutes=float(state.get(K_MINUTES)) or None,
            limit=int(state.get(K_LIMIT)),
            objective=str(state.get(K_OBJECTIVE)),
            pruner=str(state.get(K_PRUNER)),
        )
        config.fixed = fixed_from_builder(list(state.get(K_FIX)), state.current_config(cache), tune.search_space(config, cache))
        label = f"tune {config.name}: {config.trials} trials at {config.sparsity:g}, {config.limit} examples per task"
        jobs_ui.submit(jobs_store, "tune", config.to_dict(), label, K_WATCH)
    jobs_ui.job_panel(jobs_store, "tune", K_WATCH, render_tune)
    jobs_ui.all_jobs(jobs_store)
