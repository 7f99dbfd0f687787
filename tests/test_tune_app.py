"""AppTest of the Tune page on the tiny profiled llama: a finished tune job's trials, parallel
coordinates, importance and test-set sentences, the best mask opened in the Mask builder, and a
tune queued from the page with the page's settings."""

from __future__ import annotations

import pytest
from app_helpers import chart_by_key, run_page

from diet_explore.experiments import tune
from diet_explore.experiments.jobs import JobStore, run_worker
from diet_explore.masking.build import MaskConfig

pytest.importorskip("optuna")


def finished_tune(tiny_cache_root, runs) -> dict:
    from diet_explore.profiling.cache import load_cache

    cache = load_cache(tiny_cache_root / "tiny")
    cfg = tune.TuneConfig(
        model=cache.model_name,
        cache=str(tiny_cache_root / "tiny"),
        name="app",
        sparsity=0.25,
        trials=3,
        limit=6,
        tasks=["rte", "arc_easy"],
        device="cpu",
        objective="gold_ll_per_char",
        baselines=["default", "random"],
        pruner="none",
    )
    store = JobStore(runs)
    job_id, _ = store.submit("tune", cfg.to_dict(), "tune app")
    assert run_worker(store, until_empty=True) == 1
    job = store.get(job_id)
    assert job["status"] == "done", job.get("error")
    return job


@pytest.mark.slow
def test_a_finished_tune_shows_its_trials_and_verdict_and_opens_the_best_mask(tiny_app, tiny_cache_root):
    at, dirs = tiny_app
    runs = dirs["runs"]
    job = finished_tune(tiny_cache_root, runs)
    at = run_page(at.run(), "tune")
    assert not at.error, [e.value for e in at.error]
    parallel = chart_by_key(at, "tu_parallel")
    dims = parallel["data"][0]["dimensions"]
    assert len(dims[-1]["values"]) == 3  # one line per complete trial
    assert [d["label"] for d in dims][:2] == ["weight rte", "weight arc_easy"]
    history = chart_by_key(at, "tu_history")
    assert sum(len(t["x"]) for t in history["data"] if t.get("mode") == "markers") == 3
    text = " ".join(m.value for m in at.markdown)
    for sentence in job["result"]["sentences"]:
        assert sentence in text
    best = job["result"]["best"]
    at.button(key="tu_open_Mask builder").click().run()
    assert not at.exception, [e.value for e in at.exception]
    mc = MaskConfig.from_dict(best["mask"])
    assert at.slider(key="sparsity").value == pytest.approx(mc.sparsity)
    for t in ("rte", "arc_easy"):
        assert at.slider(key=f"w_{t}").value == pytest.approx(mc.weights.get(t, 1.0))


def test_start_tune_queues_a_job_with_the_pages_settings(tiny_app):
    at, dirs = tiny_app
    runs = dirs["runs"]
    at = run_page(at.run(), "tune")
    at.number_input(key="tu_trials").set_value(2).run()
    at.multiselect(key="tu_fix").set_value(["site"]).run()
    at.button(key="tu_run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    jobs = [j for j in JobStore(runs).jobs() if j["type"] == "tune"]
    assert len(jobs) == 1
    cfg = tune.TuneConfig.from_dict(jobs[0]["config"])
    assert cfg.trials == 2 and cfg.fixed == {"site": "residual"} and cfg.exact
    JobStore(runs).stop(jobs[0]["job_id"])
