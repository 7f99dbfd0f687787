"""Mask builder: tune the merge and see the mask, its size, baselines and stability update live."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from diet_explore.masking.config import METHODS as MASK_METHODS
from diet_explore.masking.config import NOT_A_MASK_HINT, NOT_MASKS
from diet_explore_app import loaders, state
from diet_explore_app import settings as S
from diet_explore_app import widgets as ui

METHODS = list(MASK_METHODS)
K_STAB_ON, K_STAB_N = state.K_STAB_ON, state.K_STAB_N


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
            ui.note_metric(
                b[0],
                "Jaccard vs full mask",
                f"{stab.mean_jaccard:.4f}",
                note=f"± {stab.std_jaccard:.4f} (std)",
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
            # lazy: closed, the figure is neither built nor sent, and plotly's 4.7 MB script is not loaded
            # (a pasted link 4.0 -> 2.5 s to fully rendered, benchmarks/bench_browser.py)
            shown, box = ui.open_expander(state.K_STAB_HIST, "Keep-frequency histogram (how often each dim is kept)")
            if shown:
                fig = loaders.stability_figure(loaded.path, loaded.sha, config.to_json(), n_res)
                ui.chart(fig, "mb_stability", box)


st.title("Mask builder")
with ui.shown_errors():
    loaded = ui.require_cache()
    cache = loaded.cache
    state.default(K_STAB_ON, True)
    state.default(K_STAB_N, 100)

    controls, results = st.columns([1, 2], gap="large")
    with controls:
        ignored = ui.ignored_now()  # what the current method does not read: disabled, with the reason
        ui.reset_button(cache)
        ui.sparsity_slider()
        ui.threshold_slider(ignored)
        st.markdown("**Task weights** (0 removes the task)")
        ui.weight_sliders(cache, ignored)
        method = st.selectbox(
            "Merge rule",
            METHODS,
            **state.sel_kw(S.KEY_METHOD, METHODS),
            help="diet: weighted vote (paper); random/magnitude/wiki are baselines",
        )
        st.caption(f"No SliceGPT here: {NOT_MASKS['slicegpt']}; {NOT_A_MASK_HINT}.")
        if method == "single-task":
            st.selectbox("Task", cache.task_names, **state.sel_kw(state.K_SINGLE_TASK, cache.task_names))
        if method == "leave-one-out":
            st.selectbox("Held-out task", cache.task_names, **state.sel_kw(state.K_HELD_OUT, cache.task_names))
        ui.score_controls(cache, stacked=True, ignored=ignored)
        st.selectbox(
            "Normalisation (mean-score merge, exact tie-breaks)",
            list(S.NORMALIZATIONS),
            **state.sel_kw(S.KEY_NORMALIZE, S.NORMALIZATIONS),
            **ui.disabled_kw("normalize", "How each task's scores are made comparable before they are averaged.", ignored),
        )
        st.toggle("Exact count", **ui.disabled_kw("exact", ui.HELP["exact"], ignored), **state.kw(S.KEY_EXACT))
        st.number_input("Kept count a multiple of", 1, 4096, step=1, **state.kw(S.KEY_MULTIPLE), help=ui.HELP["multiple"])
        shown = {k: v for k, v in ignored.items() if k in ("threshold", "weights", "site", "layer_agg", "normalize", "exact")}
        if shown:
            names = {"threshold": "τ", "weights": "task weights", "layer_agg": "layer aggregation", "normalize": "normalisation"}
            st.caption(
                f"Not read by {method} (greyed out): " + "; ".join(f"{names.get(k, k)}: {v}" for k, v in shown.items()) + "."
            )

    with results, ui.shown_errors():
        config, result = ui.current_mask(loaded)
        d = result.hidden_size
        params = cache.parameters_after(result.n_keep)
        dense = cache.manifest["model"].get("num_parameters")
        st.markdown(f"Mask **{config.label()}**: kept {result.n_keep} of {d} hidden dims")  # as every page names it
        c = st.columns(4)
        c[0].metric("Kept dims", f"{result.n_keep} / {d}")
        ui.note_metric(
            c[1],
            "Resulting sparsity",
            f"{result.sparsity:.4f}",
            note=f"{result.sparsity - config.sparsity:+.4f} vs target",
        )
        ui.note_metric(
            c[2],
            "Params after pruning",
            f"{params / 1e6:,.2f} M" if params is not None else "n/a",
            note=f"{params / dense - 1:+.1%} vs dense" if params is not None and dense else None,
        )
        c[3].metric("Voting tasks", len(result.tasks))
        # information here (evaluating the mask works); Export, where saving is the action, warns
        ui.saveable_fix(loaded, config, result.n_keep, st.info, key="mb_round_for_saving")
        ui.rounded_note(config, result.n_keep)
        massive = loaders.massive_for(loaded.path, loaded.sha, config.site, config.layer_agg, config.last_k)
        if massive.dims:
            pruned = [d for d in massive.dims if not result.keep[d]]
            st.markdown(
                f"**Massive-activation dims** ({', '.join(map(str, massive.dims))}): this mask keeps "
                f"{len(massive.dims) - len(pruned)} of {len(massive.dims)}"
                + (f"; it prunes {', '.join(map(str, pruned))}." if pruned else ".")
            )
        else:
            st.markdown("**Massive-activation dims**: none in this cache at this site.")

        overlaps = loaders.overlaps_for(loaded.path, loaded.sha, config.to_json())
        paper = overlaps.iloc[0]
        if paper["note"]:  # e.g. a vote the paper's settings cannot build at this sparsity
            st.markdown(f"**Difference from the paper default**: not available ({paper['note']}).")
        else:
            st.markdown(
                f"**Difference from the paper default** (equal weights, τ=0.5, sparsity {config.sparsity:.2f}): "
                f"{int(paper['n_diff'])} dim{'' if int(paper['n_diff']) == 1 else 's'} differ{'s' if int(paper['n_diff']) == 1 else ''}, Jaccard of kept sets {paper['jaccard_kept']:.4f}."
            )
        st.markdown("**Overlap with baselines** (baselines built at the same kept count)")
        # small tables that change on every slider move are static tables (st.table): the browser
        # redraws a data grid at several times their cost (benchmarks/bench_browser.py)
        st.table(overlaps, hide_index=True)

        # the live proxy: what the mask keeps of each task's activations, from the cache alone
        st.markdown(
            "**Live proxy** (from the cache, no model): the share of each task's activation mass the mask keeps "
            "(`kept_mass`), and of its squared activations (`kept_energy`, dominated by the few massive dims)"
        )
        proxies = loaders.proxies_for(loaded.path, loaded.sha, config.to_json())
        site = config.site if f"kept_mass@{config.site}" in proxies else "residual"
        shown = proxies[["task", f"kept_mass@{site}", f"kept_energy@{site}"]]  # the mask's own site: a table that fits
        shown.columns = ["task", "kept_mass", "kept_energy"]
        st.table(shown.round(4), hide_index=True)
        st.caption(f"At the {site} site, the one the mask's scores come from.")
        checks = loaders.proxy_checks(cache.model_name)
        if any(v is False for v, _ in checks.values()) and not any(v for v, _ in checks.values()):
            st.warning(
                "Neither proxy passes the validation below (it does not predict the measured paired Δ): read it "
                "as a sanity check of what the mask throws away, not as a forecast of accuracy."
            )
        # one line of verdicts, proxies with the same verdict named together ("a predicts…; b predicts…"
        # read like a list with its numbers missing); the per-sweep correlations in a folded expander
        said = {
            True: ("predicts", "predict"),
            False: ("does not predict", "do not predict"),
            None: ("is not validated", "are not validated"),
        }
        groups = {v: [p for p, (w, _) in checks.items() if w is v] for v in (True, False, None)}
        st.caption(
            "Validation against the measured paired Δ (`tools/proxy_validation.py`): "
            + "; ".join(
                " and ".join(f"**{p}**" for p in names)
                + f" {said[v][len(names) > 1]}"
                + (" it" if v is not None else " for this model")
                for v, names in groups.items()
                if names
            )
            + "."
        )
        with st.expander("How the proxies were validated (Spearman ρ per sweep)"):
            for p, (_, text) in checks.items():
                st.caption(f"**{p}** {text}")

        stability_section(loaded, config)

        st.markdown("**Massive-activation dims in this mask** (pick a row to open it on the Dimension page)")
        vote = loaders.vote_view_for(loaded.path, loaded.sha, config.to_json())  # the tasks' vote behind the mask
        ui.dim_table(
            pd.DataFrame(
                {
                    "dim": massive.dims,
                    ui.RATIO_ACROSS_TASKS: [round(float(massive.ratio[d]), 2) for d in massive.dims],
                    "mask": ["kept" if result.keep[d] else "pruned" for d in massive.dims],
                    "keep share": [round(float(vote.share[d]), 4) for d in massive.dims],
                }
            ),
            key="mb_massive",
        )
        ui.dim_jump(cache, key="mb_jump")
