"""The dense model is scored once per (model, examples, settings): a Prune & evaluate job stores it
in the evaluation cache and a sweep on the same examples reuses it (``evaluate.cached_result``, the
one lookup both call)."""

from __future__ import annotations

import pytest
from job_helpers import prune_eval_config, stop_workers

from diet_explore.evaluation import evaluate as E
from diet_explore.experiments.jobs import JobStore, run_worker
from diet_explore.experiments.runs import RunStore
from diet_explore.experiments.sweep import CompareConfig, run_compare


@pytest.fixture
def store(tmp_path):
    s = JobStore(tmp_path / "runs")
    yield s
    stop_workers(s)


@pytest.mark.slow
def test_a_job_then_a_sweep_on_the_same_examples_score_the_dense_model_once(store, tiny_cache_root, tmp_path, monkeypatch):
    import diet_explore.experiments.sweep as S
    import diet_explore.experiments.tuning as T

    dense_scored: list[str] = []  # who scored the dense model
    real_models, real_model = E.evaluate_models, E.evaluate_model

    def counting_models(models, *a, **kw):
        dense_scored.extend("job" for label in models if label == "dense")
        return real_models(models, *a, **kw)

    def counting_model(model, tokenizer, config, progress=None, name="model", *a, **kw):
        if name == "dense":
            dense_scored.append("sweep")
        return real_model(model, tokenizer, config, progress, name, *a, **kw)

    monkeypatch.setattr(T, "evaluate_models", counting_models)
    monkeypatch.setattr(S, "evaluate_model", counting_model)
    config = prune_eval_config(tiny_cache_root, limit=5, tasks=("rte", "arc_easy"), ppl=True)
    store.submit("prune_eval", config, "job")
    assert run_worker(store, until_empty=True) == 1
    assert dense_scored == ["job"]

    ecfg = config["eval"]
    sweep = CompareConfig(
        model=config["model"],
        cache=config["cache"],
        sparsities=[0.5],
        methods=["random"],
        tasks=ecfg["tasks"],
        limit=ecfg["limit"],
        perplexity=ecfg["perplexity"],
        ppl_windows=ecfg["ppl_windows"],
        device="cpu",
    )
    seen: list[tuple[float, str]] = []
    rows = run_compare(
        sweep,
        tmp_path / "sweep",
        store=RunStore(tmp_path / "runs2"),
        log=lambda m: None,
        eval_cache=E.EvalCache(),
        progress=lambda f, m: seen.append((f, m)),
    )
    # the bar and its text agree: each message starts with the bar's share of the whole sweep (the dense row is run 1)
    assert seen and all(
        m.startswith(f"{f:.0%} of the sweep · run 2 of 2 (dense + 1 pruned run; now random@0.5): ")
        for f, m in seen
        if m != "done"
    )
    assert dense_scored == ["job"]  # the sweep reused the job's dense results
    dense = next(r for r in rows if r["key"] == "dense")
    assert "reused" in dense
    job_run = store.runs.records()[0]
    for row in job_run["task_results"]:  # the same numbers, not merely a skipped evaluation
        assert dense["tasks"][row["task"]]["main"] == pytest.approx(row["dense_main"])
