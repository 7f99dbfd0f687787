"""AppTest: Rankings, Agreement, Mask builder and Dimension show the vote of the mask the Mask builder
builds, task weights and τ included. The expected numbers are worked out here from the task scores
alone (each task's top dims, weighted share, share ≥ τ), not by the library's vote, so a change of the
vote's rule in production (tools/mutants.py) fails these tests."""

from __future__ import annotations

import numpy as np
import pytest
from app_helpers import arr, chart_by_key, metrics, open_tab, run_page

from diet_explore.masking.importance import aggregate_scores
from diet_explore.masking.selection import rank_dims

D = 576
N_KEEP = D - int(0.2 * D)  # each task keeps its top 461 of 576 at the default sparsity 0.2


def _by_hand(alpha, weights: dict[str, float]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(voting tasks, (T, D) bool each task keeps, (D,) weighted share keeping), from the scores."""
    tasks = [t for t in alpha.task_names if weights.get(t, 1.0) > 0]
    keep = np.zeros((len(tasks), D), dtype=bool)
    for i, t in enumerate(tasks):
        keep[i, rank_dims(aggregate_scores(alpha, t))[:N_KEEP]] = True
    w = np.array([weights.get(t, 1.0) for t in tasks])
    return tasks, keep, (w[:, None] * keep).sum(0) / w.sum()


def _tune(at, tau: float, weights: dict[str, float]):
    run_page(at, "mask_builder")
    at.slider(key="threshold").set_value(tau).run()
    for t, w in weights.items():
        at.slider(key=f"w_{t}").set_value(w).run()
    return int(metrics(at)["Kept dims"].split("/")[0])


def test_agreement_prunes_what_the_mask_builder_builds_with_weights(app, alpha):
    """'Pruned by the vote at τ' ignored the task weights (250 vs the Mask builder's 244 on SmolLM2)."""
    at = app.run()
    for tau, weights in ((0.6, {"boolq": 2.0}), (0.5, {"rte": 0.0})):  # the second has exact halves (3 of 6)
        kept = _tune(at, tau, weights)
        _, per_task, share = _by_hand(alpha, weights)
        expected = int((share < tau - 1e-9).sum())
        assert kept == D - expected
        run_page(at, "agreement")
        assert metrics(at)[f"Pruned by the vote at τ = {tau:g}"] == str(expected)
        hist = chart_by_key(open_tab(at, "agree_view", "Votes per dim"), "agree_vote_hist")
        kept_bars, pruned_bars = (arr(tr["y"]) for tr in hist["data"])
        votes = (~per_task).sum(0)
        assert (kept_bars + pruned_bars).tolist() == np.bincount(votes, minlength=per_task.shape[0] + 1).tolist()
        assert pruned_bars.tolist() == np.bincount(votes[share < tau - 1e-9], minlength=per_task.shape[0] + 1).tolist()
        open_tab(at, "agree_view", "Task overlap")
        at.slider(key="w_boolq").set_value(1.0).run()  # back to equal weights for the next setting


@pytest.mark.slow
def test_agreement_counts_the_exact_and_the_rounded_mask(app, alpha):
    at = app.run()
    kept = _tune(at, 0.6, {"boolq": 2.0})
    at.number_input(key="multiple").set_value(64).run()
    rounded = int(metrics(at)["Kept dims"].split("/")[0])
    assert rounded % 64 == 0 and abs(rounded - kept) <= 32
    run_page(at, "agreement")
    assert metrics(at)["Pruned by the vote at τ = 0.6"] == str(D - rounded)


@pytest.mark.slow
def test_rankings_tables_show_the_weighted_share_and_the_masks_decision(app, alpha):
    at = app.run()
    weights = {"boolq": 2.0, "rte": 0.5}
    kept = _tune(at, 0.6, weights)
    tasks, _, share = _by_hand(alpha, weights)
    run_page(at, "rankings")
    at.number_input(key="rank_top_n").set_value(200).run()
    assert kept == int((share >= 0.6 - 1e-9).sum())
    col = "kept by the mask (diet τ0.6 boolq×2 rte×0.5)"
    shown = []
    for table in (at.dataframe[0].value, at.dataframe[1].value):  # top and bottom 200 of boolq
        dims = table["dim"].to_numpy()
        assert np.allclose(table["task weight keeping it"], np.round(share[dims], 3))
        assert table[col].tolist() == (share[dims] >= 0.6 - 1e-9).tolist()
        shown += table[col].tolist()
    assert True in shown and False in shown  # both decisions are checked


def test_settings_the_method_does_not_read_are_greyed_out_with_the_reason(app):
    """The app showed a working τ slider for union, random and magnitude (the CLI refuses --threshold there)."""
    at = run_page(app.run(), "mask_builder")
    assert not at.slider(key="threshold").disabled and not at.slider(key="w_boolq").disabled
    at.selectbox(key="method").select("random").run()
    tau = at.slider(key="threshold")
    assert tau.disabled and "Not read now" in tau.help and "random has no vote threshold" in tau.help
    assert at.slider(key="w_boolq").disabled and at.selectbox(key="site").disabled and at.toggle(key="exact").disabled
    assert not at.number_input(key="multiple").disabled and not at.slider(key="sparsity").disabled
    assert any("Not read by random (greyed out): τ: random has no vote threshold" in c.value for c in at.caption)
    at.selectbox(key="method").select("union").run()
    assert at.slider(key="threshold").disabled and "any task keeps" in at.slider(key="threshold").help
    assert not at.slider(key="w_boolq").disabled and not at.toggle(key="exact").disabled
    run_page(at, "agreement")  # the same rule on every page that shows τ
    assert at.slider(key="threshold").disabled and not at.slider(key="w_boolq").disabled


def test_the_dimension_page_says_why_a_dim_whose_share_passes_tau_is_pruned(app, alpha):
    at = app.run()
    _tune(at, 0.6, {"boolq": 2.0})
    at.toggle(key="exact").set_value(True).run()
    _, _, share = _by_hand(alpha, {"boolq": 2.0})
    from diet_explore.masking.build import MaskConfig, build_mask

    keep = build_mask(alpha, MaskConfig(threshold=0.6, weights={"boolq": 2.0}, exact=True)).keep
    dim = int(np.flatnonzero((share >= 0.6 - 1e-9) & ~keep)[0])
    at.session_state["_keep_inspect_dim"] = dim
    run_page(at, "dimension")
    assert metrics(at)["Current mask"] == "pruned"
    assert any(
        f"Pruned although its share reaches τ 0.6 (share {share[dim]:.3f})" in i.value and "--exact keeps exactly" in i.value
        for i in at.info
    )
