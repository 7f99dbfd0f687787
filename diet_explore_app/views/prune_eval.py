"""Prune & evaluate: queue a background job that prunes the model with the current mask and compares
it with the dense model on held-out examples; watch its running paired deltas; see the stored run.

The page only submits, polls and renders the job (``jobs_ui``); the work runs in the library's
worker process, so switching pages, reloading or a second tab never stops it."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from diet_explore.core.errors import DietError
from diet_explore.evaluation.decision import decision_sentences, format_entry
from diet_explore.evaluation.evaluate import EvalConfig
from diet_explore.experiments.history import compare_runs, paired_frame, run_heading, run_view, task_rows
from diet_explore.experiments.tuning import PruneEvalJob
from diet_explore.masking.build import MaskConfig
from diet_explore_app import jobs_ui, loaders, state, tables
from diet_explore_app import widgets as ui

K_TASKS, K_LIMIT, K_PPL, K_PPL_WINDOWS, K_RUN = "pe_tasks", "pe_limit", "pe_ppl", "pe_ppl_windows", "pe_run"
K_WATCH = "_pe_job"
K_VS = "pe_vs"
K_VS_RUN = "pe_vs_run"
BASELINES = ("random", "magnitude", "wiki")


def _ppl(value: float | None) -> str:
    return f"{value:,.2f}" if value is not None else "not finite"  # the run store keeps inf/NaN as null


PARTIAL_COLUMNS = {  # column -> paired metric (evaluation/metrics.py), as the running table shows it
    "Δ main metric, points [95% CI]": "main",
    "agreement, % [95% CI]": "agreement",
    "Δ gold LL/char, nats [95% CI]": "gold_ll_per_char",
    "choice KL, nats [95% CI]": "choice_kl",
}


def say(average: dict[str, Any], candidate: str, reference: str, running: bool, tasks: int) -> None:
    """The decision in words under a paired comparison (``decision.decision_sentences``)."""
    for line in decision_sentences(average, candidate=candidate, reference=reference, running=running, tasks=tasks):
        st.markdown(f"**{line}**" if not line.startswith("Accuracy and gold") else line)


def mask_label(job: dict[str, Any]) -> str:
    """The job's mask as every page names it (``MaskConfig.label()``)."""
    try:
        return MaskConfig.from_dict((job.get("config") or {}).get("mask") or {}).label()
    except DietError:
        return "the mask"


def show_partial(partial: dict[str, Any], final: bool = False, label: str = "the mask") -> None:
    """Running paired metrics (pruned vs dense) on the examples scored so far, per task and averaged,
    and what they say so far."""
    if not partial or not partial.get("tasks"):
        st.caption("No examples scored yet: the first numbers come after the first block.")
        return
    scored, total = int((partial.get("scored") or {}).get("pruned") or 0), int(partial.get("total") or 0)
    avg = partial.get("average") or {}
    main, gold = avg.get("main") or {}, avg.get("gold_ll_per_char") or {}
    suffix = " so far" if not final else " (partial)"
    m = st.columns(3)
    ui.estimate_metric(m[0], "Mean Δ main metric" + suffix, main)
    ui.estimate_metric(m[1], "Mean Δ gold LL/char" + suffix, gold, "gold_ll_per_char")
    m[2].metric("Examples scored (pruned)", f"{scored} / {total}")
    totals = partial.get("task_totals") or {}
    rows = []
    for t, entries in [*partial["tasks"].items(), ("average", avg)]:
        n = (entries.get("main") or {}).get("n", 0)
        row = {"task": t, "scored": f"{n} / {totals.get(t, total if t == 'average' else '?')}"}
        row["metric"] = (entries.get("main") or {}).get("metric", "main")
        row |= {col: format_entry(entries.get(metric), metric) for col, metric in PARTIAL_COLUMNS.items()}
        rows.append(row)
    say(avg, label, "dense", running=True, tasks=len(partial["tasks"]))
    st.dataframe(pd.DataFrame(rows).set_index("task"), key="pe_partial")
    st.caption(
        "Paired on the examples both models have scored, blocks of every task in turn. Δ = pruned − dense; "
        "agreement: share of examples where the pruned model picks the dense model's choice; gold LL/char: "
        "log-likelihood of the correct answer per character; choice KL: KL(dense ‖ pruned) over the choices."
    )


def show_versus(partial: dict[str, Any], final: bool, label: str = "the mask") -> None:
    """The mask against each comparison mask scored in the same job (mask − other), paired on the
    examples both have scored, and the decision in words (``final``: the job ended, so never
    "not decided yet")."""
    mask = label
    for other, parts in (partial.get("others") or {}).items():
        versus = parts["versus"]
        avg = versus.get("average") or {}
        st.markdown(
            f"**{mask} − {other}** (same kept count), paired on the examples both have scored" + ("" if final else " so far")
        )
        m = st.columns(3)
        for col, (title, metric) in zip(m, (("main metric", "main"), ("gold LL/char", "gold_ll_per_char"))):
            ui.estimate_metric(col, f"Δ {title} vs {other}" + ("" if final else " so far"), avg.get(metric), metric)
        m[2].metric("Paired examples", f"{int((avg.get('main') or {}).get('n') or 0):,}")
        say(avg, mask, other, running=not final, tasks=len(versus["tasks"]))
        rows = [
            {
                "task": t,
                "Δ main metric, points [95% CI]": format_entry(e.get("main")),
                "Δ gold LL/char, nats [95% CI]": format_entry(e.get("gold_ll_per_char"), "gold_ll_per_char"),
            }
            for t, e in [*versus["tasks"].items(), ("average", avg)]
        ]
        st.dataframe(pd.DataFrame(rows).set_index("task"), key=f"pe_versus_{other}")


def show_run(last: dict[str, Any]) -> None:
    """A stored run: the decision vs dense, the headline numbers and the per-task table (the
    deltas derived on read, ``runs.run_view``/``task_rows``)."""
    view = run_view(last)
    lo, hi = view["ci_low"], view["ci_high"]
    st.subheader(f"Run {last['run_id']}: {view['label']} on {last['model']}, sparsity {view['sparsity']:.4f}")
    if last.get("paired"):
        say(last["paired"]["average"], view["label"], "dense", running=False, tasks=len(last["paired"]["tasks"]))
    params, nbytes, spe = last["parameters"], last["bytes"], last["seconds_per_example"]
    m = st.columns(5)
    ui.estimate_metric(m[0], "Mean Δ main metric", {"delta": view["delta_avg"], "ci_low": lo, "ci_high": hi})
    ppl_on = "dense_ppl" in last and (last["dense_ppl"], last["pruned_ppl"]) != (None, None)
    ui.note_metric(
        m[1],  # the pruned value, the dense one beside it: "29.36 → 62.12" was cut off in a fifth of the page
        "Perplexity (pruned)",
        _ppl(last["pruned_ppl"]) if ppl_on else "off",
        note=f"dense {_ppl(last['dense_ppl'])}" if ppl_on else None,
        help="Held-out wiki perplexity, 128-token windows",
    )
    ui.note_metric(
        m[2],
        "Parameters",
        f"{params['pruned'] / 1e6:,.2f} M",
        note=f"{params['pruned'] / params['dense'] - 1:+.1%}",
    )
    ui.note_metric(
        m[3],
        "Size in memory",
        f"{nbytes['pruned'] / 2**20:,.1f} MiB",
        note=f"dense {nbytes['dense'] / 2**20:,.1f} MiB",
    )
    ui.note_metric(
        m[4],
        "Eval time per example",
        f"{spe['pruned'] * 1000:,.0f} ms",
        note=f"dense {spe['dense'] * 1000:,.0f} ms",
    )
    average = {
        "n": sum(int(r["n"]) for r in last["task_results"]),
        "dense": last["dense_avg"],
        "pruned": last["pruned_avg"],
        "delta": view["delta_avg"],
        "ci_low": lo,
        "ci_high": hi,
    }
    table = tables.format_results_table(task_rows(last), average)
    st.dataframe(tables.results_styler(table), hide_index=True, key="pe_results")
    st.caption(
        "Dense, Pruned, Δ and the 95% CI are each task's main metric (highlighted). "
        + ui.HELP["acc"]
        + " Δ = pruned − dense on the same examples, with a paired 95% CI."
    )


def show_vs_earlier(record: dict[str, Any]) -> None:
    """The run against an earlier stored run of the same model (candidate − that run), paired on the
    examples both scored and said in words (``history.compare_runs``); the History page has them all."""
    earlier = [
        r
        for r in loaders.run_store().records()
        if r["run_id"] != record["run_id"]
        and r.get("model") == record.get("model")
        and set(r.get("tasks") or []) & set(record["tasks"])
    ]
    if not earlier:
        return
    by_id = {r["run_id"]: r for r in reversed(earlier)}  # newest first
    options = ["—", *by_id]
    pick = st.selectbox(
        "Compare with an earlier run",
        options,
        format_func=lambda r: "pick a run" if r == "—" else run_heading(by_id[r]),
        key=K_VS_RUN,
    )
    if pick == "—":
        return
    result = compare_runs(record, by_id[pick])
    if result is None or not any(result["shared"].values()):
        st.caption("Not paired: the two runs share no example (other tasks, limits, seeds or calibration exclusions).")
        return
    for line in result["sentences"]:
        st.markdown(line)
    st.dataframe(paired_frame(result), key="pe_vs_run_table")


def render_job(job: dict[str, Any]) -> None:
    status, result = job["status"], job.get("result") or {}
    if status == "done" and result.get("run_id"):
        if result.get("dense_reused"):
            st.markdown("Dense results reused: same model and held-out examples as an earlier run (evaluation cache).")
        try:
            record = loaders.run_store().load(result["run_id"])
        except DietError as exc:
            raise DietError(f"job {job['job_id']} finished, but its run cannot be read: {exc.message}", exc.hint) from None
        show_run(record)
        show_vs_earlier(record)
        if result.get("others"):
            show_versus(job.get("partial") or {}, final=True, label=mask_label(job))
            st.caption("Comparison runs: " + ", ".join(f"{k} {v}" for k, v in result["others"].items()) + " (History page).")
    elif status in ("running", "stopped", "interrupted") or job.get("partial"):
        if status in ("stopped", "interrupted"):
            st.caption("Partial results: the job did not finish (Resume continues it).")
        # a stopped or interrupted job can be resumed: its comparisons are not decided, never "no difference"
        show_partial(job.get("partial") or {}, final=status != "running", label=mask_label(job))
        show_versus(job.get("partial") or {}, final=False, label=mask_label(job))


st.title("Prune & evaluate")
with ui.shown_errors():
    loaded = ui.require_cache()
    cache = loaded.cache
    config, result = ui.current_mask(loaded)
    st.markdown(
        f"Current mask: **{config.label()}**, kept **{result.n_keep}** of {result.hidden_size} hidden dims "
        f"(sparsity {result.sparsity:.4f}). Change it on the Mask builder page."
    )

    ui.model_name_for(cache)  # the model field follows the cache's model until the user types another
    state.follow(K_TASKS, list(cache.task_names))  # every task of the cache, until the user picks some
    if not set(state.get(K_TASKS)) <= set(cache.task_names):  # picked on a cache with other tasks
        state.reset(K_TASKS, [t for t in state.get(K_TASKS) if t in cache.task_names] or list(cache.task_names))
    state.default(K_LIMIT, 20)
    state.default(K_PPL, True)
    state.default(K_PPL_WINDOWS, 16)
    c1, c2 = st.columns([2, 1])
    c1.text_input(
        "Model (built-in name, local folder or hub id)",
        **state.kw(ui.K_MODEL),
        help="defaults to the model the score cache was profiled from",
    )
    c2.number_input("Held-out examples per task", 1, 2000, step=5, **state.kw(K_LIMIT))
    st.multiselect("Tasks", list(cache.task_names), **state.multi_kw(K_TASKS))
    state.default(K_VS, [])
    st.multiselect(
        "Compare with, in the same job (same kept count)",
        list(BASELINES),
        **state.multi_kw(K_VS),
        help="each baseline mask is scored block by block with the current one, so their paired difference "
        "is known from the first blocks (costs one more pruned copy each)",
    )
    p1, p2 = st.columns(2)
    p1.toggle("Wiki perplexity", **state.kw(K_PPL))
    p2.number_input("Perplexity windows (128 tokens)", 1, 512, step=4, **state.kw(K_PPL_WINDOWS), disabled=not state.get(K_PPL))

    name = ui.model_name_for(cache)
    problem = ui.model_problem(name)  # e.g. weights not installed: an info box with the install command
    reason = ui.show_model_problem(problem) if problem else None
    jobs_store = jobs_ui.store()
    if reason is None:
        jobs_ui.warm_worker(jobs_store, name)

    if st.button(
        "Prune and evaluate",
        key=K_RUN,
        type="primary",
        disabled=reason is not None,
        help=reason or "runs in the background: you can switch pages",
    ):
        if not state.get(K_TASKS):
            raise DietError("no task selected", "pick at least one task to evaluate")
        eval_config = EvalConfig(
            tasks=list(state.get(K_TASKS)),
            limit=int(state.get(K_LIMIT)),
            perplexity=bool(state.get(K_PPL)),
            ppl_windows=int(state.get(K_PPL_WINDOWS)),
            exclude_cache=loaded.path,
        )
        spec = PruneEvalJob(
            model=name,
            cache=loaded.path,
            cache_display=ui.display_path(loaded.path),
            manifest_hash=cache.manifest_hash,
            mask=config.to_dict(),
            n_keep=result.n_keep,
            eval=eval_config.to_dict(),
        )
        for b in state.get(K_VS) or []:
            other = MaskConfig(method=b, sparsity=1.0 - result.n_keep / result.hidden_size, seed=config.seed)
            spec.others[b] = {
                "mask": other.to_dict(),
                "n_keep": loaders.mask_for(loaded.path, loaded.sha, other.to_json()).n_keep,
            }
        label = (
            f"{config.label()} @ {config.sparsity:g}, kept {result.n_keep}, {len(eval_config.tasks)} tasks × {eval_config.limit}"
        )
        label += "".join(f" vs {b}" for b in spec.others)
        jobs_ui.submit(jobs_store, "prune_eval", spec.to_dict(), label, K_WATCH)

    jobs_ui.job_panel(jobs_store, "prune_eval", K_WATCH, render_job)
    jobs_ui.all_jobs(jobs_store)

    st.page_link(
        ui.view("history.py"), label="Every stored run, and run against run, on the History page", icon=":material/history:"
    )
