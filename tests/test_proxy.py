"""The Mask builder's live proxy: each value recomputed from the cache arrays, the validation against
the committed sweeps recomputed from their rows, and the page showing both."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from app_helpers import DOCS_RESULTS, run_page
from scipy import stats

from diet_explore.experiments.proxy import MIN_RUNS, describe, predicts, run_proxies, validate_proxies
from diet_explore.experiments.reports import RESULTS_DIR_ENV, load_sweep
from diet_explore.masking.build import MaskConfig, build_mask
from diet_explore.masking.proxy import mask_proxies

SMOLLM2 = DOCS_RESULTS / "compare-smollm2-135m.results.jsonl"


@pytest.fixture(autouse=True)
def _committed_sweeps(monkeypatch):
    """The committed sweeps of this checkout, also when the library runs from a copy (tools/mutants.py)."""
    monkeypatch.setenv(RESULTS_DIR_ENV, str(DOCS_RESULTS))


def _copy_config(name: str, folder) -> None:
    """A committed sweep's config into ``folder``, its cache path made absolute (the copy is elsewhere)."""
    config = json.loads((DOCS_RESULTS / f"{name}.config.json").read_text())
    config["cache"] = str(DOCS_RESULTS.parents[1] / config["cache"])
    (folder / "config.json").write_text(json.dumps(config))


def test_the_proxy_equals_a_recomputation_from_the_cache_arrays(alpha):
    for config in (MaskConfig(sparsity=0.3), MaskConfig(method="random", sparsity=0.5), MaskConfig(sparsity=0.2, site="normed")):
        keep = build_mask(alpha, config).keep
        rows = mask_proxies(alpha, keep)
        assert [r["task"] for r in rows] == [*alpha.task_names, "average"]
        for row in rows[:-1]:
            for site in alpha.sites:
                layer = np.asarray(alpha.tasks[row["task"]].layer[site], dtype=np.float64)  # (L, D)
                s = layer.sum(axis=0) / layer.shape[0]
                assert row[f"kept_mass@{site}"] == pytest.approx(s[keep].sum() / s.sum(), rel=1e-12)
                assert row[f"kept_energy@{site}"] == pytest.approx((s[keep] ** 2).sum() / (s**2).sum(), rel=1e-12)
        for col in rows[0]:
            if col != "task":
                assert rows[-1][col] == pytest.approx(np.mean([r[col] for r in rows[:-1]]))
    everything = mask_proxies(alpha, np.ones(alpha.hidden_size, dtype=bool))
    assert all(v == pytest.approx(1.0) for r in everything for k, v in r.items() if k != "task")


def test_the_validation_rebuilds_each_runs_mask_and_recomputes_its_rank_correlations():
    sweep = load_sweep(SMOLLM2)
    records, notes = run_proxies(sweep)
    assert {r["key"] for r in records} == {r["key"] for r in sweep.pruned}  # every run's mask rebuilt, same kept count
    loo = [r for r in records if r["key"] == "leave-one-out@0.1"]
    diet = [r for r in records if r["key"] == "diet@0.1"]
    assert len({round(r["kept_mass@residual"], 12) for r in diet}) == len(diet)  # one mask, each task's own mass
    assert {r["task"] for r in loo} == set(sweep.rows[0]["tasks"])
    val = validate_proxies([SMOLLM2])
    c = val.correlations
    runs = {}
    for r in records:
        runs.setdefault(r["key"], []).append(r)
    x = [np.mean([t["kept_energy@residual"] for t in v]) for v in runs.values()]
    y = [np.mean([sweep.vs_dense()[k]["tasks"][t["task"]]["main"]["delta"] for t in v]) for k, v in runs.items()]
    rho, p = stats.spearmanr(np.round(x, 12), np.round(y, 12))
    got = c[(c["proxy"] == "kept_energy@residual") & (c["level"] == "average") & (c["target"] == "delta_main")].iloc[0]
    assert (got["rho"], got["p"], got["n"]) == pytest.approx((rho, p, len(runs)))
    assert got["predicts"] == (rho > 0 and p < 0.05 and len(runs) >= MIN_RUNS)
    within = c[(c["proxy"] == "kept_energy@residual") & (c["level"] == "within sparsity") & (c["target"] == "delta_main")].iloc[0]
    sp = [next(r["sparsity"] for r in v) for v in runs.values()]
    cx = np.array(x) - [np.mean([a for a, b in zip(x, sp) if b == s]) for s in sp]  # centred on each sparsity's mean
    cy = np.array(y) - [np.mean([a for a, b in zip(y, sp) if b == s]) for s in sp]
    assert within["rho"] == pytest.approx(stats.spearmanr(np.round(cx, 12), np.round(cy, 12))[0])
    verdict, text = describe(val, "kept_energy@residual", "smollm2-135m")
    assert verdict == bool(got["predicts"]) and f"ρ = {rho:+.2f}" in text and "12 runs" in text
    verdict, text = describe(val, "kept_energy@residual", "another-model")
    assert verdict is None and "not validated for it" in text  # other models' results are no verdict for this one


def test_runs_that_cannot_be_rebuilt_are_skipped_and_named(tmp_path):
    folder = tmp_path / "sweep"
    folder.mkdir()
    rows = [json.loads(line) for line in SMOLLM2.read_text().splitlines()]
    rows[1] = {**rows[1], "method": "slicegpt", "key": "slicegpt@0.1"}  # a method without a dim mask
    rows[2] = {**rows[2], "n_keep": rows[2]["n_keep"] - 9}  # a count the rebuilt mask does not keep
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _copy_config("compare-smollm2-135m", folder)
    records, notes = run_proxies(load_sweep(folder))
    assert {r["key"] for r in records} == {r["key"] for r in rows[3:]}
    assert any("slicegpt@0.1 skipped" in n for n in notes) and any(f"{rows[2]['key']} skipped" in n for n in notes)
    (folder / "config.json").write_text(
        json.dumps({"model": "x", "cache": str(tmp_path / "nowhere"), "threshold": 0.5, "exact": True, "mask_seed": 0})
    )
    assert run_proxies(load_sweep(folder))[0] == []


def test_the_mask_builder_shows_the_proxy_and_its_validation(app, alpha):
    at = run_page(app.run(), "mask_builder")
    table = next(d.value for d in at.table if "kept_mass" in d.value.columns)  # the mask's site: residual
    expected = mask_proxies(alpha, build_mask(alpha, MaskConfig()).keep)
    assert list(table["task"]) == [r["task"] for r in expected]
    np.testing.assert_allclose(table["kept_mass"], [round(r["kept_mass@residual"], 4) for r in expected])
    np.testing.assert_allclose(table["kept_energy"], [round(r["kept_energy@residual"], 4) for r in expected])
    text = " ".join(c.value for c in at.caption)
    assert "kept_energy" in text and "compare-smollm2-135m" in text and "runs" in text
    at.slider(key="sparsity").set_value(0.6).run()
    moved = next(d.value for d in at.table if "kept_mass" in d.value.columns)
    assert moved["kept_mass"].iloc[-1] < table["kept_mass"].iloc[-1]  # follows the slider


def test_the_page_says_so_when_the_proxy_does_not_predict(app, alpha, monkeypatch, tmp_path):
    import diet_explore.experiments.proxy as proxy

    at = run_page(app.run(), "mask_builder")  # no sweep of this cache's model: not validated for it, no warning
    assert not any("Neither proxy" in w.value for w in at.warning)
    assert "not validated for it" in " ".join(c.value for c in at.caption)
    folder = tmp_path / "gemma"
    folder.mkdir()
    shutil.copy(DOCS_RESULTS / "compare-gemma3-270m.results.jsonl", folder / "results.jsonl")
    _copy_config("compare-gemma3-270m", folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"model": alpha.model_name}))  # as if of this model
    monkeypatch.setenv(RESULTS_DIR_ENV, str(tmp_path / "none"))  # only the Gemma sweep, where it does not predict
    monkeypatch.setenv(proxy.SWEEP_DIRS_ENV, str(folder))
    at = run_page(app.run(), "mask_builder")
    assert any("Neither proxy passes the validation" in w.value for w in at.warning)
    assert "does not predict" in " ".join(c.value for c in at.caption)


def test_the_predicts_rule_wants_a_positive_significant_correlation_over_enough_runs():
    assert predicts(0.8, 0.001, MIN_RUNS)
    assert not predicts(-0.8, 0.001, 12)  # more kept activation going with worse accuracy is no forecast
    assert not predicts(0.5, 0.09, 12) and not predicts(0.99, 0.001, MIN_RUNS - 1)
