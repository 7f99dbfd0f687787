"""The decision sentence (evaluation/decision.py): its interval is the one an independent paired
bootstrap over the stored per-example results gives; its verdict follows the interval; "not decided
yet" only while a run is going."""

from __future__ import annotations

import re

import numpy as np
import pytest

from diet_explore.evaluation.decision import decide, decision_sentences, format_entry, format_estimate, reconcile
from diet_explore.evaluation.metrics import MAIN
from diet_explore.experiments.history import paired_between
from diet_explore.experiments.runs import RunStore

TASKS = ("rte", "boolq", "copa")


def _examples(correct: np.ndarray, rng) -> dict[str, list]:
    """Two-choice examples whose gold choice is the higher log-likelihood exactly where ``correct``."""
    gold = rng.integers(0, 2, len(correct))
    lls = []
    for g, ok in zip(gold, correct):
        pair = [-5.0, -5.0]
        pair[g] = -4.0 if ok else -6.0
        lls.append(pair)
    return {"doc_id": list(range(len(correct))), "gold": [int(g) for g in gold], "lls": lls, "chars": [[7, 9]] * len(correct)}


def _stored_pair(tmp_path, n=300, p_ref=0.55, lift=0.05, seed=0):
    """Two stored runs (reference, candidate) on the same examples of three tasks; the candidate is
    right on ``lift`` more of them, correlated with the reference (they share most answers)."""
    rng = np.random.default_rng(seed)
    store = RunStore(tmp_path / "runs")
    ref_rows, cand_rows = [], []
    for t in TASKS:
        ref = rng.random(n) < p_ref
        # right where the reference is wrong w.p. a, wrong where it is right w.p. b: mean lift (1 − p)·a − p·b
        a = 0.3
        b = ((1 - p_ref) * a - lift) / p_ref
        flip = rng.random(n)
        cand = np.where(ref, flip >= b, flip < a)
        gold_seed = int(rng.integers(1 << 30))
        for rows, correct in ((ref_rows, ref), (cand_rows, cand)):
            ex = _examples(correct, np.random.default_rng(gold_seed))
            rows.append({"task": t, "n": n, "metric": "acc", "examples": {"pruned": ex}})
    ids = [
        store.save({"model": "m", "method": m, "sparsity": 0.2, "task_results": rows})
        for m, rows in (("random", ref_rows), ("diet", cand_rows))
    ]
    return store.load(ids[0]), store.load(ids[1])


def _correct(record) -> dict[str, np.ndarray]:
    out = {}
    for row in record["task_results"]:
        ex = row["examples"]["pruned"]
        out[row["task"]] = np.array([np.argmax(lls) == g for lls, g in zip(ex["lls"], ex["gold"])], dtype=float)
    return out


def _bootstrap(reference, candidate, resamples=4000, seed=1) -> tuple[float, float, float]:
    """An independent paired bootstrap of the mean-over-tasks accuracy difference: resample each
    task's examples (the same draw for both runs), average the per-task differences."""
    rng = np.random.default_rng(seed)
    ref, cand = _correct(reference), _correct(candidate)
    diffs = np.zeros(resamples)
    for t in ref:
        d = cand[t] - ref[t]
        idx = rng.integers(0, len(d), size=(resamples, len(d)))
        diffs += d[idx].mean(axis=1) / len(ref)
    point = float(np.mean([(cand[t] - ref[t]).mean() for t in ref]))
    return point, float(np.quantile(diffs, 0.025)), float(np.quantile(diffs, 0.975))


def _numbers(sentence: str) -> list[float]:
    return [float(x.replace("\u2212", "-")) for x in re.findall(r"[+\u2212-]\d+\.\d+", sentence)]


def test_the_sentence_interval_matches_an_independent_paired_bootstrap_over_stored_examples(tmp_path):
    reference, candidate = _stored_pair(tmp_path, lift=0.08)
    paired = paired_between(reference, candidate)
    sentence = decide(paired["average"][MAIN], candidate="diet", reference="random").sentence
    point, low, high = _bootstrap(reference, candidate)
    assert sentence.startswith("diet beats random by ")
    assert sentence.endswith(f"on {3 * 300:,} paired examples")
    shown = _numbers(sentence)  # points, one decimal
    assert shown[0] == pytest.approx(100 * point, abs=0.051)
    assert shown[1] == pytest.approx(100 * low, abs=0.4) and shown[2] == pytest.approx(100 * high, abs=0.4)
    # swapped, the same comparison read the other way round: the sign and the verb flip
    back = decide(paired_between(candidate, reference)["average"][MAIN], candidate="random", reference="diet").sentence
    assert back.startswith("random trails diet by \u2212") and _numbers(back)[0] == pytest.approx(-shown[0])


def test_no_difference_quotes_what_the_interval_rules_out_and_running_is_never_not_decided_after_the_end(tmp_path):
    reference, candidate = _stored_pair(tmp_path, lift=0.0, seed=3)
    entry = paired_between(reference, candidate)["average"][MAIN]
    assert entry["ci_low"] < 0 < entry["ci_high"]
    done = decide(entry, candidate="diet", reference="random")
    assert done.verdict == "no difference" and "not decided" not in done.sentence
    bound = 100 * max(-entry["ci_low"], entry["ci_high"])
    assert f"rules out more than ±{bound:.1f} points" in done.sentence
    going = decide(entry, candidate="diet", reference="random", running=True, tasks=3)
    assert going.verdict == "not decided" and "not decided yet" in going.sentence
    if entry["delta"] != 0:  # the half-width shrinks as 1/sqrt(n): this many more per task bring it to |delta|
        more = int(re.search(r"about ([\d,]+) more examples per task", going.sentence).group(1).replace(",", ""))
        half = (entry["ci_high"] - entry["ci_low"]) / 2
        assert more == pytest.approx((entry["n"] * (half / abs(entry["delta"])) ** 2 - entry["n"]) / 3, abs=1)


def test_a_missing_interval_prints_one_way_everywhere():
    assert format_estimate(None) == "—"
    assert format_estimate(0.1) == "+10.0 (no interval: too few examples)"
    assert format_entry({"delta": 0.1, "ci_low": None, "ci_high": None, "n": 1, "note": "too few examples: one example"}) == (
        "+10.0 (no interval: too few examples)"
    )
    assert format_estimate(-0.0123, -0.02, 0.001, "gold_ll_per_char", unit=True) == "\u22120.012 nats/char [\u22120.020, +0.001]"
    few = decide({"delta": 0.0, "ci_low": None, "ci_high": None, "n": 1}, candidate="a", reference="b")
    assert few.verdict == "too few" and "not decided" not in few.sentence


def test_accuracy_and_gold_ll_pointing_opposite_ways_get_one_sentence_saying_which_to_trust_for_what():
    main = {"delta": -0.01, "ci_low": -0.03, "ci_high": 0.01, "n": 300}
    ll = {"delta": 0.03, "ci_low": 0.02, "ci_high": 0.04, "n": 300}
    line = reconcile(main, ll, candidate="diet", reference="random")
    assert line.startswith("Accuracy and gold log-likelihood disagree: accuracy leans to random")
    assert "gold log-likelihood to diet" in line and "trust accuracy for the benchmark score" in line
    assert reconcile(main, {**ll, "delta": -0.02, "ci_low": -0.03, "ci_high": -0.01}, candidate="d", reference="r") is None
    assert reconcile({**main, "ci_low": -0.03}, {**ll, "ci_low": -0.01}, candidate="d", reference="r") is None  # neither decided
    said = decision_sentences({MAIN: main, "gold_ll_per_char": ll}, candidate="diet", reference="random")
    assert len(said) == 3 and said[2] == line
