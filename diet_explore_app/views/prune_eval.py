"""Prune & evaluate: prune the model with the current mask and compare it with the dense model on
held-out examples. Every run goes to the run store; the history is shown below."""

from __future__ import annotations

import streamlit as st

from diet_explore import plots
from diet_explore.core.errors import DietError
from diet_explore.evaluation.evaluate import EvalConfig
from diet_explore.experiments.runs import runs_frame
from diet_explore.experiments.tuning import prune_and_evaluate
from diet_explore_app import loaders, state, tables
from diet_explore_app import widgets as ui

K_TASKS, K_LIMIT, K_PPL, K_PPL_WINDOWS, K_RUN = "pe_tasks", "pe_limit", "pe_ppl", "pe_ppl_windows", "pe_run"
K_LAST = "_pe_last_run"


def _ppl(value: float | None) -> str:
    return f"{value:,.2f}" if value is not None else "not finite"  # the run store keeps inf/NaN as null


st.title("Prune & evaluate")
with ui.shown_errors():
    loaded = ui.require_cache()
    cache = loaded.cache
    config, result = ui.current_mask(loaded)
    st.markdown(
        f"Current mask: **{config.method}**, kept **{result.n_keep}** of {result.hidden_size} hidden dims "
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
    p1, p2 = st.columns(2)
    p1.toggle("Wiki perplexity", **state.kw(K_PPL))
    p2.number_input("Perplexity windows (128 tokens)", 1, 512, step=4, **state.kw(K_PPL_WINDOWS), disabled=not state.get(K_PPL))

    name = ui.model_name_for(cache)
    problem = ui.model_problem(name)  # e.g. weights not installed: an info box with the install command
    reason = ui.show_model_problem(problem) if problem else None
    store = loaders.run_store()

    if st.button("Prune and evaluate", key=K_RUN, type="primary", disabled=reason is not None, help=reason):
        if not state.get(K_TASKS):
            raise DietError("no task selected", "pick at least one task to evaluate")
        eval_config = EvalConfig(
            tasks=list(state.get(K_TASKS)),
            limit=int(state.get(K_LIMIT)),
            perplexity=bool(state.get(K_PPL)),
            ppl_windows=int(state.get(K_PPL_WINDOWS)),
            exclude_cache=loaded.path,
        )
        with st.status("Pruning and evaluating…", expanded=True) as status:
            try:
                status.write(f"Loading {name}…")
                dense, tokenizer, info = loaders.dense_model(name, "auto")
                bar = st.progress(0.0, text="evaluating")
                show = lambda f, m: bar.progress(min(max(float(f), 0.0), 1.0), text=m)
                record = prune_and_evaluate(
                    name,
                    result,
                    eval_config,
                    dense,
                    tokenizer,
                    store,
                    cache_path=ui.display_path(loaded.path),
                    manifest_hash=cache.manifest_hash,
                    info=info.to_dict(),
                    memo=loaders.dense_memo(),
                    progress=show,
                    log=status.write,
                )
            except Exception as exc:
                status.update(label="Failed", state="error", expanded=True)
                failure = (
                    exc
                    if isinstance(exc, DietError)
                    else DietError(
                        f"pruning/evaluation failed midway: {type(exc).__name__}: {exc}",
                        "nothing was stored; the run history is unchanged (try fewer examples or tasks)",
                    )
                )
                record = None
            else:
                status.update(label=f"Done: run {record['run_id']}", state="complete", expanded=False)
        if record is None:
            ui.show_error(failure)
        else:
            st.session_state[K_LAST] = record

    last = st.session_state.get(K_LAST)
    if last:
        st.subheader(f"Run {last['run_id']}: {last['model']}, sparsity {last['sparsity']:.4f}")
        lo, hi = last["delta_avg_ci"]
        params, nbytes, spe = last["parameters"], last["bytes"], last["seconds_per_example"]
        m = st.columns(5)
        m[0].metric(
            "Mean Δ main metric",
            f"{last['delta_avg']:+.4f}",
            delta=f"95% CI [{lo:+.3f}, {hi:+.3f}]",
            delta_color="off",
            delta_arrow="off",
        )
        ppl_on = "dense_ppl" in last and (last["dense_ppl"], last["pruned_ppl"]) != (None, None)
        m[1].metric(  # the pruned value, the dense one beside it: "29.36 → 62.12" was cut off in a fifth of the page
            "Perplexity (pruned)",
            _ppl(last["pruned_ppl"]) if ppl_on else "off",
            delta=f"dense {_ppl(last['dense_ppl'])}" if ppl_on else None,
            delta_color="off",
            delta_arrow="off",
            help="Held-out wiki perplexity, 128-token windows",
        )
        m[2].metric(
            "Parameters",
            f"{params['pruned'] / 1e6:,.2f} M",
            delta=f"{params['pruned'] / params['dense'] - 1:+.1%}",
            delta_color="off",
            delta_arrow="off",
        )
        m[3].metric(
            "Size in memory",
            f"{nbytes['pruned'] / 2**20:,.1f} MiB",
            delta=f"dense {nbytes['dense'] / 2**20:,.1f} MiB",
            delta_color="off",
            delta_arrow="off",
        )
        m[4].metric(
            "Eval time per example",
            f"{spe['pruned'] * 1000:,.0f} ms",
            delta=f"dense {spe['dense'] * 1000:,.0f} ms",
            delta_color="off",
            delta_arrow="off",
        )
        average = {
            "n": sum(int(r["n"]) for r in last["task_results"]),
            "dense": last["dense_avg"],
            "pruned": last["pruned_avg"],
            "delta": last["delta_avg"],
            "ci_low": lo,
            "ci_high": hi,
        }
        table = tables.format_results_table(last["task_results"], average)
        st.dataframe(tables.results_styler(table), hide_index=True, key="pe_results")
        st.caption(
            "Dense, Pruned, Δ and the 95% CI are each task's main metric (highlighted). "
            + ui.HELP["acc"]
            + " Δ = pruned − dense on the same examples, with a paired 95% CI."
        )

    st.subheader("Run history")
    history = runs_frame(store.records())
    if history.empty:
        st.caption("No runs yet.")
    else:
        st.dataframe(tables.format_history_table(history), hide_index=True, key="pe_history")
        st.plotly_chart(plots.run_history(history, x="sparsity", y="delta_avg"), key="pe_history_plot")
