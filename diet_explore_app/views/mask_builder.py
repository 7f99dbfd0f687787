"""Mask builder: tune the merge and see the mask, its size, baselines and stability update live."""

from __future__ import annotations

import streamlit as st

from diet_explore import plots
from diet_explore.masking.baselines import BASELINE_METHODS
from diet_explore.masking.build import NOT_A_MASK_HINT, NOT_MASKS
from diet_explore.masking.vote import MERGE_METHODS
from diet_explore_app import loaders, state
from diet_explore_app import settings as S
from diet_explore_app import widgets as ui

METHODS = list(MERGE_METHODS + BASELINE_METHODS)
K_STAB_ON, K_STAB_N = "stab_on", "stab_n"

st.title("Mask builder")
with ui.shown_errors():
    loaded = ui.require_cache()
    cache = loaded.cache
    state.default(K_STAB_ON, True)
    state.default(K_STAB_N, 100)

    controls, results = st.columns([1, 2], gap="large")
    with controls:
        ui.sparsity_slider()
        st.slider(
            "Vote threshold τ (share of task weight that must keep a dim)", 0.0, 1.0, step=0.05, **state.kw(S.KEY_THRESHOLD)
        )
        st.markdown("**Task weights** (0 removes the task)")
        for t in cache.task_names:
            st.slider(t, 0.0, S.WEIGHT_MAX, step=0.1, **state.kw(S.weight_key(t)))
        method = st.selectbox(
            "Merge rule",
            METHODS,
            **state.sel_kw(S.KEY_METHOD, METHODS),
            help="diet: weighted vote (paper); random/magnitude/wiki are baselines",
        )
        st.caption(f"No SliceGPT here: {NOT_MASKS['slicegpt']}; {NOT_A_MASK_HINT}.")
        if method == "single":
            st.selectbox("Task", cache.task_names, **state.sel_kw(state.K_SINGLE_TASK, cache.task_names))
        if method == "leave_one_out":
            st.selectbox("Held-out task", cache.task_names, **state.sel_kw(state.K_HELD_OUT, cache.task_names))
        ui.score_controls(cache)
        st.selectbox(
            "Normalisation (mean_score merge, exact tie-breaks)",
            list(S.NORMALIZATIONS),
            **state.sel_kw(S.KEY_NORMALIZE, S.NORMALIZATIONS),
        )
        st.toggle("Exact sparsity (keep exactly the target count)", **state.kw(S.KEY_EXACT))
        st.number_input(
            "Kept count a multiple of",
            1,
            4096,
            step=1,
            **state.kw(S.KEY_MULTIPLE),
            help="8 suits GPU kernels; Llama/Gemma configs need a multiple of the attention head count "
            "to save the pruned model (1 = any count)",
        )

    with results, ui.shown_errors():
        config, result = ui.current_mask(loaded)
        d = result.hidden_size
        params = cache.parameters_after(result.n_keep)
        dense = cache.manifest["model"].get("num_parameters")
        c = st.columns(4)
        c[0].metric("Kept dims", f"{result.n_keep} / {d}")
        c[1].metric(
            "Resulting sparsity",
            f"{result.sparsity:.4f}",
            delta=f"{result.sparsity - config.sparsity:+.4f} vs target",
            delta_color="off",
            delta_arrow="off",
        )
        c[2].metric(
            "Params after pruning",
            f"{params / 1e6:,.2f} M" if params is not None else "n/a",
            delta=f"{params / dense - 1:+.1%} vs dense" if params is not None and dense else None,
            delta_color="off",
            delta_arrow="off",
        )
        c[3].metric("Voting tasks", len(result.tasks))
        if hint := ui.saveable_hint(cache, result.n_keep):
            st.warning(hint)

        overlaps = loaders.overlaps_for(loaded.path, loaded.sha, config.to_json())
        paper = overlaps.iloc[0]
        if paper["note"]:  # e.g. a vote the paper's settings cannot build at this sparsity
            st.markdown(f"**Difference from the paper default**: not available ({paper['note']}).")
        else:
            st.markdown(
                f"**Difference from the paper default** (equal weights, τ=0.5, sparsity {config.sparsity:.2f}): "
                f"{int(paper['n_diff'])} dims differ, Jaccard of kept sets {paper['jaccard_kept']:.4f}."
            )
        st.markdown("**Overlap with baselines** (baselines built at the same kept count)")
        st.dataframe(overlaps, hide_index=True, key="mb_overlaps")

        st.markdown("**Bootstrap stability** (resample each task's calibration samples, rebuild the mask)")
        s1, s2 = st.columns(2)
        stab_on = s1.toggle("Compute stability", **state.kw(K_STAB_ON))
        n_res = int(s2.number_input("Resamples", 10, 1000, step=10, **state.kw(K_STAB_N)))
        if not stab_on:
            st.caption("Stability is off.")
        elif config.method in ("random", "magnitude"):
            st.caption(f"Method {config.method!r} uses no calibration samples, so it has no sampling variability.")
        else:
            stab = loaders.bootstrap_for(loaded.path, loaded.sha, config.to_json(), n_res)
            f = stab.keep_frequency
            b = st.columns(3)
            b[0].metric(
                "Jaccard vs full mask",
                f"{stab.mean_jaccard:.4f}",
                delta=f"± {stab.std_jaccard:.4f} (std)",
                delta_color="off",
                delta_arrow="off",
            )
            b[1].metric("Stable dims", stab.n_stable)
            b[2].metric("Unstable dims", int(stab.unstable.sum()))
            st.caption(
                f"Jaccard of pruned sets, {stab.n_resamples} resamples vs the full-sample mask. Stable: kept in 0% or "
                "100% of resamples; unstable: kept in 5–95%."
            )
            for note in stab.notes:
                st.caption(note)
            st.plotly_chart(plots.stability_histogram(f), key="mb_stability")
