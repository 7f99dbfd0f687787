"""Mask builder: tune the merge and see the mask, its size, baselines and stability update live."""

from __future__ import annotations

import streamlit as st

from diet_explore.masking.baselines import BASELINE_METHODS
from diet_explore.masking.vote import MERGE_METHODS
from diet_explore_app import loaders, state
from diet_explore_app import settings as S
from diet_explore_app import widgets as ui

METHODS = list(MERGE_METHODS + BASELINE_METHODS)
K_STAB_ON, K_STAB_N = "stab_on", "stab_n"


@st.fragment
def stability_section(loaded, config) -> None:
    """Bootstrap stability: its own widgets (on/off, resamples) rerun only this part of the page."""
    with ui.shown_errors():
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
            b = st.columns(3)
            b[0].metric(
                "Jaccard vs full mask",
                f"{stab.mean_jaccard:.4f}",
                delta=f"± {stab.std_jaccard:.4f} (std)",
                delta_color="off",
                delta_arrow="off",
                help=ui.HELP["jaccard"],
            )
            b[1].metric("Stable dims", stab.n_stable, help=ui.HELP["stable"])
            b[2].metric("Unstable dims", int(stab.unstable.sum()), help=ui.HELP["stable"])
            st.caption(
                f"Jaccard of pruned sets, {stab.n_resamples} resamples vs the full-sample mask. Stable: kept in 0% or "
                "100% of resamples; unstable: kept in 5–95%."
            )
            for note in stab.notes:
                st.caption(note)
            st.plotly_chart(loaders.stability_figure(loaded.path, loaded.sha, config.to_json(), n_res), key="mb_stability")


st.title("Mask builder")
with ui.shown_errors():
    loaded = ui.require_cache()
    cache = loaded.cache
    state.default(K_STAB_ON, True)
    state.default(K_STAB_N, 100)

    controls, results = st.columns([1, 2], gap="large")
    with controls:
        ui.reset_button(cache)
        ui.sparsity_slider()
        ui.threshold_slider()
        st.markdown("**Task weights** (0 removes the task)")
        ui.weight_sliders(cache)
        method = st.selectbox(
            "Merge rule",
            METHODS,
            **state.sel_kw(S.KEY_METHOD, METHODS),
            help="diet: weighted vote (paper); random/magnitude/wiki are baselines",
        )
        if method == "single":
            st.selectbox("Task", cache.task_names, **state.sel_kw(state.K_SINGLE_TASK, cache.task_names))
        if method == "leave_one_out":
            st.selectbox("Held-out task", cache.task_names, **state.sel_kw(state.K_HELD_OUT, cache.task_names))
        ui.score_controls(cache, stacked=True)
        st.selectbox(
            "Normalisation (mean_score merge, exact tie-breaks)",
            list(S.NORMALIZATIONS),
            **state.sel_kw(S.KEY_NORMALIZE, S.NORMALIZATIONS),
        )
        st.toggle("Exact count", help=ui.HELP["exact"], **state.kw(S.KEY_EXACT))
        st.number_input("Kept count a multiple of", 1, 4096, step=1, **state.kw(S.KEY_MULTIPLE), help=ui.HELP["multiple"])

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

        # the live proxy: what the mask keeps of each task's activations, from the cache alone
        st.markdown(
            "**Live proxy** (from the cache, no model): the share of each task's activation mass the mask keeps "
            "(`kept_mass`), and of its squared activations (`kept_energy`, dominated by the few massive dims)"
        )
        st.dataframe(loaders.proxies_for(loaded.path, loaded.sha, config.to_json()).round(4), hide_index=True, key="mb_proxy")
        checks = loaders.proxy_checks(cache.model_name)
        if any(v is False for v, _ in checks.values()) and not any(v for v, _ in checks.values()):
            st.warning(
                "Neither proxy passes the validation below (it does not predict the measured paired Δ): read it "
                "as a sanity check of what the mask throws away, not as a forecast of accuracy."
            )
        st.caption(" ".join(f"**{p}** {text}" for p, (_, text) in checks.items()) + " (`tools/proxy_validation.py`)")

        stability_section(loaded, config)
