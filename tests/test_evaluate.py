"""Quick evaluation: held-out examples, lm-eval's metrics, paired deltas, the lm_eval command."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from diet_explore import data
from diet_explore.adapters.tiny import tiny_model
from diet_explore.errors import DietError
from diet_explore.evaluate import EvalConfig, eval_requests, evaluate_model, evaluate_pair, lm_eval_command, mean_stderr, paired_delta
from diet_explore.prune import prune_model
from diet_explore.tasks.registry import resolve_tasks
from test_scoring import WordTokenizer


def test_evaluation_examples_avoid_the_calibration_draw_and_a_caches_recorded_ids(tmp_path):
    first = eval_requests(EvalConfig(limit=20))
    excluded = {t: [r.doc_id for r in reqs[:5]] for t, reqs in first.items()}
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"config": {"samples": 100}, "tasks": {t: {"sample_ids": ids} for t, ids in excluded.items()}}))
    again = eval_requests(EvalConfig(limit=20, exclude_cache=str(tmp_path)))
    assert list(again) == [s.name for s in resolve_tasks("all")] and len(again) == 7
    for spec in resolve_tasks("all"):
        ids = [r.doc_id for r in again[spec.name]]
        assert len(ids) == len(set(ids)) == 20
        assert not set(ids) & set(data.calibration_ids(spec, 100))  # the default profile's draw
        assert not set(ids) & set(excluded[spec.name])  # the cache's recorded ids
        assert ids[:15] == [r.doc_id for r in first[spec.name]][5:]  # the same walk, the 5 excluded skipped


def test_metrics_are_lm_evals():
    assert mean_stderr(np.array([1, 0, 1, 1])) == pytest.approx(0.25)  # std(ddof=1) = 0.5, / sqrt(4)
    m, lo, hi = paired_delta(np.array([1, 1, 0, 0]), np.array([1, 0, 1, 1]))  # d = [0, -1, 1, 1]
    se = math.sqrt(2.75 / 3) / 2
    assert m == pytest.approx(0.25) and lo == pytest.approx(0.25 - 1.959964 * se, abs=1e-6)
    assert hi == pytest.approx(0.25 + 1.959964 * se, abs=1e-6)


def test_dense_vs_pruned_on_the_same_examples():
    dense = tiny_model("qwen2")
    keep = np.ones(64, dtype=bool)
    keep[::3] = False
    pruned = prune_model(dense, keep)
    seen = []
    config = EvalConfig(tasks="rte,winogrande,arc_easy", limit=3, ppl_windows=2)
    pair = evaluate_pair(dense, pruned, WordTokenizer(), config, progress=lambda f, m: seen.append(f))
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) >= 4
    frame = pair.to_frame()
    assert list(frame.index) == ["rte", "winogrande", "arc_easy", "average"]
    assert (frame.loc[["rte", "winogrande", "arc_easy"], "n"] == 3).all()
    for t in ("rte", "winogrande", "arc_easy"):
        d, p = frame.loc[t, "dense_acc"], frame.loc[t, "pruned_acc"]
        assert frame.loc[t, "delta_acc"] == pytest.approx(p - d)
        assert frame.loc[t, "delta_acc_ci_low"] <= p - d <= frame.loc[t, "delta_acc_ci_high"]
    assert math.isnan(frame.loc["winogrande", "dense_acc_norm"])  # undefined for partial scoring, as lm-eval
    assert frame.loc["arc_easy", "metric"] == "acc_norm" and frame.loc["rte", "metric"] == "acc"
    assert frame.loc["average", "delta_main"] == pytest.approx(
        np.mean([frame.loc[t, "delta_main"] for t in ("rte", "winogrande", "arc_easy")]))
    preds = pair.dense.predictions
    assert len(preds) == 9 and {p["task"] for p in preds} == {"rte", "winogrande", "arc_easy"}
    for p in preds:
        assert p["pred"] == int(np.argmax(p["lls"])) and p["correct"] == int(p["pred"] == p["gold"])
    assert [p["doc_id"] for p in preds] == [p["doc_id"] for p in pair.pruned.predictions]
    assert pair.dense.perplexity > 1 and pair.pruned.perplexity > 1
    assert pair.dense.perplexity != pytest.approx(pair.pruned.perplexity)
    json.dumps(pair.to_json_dict())  # serialisable as is


def test_a_model_against_itself_has_zero_delta_and_a_zero_width_interval():
    model = tiny_model("llama")
    config = EvalConfig(tasks="rte", limit=4, perplexity=False)
    dense = evaluate_model(model, WordTokenizer(), config)
    pair = evaluate_pair(model, model, WordTokenizer(), config, dense_result=dense)
    assert pair.dense is dense
    assert pair.average_delta() == (0.0, 0.0, 0.0)
    assert pair.to_frame().loc["rte", "pruned_acc"] == dense.tasks["rte"].correct.mean()


def test_lm_eval_command_uses_lm_evals_task_names():
    cmd = lm_eval_command("out/pruned", "all", limit=50)
    assert cmd == ("lm_eval --model hf --model_args pretrained=out/pruned,dtype=float32 --tasks boolq,rte,hellaswag,"
                   "winogrande,arc_easy,arc_challenge,openbookqa --batch_size 8 --limit 50")
    assert lm_eval_command("m", ["rte"]).endswith("--tasks rte --batch_size 8")


def test_eval_config_round_trips_and_refuses_bad_values():
    config = EvalConfig(tasks=["rte"], limit=7, perplexity=False)
    assert EvalConfig.from_json(config.to_json()) == config
    with pytest.raises(DietError, match="limit must be at least 1"):
        EvalConfig(limit=0)
    with pytest.raises(DietError, match="unknown EvalConfig field"):
        EvalConfig.from_dict({"limt": 3})
