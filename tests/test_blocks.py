"""Scoring in blocks interleaved across tasks: the order, identical predictions, the block log that
a resume reuses, stopping between forward passes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_scoring import WordTokenizer

from diet_explore.evaluation.blocks import BLOCK_FIRST, ScoreLog, Stopped, Unit, block_bounds, interleaved_blocks, score_blocks
from diet_explore.evaluation.evaluate import EvalConfig, eval_requests, evaluate_model, evaluate_models
from diet_explore.evaluation.scoring import LoglikelihoodScorer
from diet_explore.models.adapters.tiny import tiny_model
from diet_explore.pruning.slicing import prune_model

CONFIG = EvalConfig(tasks="rte,winogrande,arc_easy", limit=9, perplexity=False)


@pytest.fixture(scope="module")
def requests():
    return eval_requests(CONFIG)


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama")


def test_blocks_start_small_double_and_cover_every_example_once():
    assert block_bounds(0) == []
    assert block_bounds(3, first=2, cap=16) == [(0, 2), (2, 3)]
    assert block_bounds(50, first=2, cap=16) == [(0, 2), (2, 6), (6, 14), (14, 30), (30, 46), (46, 50)]
    assert block_bounds(5, first=1, cap=1) == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]


def test_every_block_holds_the_next_examples_of_every_task_in_request_order(requests):
    blocks = interleaved_blocks(requests)
    first = blocks[0]
    assert [(r.task, r.doc_id) for r in first] == [
        (t, r.doc_id) for t, reqs in requests.items() for r in reqs[:BLOCK_FIRST]
    ]  # the first block already covers every task
    flat = [(r.task, r.doc_id) for b in blocks for r in b]
    assert sorted(flat) == sorted((r.task, r.doc_id) for reqs in requests.values() for r in reqs) and len(set(flat)) == len(flat)
    for t, reqs in requests.items():  # within a task, the held-out draw's order is kept
        assert [d for task, d in flat if task == t] == [r.doc_id for r in reqs]


@pytest.mark.slow
def test_blocks_give_the_same_scores_and_predictions_as_one_call(requests, model):
    tok = WordTokenizer()
    flat = [r for reqs in requests.values() for r in reqs]
    one = LoglikelihoodScorer(model, tok, workers=1).score(flat)
    for workers in (1, 2):
        got = score_blocks({"m": LoglikelihoodScorer(model, tok, workers=workers)}, requests)["m"]
        assert [(s.task, s.doc_id) for s in got] == [(s.task, s.doc_id) for s in one]  # request order
        assert [s.pred for s in got] == [s.pred for s in one] and [s.pred_norm for s in got] == [s.pred_norm for s in one]
        np.testing.assert_allclose([x for s in got for x in s.lls], [x for s in one for x in s.lls], atol=1e-4, rtol=0)


def test_two_models_are_scored_block_by_block_in_turn(requests, model):
    keep = np.ones(64, dtype=bool)
    keep[::4] = False
    pruned = prune_model(model, keep)
    seen: list[tuple[str, int]] = []
    results = evaluate_models(
        {"dense": model, "pruned": pruned},
        WordTokenizer(),
        CONFIG,
        requests=requests,
        on_block=lambda unit, scores: seen.append((unit.label, unit.index)),
    )
    n_blocks = len(interleaved_blocks(requests))
    assert sorted(seen) == sorted((label, k) for k in range(n_blocks) for label in ("dense", "pruned"))
    assert sorted(seen[:2]) == [("dense", 0), ("pruned", 0)]  # the first block of each model comes first, on its own
    alone = {
        label: evaluate_model(m, WordTokenizer(), CONFIG, requests=requests)
        for label, m in (("dense", model), ("pruned", pruned))
    }
    for label in ("dense", "pruned"):
        assert [s.pred for s in results[label].scores] == [s.pred for s in alone[label].scores]
        assert results[label].average() == alone[label].average()
        assert results[label].wall_time_s > 0


def test_a_resume_reuses_the_stored_blocks_and_scores_only_the_rest(requests, model, tmp_path, monkeypatch):
    tok = WordTokenizer()
    log = ScoreLog(tmp_path / "blocks")
    full = score_blocks({"m": LoglikelihoodScorer(model, tok)}, requests, log=log)["m"]
    stored = sorted((tmp_path / "blocks" / "m").glob("*.json"))
    assert len(stored) == len(interleaved_blocks(requests))
    stored[-1].unlink()  # the last block never finished
    stored[0].write_text("{not json")  # a damaged block is scored again, not trusted
    ran: list[int] = []
    real = LoglikelihoodScorer._run_batch
    monkeypatch.setattr(LoglikelihoodScorer, "_run_batch", lambda self, batch: ran.append(len(batch)) or real(self, batch))
    reused: list[int] = []
    again = score_blocks(
        {"m": LoglikelihoodScorer(model, tok, workers=1)}, requests, log=log, on_block=lambda u, s: reused.append(u.index)
    )["m"]
    blocks = interleaved_blocks(requests)
    assert sum(ran) == len(blocks[0]) + len(blocks[-1])  # only the two missing blocks' rows ran again
    assert sorted(reused) == list(range(len(blocks)))
    np.testing.assert_allclose([x for s in again for x in s.lls], [x for s in full for x in s.lls], atol=1e-4, rtol=0)
    assert json.loads(stored[0].read_text())["label"] == "m"  # rewritten whole


def test_a_block_of_other_examples_is_not_reused(requests, model, tmp_path):
    log = ScoreLog(tmp_path)
    blocks = interleaved_blocks(requests)
    unit = Unit("m", 0, tuple(blocks[0]))
    scores = LoglikelihoodScorer(model, WordTokenizer()).score(list(unit.requests))
    log.save(unit, scores)
    assert [s.lls for s in log.load(unit)] == [s.lls for s in scores]
    assert log.load(Unit("m", 0, tuple(blocks[1]))) is None  # the file is for block 0's examples
    assert log.load(Unit("other", 0, unit.requests)) is None


def test_a_stop_between_forward_passes_keeps_every_finished_block(requests, model, tmp_path):
    log = ScoreLog(tmp_path)
    finished: list[int] = []
    asked = {"n": 0}

    def stop_after_two_blocks():
        asked["n"] += 1
        return "stopped" if len(finished) >= 2 else None

    with pytest.raises(Stopped) as info:
        score_blocks(
            {"m": LoglikelihoodScorer(model, WordTokenizer(), batch_tokens=64, workers=1)},
            requests,
            log=log,
            on_block=lambda u, s: finished.append(u.index),
            should_stop=stop_after_two_blocks,
        )
    assert info.value.reason == "stopped" and finished == [0, 1]
    assert sorted(p.name for p in (tmp_path / "m").glob("*.json")) == ["00000.json", "00001.json"]
    assert asked["n"] >= 3  # asked after every forward pass, not only at block ends
