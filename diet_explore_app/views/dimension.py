"""Dimension: why one hidden dim is kept or pruned by the current mask, and the text that drives it."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from diet_explore import plots
from diet_explore.core.errors import DietError
from diet_explore.masking.dims import NO_CONTEXTS, DimCard, check_dim
from diet_explore.masking.massive import MASSIVE_FACTOR
from diet_explore_app import loaders, state
from diet_explore_app import settings as S
from diet_explore_app import widgets as ui

K_CONTEXTS_N = "dim_contexts_n"


def contexts_block(card: DimCard, n: int) -> None:
    if not card.has_contexts:
        st.info(
            f"**Top-activating contexts:** {NO_CONTEXTS}. This command adds them to this cache and keeps its "
            f"scores (it runs the model over the calibration samples again):\n\n`{card.contexts_command}`"
        )
        return
    st.markdown(
        f"**Top-activating contexts**: the tokens where dim {card.dim}'s layer-averaged |activation| at site "
        f"`{card.config.site}` is largest in each task's calibration samples (highlighted), with up to 8 tokens each side. "
        "↵ is a newline."
    )
    rows = list(card.tasks)
    tabs = st.tabs([t.task for t in rows])
    for tab, t in zip(tabs, rows, strict=True):
        with tab:
            if t.contexts is None:
                st.info(f"No contexts recorded for {t.task}: re-profile to see contexts.")
                continue
            lines = [
                "<table style='font-size:0.9em;border-collapse:collapse;width:100%'>"
                "<tr><th style='text-align:right'>|act|</th><th>sample</th><th>token</th><th style='text-align:left'>context</th></tr>"
            ]
            for ctx in t.contexts[:n]:
                lines.append(
                    f"<tr><td style='text-align:right;padding-right:8px'>{ctx.value:.3f}</td>"
                    f"<td style='padding-right:8px'>{ctx.sample_id}</td><td style='padding-right:8px'>{ctx.position}</td>"
                    f"<td style='font-family:monospace;white-space:pre-wrap'>{ui.context_html(ctx.tokens, ctx.marked)}</td></tr>"
                )
            lines.append("</table>")
            st.markdown("".join(lines), unsafe_allow_html=True)


st.title("Dimension")
with ui.shown_errors():
    loaded = ui.require_cache()
    cache = loaded.cache
    d = cache.hidden_size
    config, _ = ui.current_mask(loaded)
    massive = loaders.massive_for(loaded.path, loaded.sha, config.site, config.layer_agg, config.last_k)
    link_dim = st.session_state.pop(state.K_LINK_DIM, None)
    if link_dim is not None:
        try:
            state.reset(state.K_DIM, check_dim(link_dim, d))
        except DietError as exc:  # as any other link setting that cannot be used: a warning that names it
            st.warning(f"ignored link setting {S.DIM_PARAM}={link_dim}: {exc.message}")
    state.default(state.K_DIM, massive.dims[0] if massive.dims else 0)
    if not 0 <= int(state.get(state.K_DIM)) < d:  # chosen on a wider cache
        ui.show_error(DietError(f"dimension {state.get(state.K_DIM)} is not an index in 0..{d - 1} of this cache", None))
        state.reset(state.K_DIM, massive.dims[0] if massive.dims else 0)
    state.default(K_CONTEXTS_N, 8)
    state.default(state.K_STAB_ON, True)
    state.default(state.K_STAB_N, 100)

    c1, c2 = st.columns([1, 3])
    dim = int(c1.number_input(f"Hidden dimension (0 to {d - 1})", 0, d - 1, step=1, **state.kw(state.K_DIM)))
    with c2:
        ui.sparsity_slider()
    ui.score_controls(cache)
    config, result = ui.current_mask(loaded)
    n_res = int(state.get(state.K_STAB_N)) if state.get(state.K_STAB_ON) else 0
    card = loaders.dim_card_for(loaded.path, loaded.sha, config.to_json(), dim, n_res)

    if card.massive:
        st.warning(
            f"**Massive-activation dim**: {card.massive_ratio:.1f}× the median dim's score (flagged at ≥ "
            f"{MASSIVE_FACTOR:g}×; the ratio is the median over tasks of score / that task's median dim score)."
        )
    if card.why:  # a share that passes τ, pruned (or one below τ, kept): the exact count or the rounding decided
        st.info(f"**{card.why}.**")
    m = st.columns(5)
    m[0].metric(
        "Current mask",
        "kept" if card.mask_kept else "pruned",
        help=f"{config.label()}, {card.mask_n_keep} of {d} kept" + (f". {card.why}" if card.why else ""),
    )
    if card.vote_share is not None:
        m[1].metric(
            "Vote share (keep)",
            f"{card.vote_share:.2f}",
            help=f"weighted share of the voting tasks keeping it; τ = {config.threshold:g}",
        )
    else:
        m[1].metric("Vote share (keep)", "n/a", help=f"{config.method} has no vote")
    if card.keep_frequency is not None:
        m[2].metric(
            "Bootstrap keep frequency",
            f"{card.keep_frequency:.2f}",
            help=f"{card.n_resamples} resamples of the calibration samples",
        )
    else:
        m[2].metric("Bootstrap keep frequency", "n/a", help="stability is off (Mask builder), or the method uses no samples")
    m[3].metric("Weight-magnitude rank", f"{card.weight_magnitude_rank} / {d}" if card.weight_magnitude_rank else "n/a")
    m[4].metric(
        "Wiki rank",
        f"{card.wiki_rank} / {d}" if card.wiki_rank else "n/a",
        help=f"rank on {card.wiki_task}" if card.wiki_task else None,
    )
    st.caption(
        f"Each task keeps its {card.n_keep_per_task} highest-scoring dims at sparsity {config.sparsity:.2f}; "
        f"{config.label()} merges them into {card.mask_n_keep} kept. {card.massive_ratio:.2f}× the median dim."
        + "".join(f" {n}." for n in card.notes)
    )

    ui.chart(
        plots.dim_task_scores(
            dim,
            [t.task for t in card.tasks],
            [t.score for t in card.tasks],
            [t.threshold for t in card.tasks],
            [t.kept for t in card.tasks],
            [t.weight is not None for t in card.tasks],
        ),
        "dim_scores",
    )
    st.dataframe(
        pd.DataFrame(
            {
                "task": [t.task for t in card.tasks],
                "weight": ["" if t.weight is None else f"{t.weight:g}" for t in card.tasks],  # wikitext does not vote
                "score": [round(t.score, 5) for t in card.tasks],
                "rank": [t.rank for t in card.tasks],
                "keeps ≥": [round(t.threshold, 5) for t in card.tasks],
                "vote": [("keep" if t.kept else "prune") if t.weight is not None else "not voting" for t in card.tasks],
                ui.RATIO_THIS_TASK: [None if t.ratio is None else round(t.ratio, 2) for t in card.tasks],
            }
        ),
        hide_index=True,
        key="dim_votes",
    )
    ui.chart(plots.dim_layer_profile(dim, {t.task: t.layers for t in card.tasks}), "dim_layers")
    st.number_input("Contexts per task", 1, 64, step=1, **state.kw(K_CONTEXTS_N))
    contexts_block(card, int(state.get(K_CONTEXTS_N)))
