"""Paired metrics of a pruned model against the dense one: each metric recomputed independently from
the per-example log-likelihoods, and every 95% CI inside its metric's range at n = 1, 2, 5 and with
zero variance (never a [0, 0] that claims certainty from a handful of examples)."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy import special
from scipy import stats as sps

from diet_explore.core.errors import DietError
from diet_explore.evaluation.metrics import (
    BOOTSTRAP_RESAMPLES,
    MAIN,
    METRIC_RANGES,
    PAIRED_METRICS,
    TOO_FEW,
    average_interval,
    expanded_alpha,
    paired_metrics,
    paired_proportion_delta,
    proportion,
    wilson_interval,
)
from diet_explore.evaluation.scoring import ChoiceScores
from diet_explore.tasks.registry import resolve_tasks

SPECS = {s.name: s for s in resolve_tasks("all")}


def _scores(task: str, rng, n: int, n_choices: int = 4, same_as: list[ChoiceScores] | None = None, noise: float = 1.0):
    """n random requests of ``task`` (choice texts of random lengths); with ``same_as``, the same
    examples with the log-likelihoods perturbed by ``noise`` (a "pruned" model)."""
    out = []
    for i in range(n):
        if same_as is not None:
            src = same_as[i]
            lls = [x + noise * rng.normal() for x in src.lls]
            out.append(ChoiceScores(task, src.doc_id, lls, src.is_greedy, src.n_tokens, src.gold, src.choice_texts))
            continue
        c = n_choices if task != "arc_easy" else int(rng.integers(3, 6))  # ARC has 3 to 5 choices
        texts = ["x" * int(rng.integers(1, 30)) for _ in range(c)]
        if task == "winogrande":  # partial scoring: one continuation for every choice
            texts = [texts[0]] * c
        lls = [float(-rng.uniform(1, 40)) for _ in range(c)]
        out.append(ChoiceScores(task, 1000 + i, lls, [False] * c, [3] * c, int(rng.integers(0, c)), texts))
    return out


def _pair(tasks=("boolq", "hellaswag", "winogrande", "arc_easy"), n=30, seed=0, noise=1.0):
    rng = np.random.default_rng(seed)
    dense = {t: _scores(t, rng, n) for t in tasks}
    pruned = {t: _scores(t, rng, n, same_as=dense[t], noise=noise) for t in tasks}
    return dense, pruned


# ------------------------------------------------------------------- independent recomputations
def _argmax_first(values) -> int:
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


def _pred(s: ChoiceScores, norm: bool) -> int:
    return _argmax_first([ll / len(t) for ll, t in zip(s.lls, s.choice_texts)] if norm else list(s.lls))


def _wilson(k: int, n: int) -> tuple[float, float]:
    ci = sps.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return ci.low, ci.high


def _newcombe(a: list[int], b: list[int]) -> tuple[float, float, float]:
    """Newcombe's paired method 10 from the 2x2 table (rows: b right/wrong; columns: a right/wrong),
    as in Fagerland, Lydersen & Laake, "Statistical Analysis of Contingency Tables", ch. 8."""
    t = np.zeros((2, 2))
    for x, y in zip(a, b):
        t[1 - y, 1 - x] += 1
    n = t.sum()
    row, col = t.sum(1), t.sum(0)
    p1, p2 = row[0] / n, col[0] / n
    l1, u1 = _wilson(int(row[0]), int(n))
    l2, u2 = _wilson(int(col[0]), int(n))
    if 0 in (row[0], row[1], col[0], col[1]):
        psi = 0.0
    else:
        cross = t[0, 0] * t[1, 1] - t[0, 1] * t[1, 0]
        root = math.sqrt(row[0] * row[1] * col[0] * col[1])
        psi = (cross - n / 2) / root if cross > n / 2 else (0.0 if cross >= 0 else cross / root)
    est = p1 - p2
    low = est - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2 - 2 * psi * (p1 - l1) * (u2 - p2))
    high = est + math.sqrt((p2 - l2) ** 2 + (u1 - p1) ** 2 - 2 * psi * (p2 - l2) * (u1 - p1))
    return est, low, high


def _kl(p_lls, q_lls) -> float:
    return float(sps.entropy(special.softmax(p_lls), special.softmax(q_lls)))


def test_every_metric_equals_an_independent_recomputation_from_the_log_likelihoods():
    dense, pruned = _pair(n=40)
    res = paired_metrics(dense, pruned, SPECS)
    assert set(res) == {"tasks", "average"} and list(res["tasks"]) == list(dense)
    for t in dense:
        spec, d, p = SPECS[t], dense[t], pruned[t]
        got = res["tasks"][t]
        assert set(got) == {*PAIRED_METRICS, MAIN}
        for metric, norm in (("acc", False), ("acc_norm", True)):
            if metric not in spec.metrics:
                assert got[metric]["delta"] is None and got[metric]["n"] == 0 and "acc_norm" in got[metric]["note"]
                continue
            a = [int(_pred(s, norm) == s.gold) for s in d]
            b = [int(_pred(s, norm) == s.gold) for s in p]
            est, lo, hi = _newcombe(a, b)
            assert got[metric]["delta"] == pytest.approx(np.mean(b) - np.mean(a)) == pytest.approx(est)
            assert (got[metric]["ci_low"], got[metric]["ci_high"]) == pytest.approx((lo, hi), abs=1e-12)
            assert got[metric]["n"] == 40
        norm = spec.main_metric == "acc_norm"
        agree = [int(_pred(x, norm) == _pred(y, norm)) for x, y in zip(d, p)]
        assert got["agreement"]["delta"] == pytest.approx(np.mean(agree))
        assert (got["agreement"]["ci_low"], got["agreement"]["ci_high"]) == pytest.approx(_wilson(sum(agree), 40))
        gold = [(y.lls[y.gold] - x.lls[x.gold]) / len(x.choice_texts[x.gold]) for x, y in zip(d, p)]
        assert got["gold_ll_per_char"]["delta"] == pytest.approx(np.mean(gold), rel=1e-12)
        kl = [_kl(x.lls, y.lls) for x, y in zip(d, p)]
        assert got["choice_kl"]["delta"] == pytest.approx(np.mean(kl), rel=1e-9)
        for metric, values in (("gold_ll_per_char", gold), ("choice_kl", kl)):
            lo, hi = _bootstrap(np.array(values), t, paired_with=np.array(kl if metric == "gold_ll_per_char" else gold))
            assert (got[metric]["ci_low"], got[metric]["ci_high"]) == pytest.approx((lo, hi), rel=1e-9)
        assert got[MAIN] == got[spec.main_metric] | {"metric": spec.main_metric}
    for metric in (*PAIRED_METRICS, MAIN):  # the average: mean of the tasks' deltas, MOVER interval
        have = [res["tasks"][t][metric] for t in dense if res["tasks"][t][metric]["delta"] is not None]
        avg = res["average"][metric]
        m = np.mean([e["delta"] for e in have])
        lo = m - math.sqrt(sum((e["delta"] - e["ci_low"]) ** 2 for e in have)) / len(have)
        hi = m + math.sqrt(sum((e["ci_high"] - e["delta"]) ** 2 for e in have)) / len(have)
        assert (avg["delta"], avg["ci_low"], avg["ci_high"]) == pytest.approx((m, lo, hi))
        assert avg["n"] == sum(e["n"] for e in have)
    assert "winogrande" in res["average"]["acc_norm"]["note"]  # averaged over the tasks that report it


def _bootstrap(values: np.ndarray, task: str, paired_with: np.ndarray) -> tuple[float, float]:
    """The documented bootstrap: resample examples (seeded by task name), the percentile interval at
    Hesterberg's expanded level 2Φ(−√(n/(n−1))·t_{n−1,0.975})."""
    n = len(values)
    idx = np.random.default_rng([0, zlib.crc32(task.encode())]).integers(0, n, size=(BOOTSTRAP_RESAMPLES, n))
    means = values[idx].mean(axis=1)
    a = 2 * sps.norm.cdf(-math.sqrt(n / (n - 1)) * sps.t.ppf(0.975, n - 1))
    return float(np.quantile(means, a / 2)), float(np.quantile(means, 1 - a / 2))


def test_newcombe_and_wilson_match_their_published_forms():
    # Bentur et al. (2009), the worked example of Fagerland et al. ch. 8: table [[1, 1], [7, 12]]
    b = [1, 1] + [0] * 19
    a = [1, 0] + [1] * 7 + [0] * 12
    assert paired_proportion_delta(np.array(a), np.array(b)) == pytest.approx(_newcombe(a, b))
    assert paired_proportion_delta(np.array(a), np.array(b)) == pytest.approx((-0.2857, -0.5069, -0.0256), abs=1e-4)
    for k, n in ((0, 1), (1, 1), (0, 5), (3, 5), (50, 50), (17, 100)):
        assert wilson_interval(k, n) == pytest.approx(_wilson(k, n), abs=1e-12)
    assert proportion(np.array([1, 1, 0, 1])) == pytest.approx((0.75, *_wilson(3, 4)))


def test_the_expanded_bootstrap_level_widens_small_samples_only():
    assert expanded_alpha(2) < 1e-10  # two examples: the whole range of resampled means
    assert expanded_alpha(5) == pytest.approx(0.0019, abs=1e-4)
    assert expanded_alpha(400) == pytest.approx(0.049, abs=1e-3)  # ~ the plain 5% at large n


def test_the_average_combines_task_intervals_by_mover():
    m, lo, hi = average_interval([(0.1, -0.1, 0.3), (0.0, -0.2, 0.2)])
    assert (m, lo, hi) == pytest.approx((0.05, 0.05 - math.sqrt(0.2**2 + 0.2**2) / 2, 0.05 + math.sqrt(0.2**2 + 0.2**2) / 2))


# ------------------------------------------------------------------- ranges at small n
def _in_range(e: dict, metric: str) -> None:
    low, high = METRIC_RANGES[metric]
    if e["delta"] is None:
        return
    assert low <= e["delta"] <= high
    if e["ci_low"] is None:
        assert e["ci_high"] is None and TOO_FEW in e["note"]
        return
    assert low <= e["ci_low"] <= e["ci_high"] <= high
    assert e["ci_low"] < e["ci_high"], f"{metric}: a zero-width interval {e}"


@pytest.mark.parametrize("n", [1, 2, 5])
@pytest.mark.parametrize("noise", [0.0, 0.5, 20.0])
def test_every_interval_stays_in_range_at_tiny_n(n, noise):
    dense, pruned = _pair(n=n, seed=n, noise=noise)
    res = paired_metrics(dense, pruned, SPECS)
    for part in (*res["tasks"].values(), res["average"]):
        for metric in PAIRED_METRICS:
            _in_range(part[metric], metric)
    for part in res["tasks"].values():
        assert {part[m]["n"] for m in PAIRED_METRICS} <= {0, n}


def test_zero_variance_says_too_few_examples_never_zero_zero():
    dense, _ = _pair(n=5)
    res = paired_metrics(dense, dense, SPECS)  # a model against itself: every per-example value is equal
    for t, part in res["tasks"].items():
        assert part["acc"]["delta"] == 0.0 and part["acc"]["ci_low"] < 0 < part["acc"]["ci_high"]
        assert part["agreement"]["delta"] == 1.0 and part["agreement"]["ci_low"] < 1.0
        for metric in ("gold_ll_per_char", "choice_kl"):
            e = part[metric]
            assert e["delta"] == 0.0 and e["ci_low"] is None and e["ci_high"] is None
            assert e["note"].startswith(TOO_FEW), (t, e)
    for metric in ("gold_ll_per_char", "choice_kl"):
        avg = res["average"][metric]
        assert avg["ci_low"] is None and TOO_FEW in avg["note"]
    five = paired_proportion_delta(np.ones(5), np.ones(5))  # both right on 5 of 5: the Wilson margin, ± 0.43
    assert five == pytest.approx((0.0, -(1 - 5 / (5 + 1.959964**2)), 1 - 5 / (5 + 1.959964**2)), abs=1e-6)
    one = paired_metrics({"rte": dense["boolq"][:1]}, {"rte": dense["boolq"][:1]}, SPECS)["tasks"]["rte"]
    assert "one example" in one["gold_ll_per_char"]["note"]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 1), st.lists(st.floats(-50, 0), min_size=4, max_size=4), st.integers(0, 3)),
        min_size=1,
        max_size=8,
    )
)
@example(examples=[(0, [0.0, 0.0, 0.0, 0.0], 0), (1, [0.0, 0.0, 0.0, -3.9760306282315964e-300], 0)])  # float noise
def test_intervals_stay_in_range_for_any_small_sample(examples):
    """Any handful of examples, including identical log-likelihoods and ties."""
    texts = ["a", "bb", "ccc", "dddd"]
    dense, pruned = [], []
    for i, (flip, lls, gold) in enumerate(examples):
        dense.append(ChoiceScores("hellaswag", i, lls, [False] * 4, [1] * 4, gold, texts))
        other = lls[::-1] if flip else lls
        pruned.append(ChoiceScores("hellaswag", i, list(other), [False] * 4, [1] * 4, gold, texts))
    res = paired_metrics({"hellaswag": dense}, {"hellaswag": pruned}, SPECS)
    for part in (res["tasks"]["hellaswag"], res["average"]):
        for metric in PAIRED_METRICS:
            _in_range(part[metric], metric)


# ------------------------------------------------------------------- partial results, determinism, speed
def test_partial_results_pair_the_examples_present_in_both_in_any_order():
    dense, pruned = _pair(n=20)
    some = {"boolq": pruned["boolq"][5:12][::-1], "hellaswag": pruned["hellaswag"][:3]}
    res = paired_metrics(dense, some, SPECS)
    assert res["tasks"]["boolq"]["acc"]["n"] == 7 and res["tasks"]["hellaswag"]["acc"]["n"] == 3
    assert res["tasks"]["winogrande"]["acc"] == {
        "delta": None,
        "ci_low": None,
        "ci_high": None,
        "n": 0,
        "note": "no paired examples yet",
    }
    only = paired_metrics({"boolq": dense["boolq"][5:12]}, {"boolq": pruned["boolq"][5:12]}, SPECS)
    assert res["tasks"]["boolq"] == only["tasks"]["boolq"]
    assert res["average"]["acc"]["n"] == 10 and "over 2 of 4 tasks" in res["average"]["acc"]["note"]
    assert paired_metrics(dense, some, SPECS) == res  # deterministic: the bootstrap is seeded


def test_examples_that_differ_between_the_two_results_are_refused():
    dense, pruned = _pair(tasks=("boolq",), n=3)
    s = pruned["boolq"][0]
    pruned["boolq"][0] = ChoiceScores(s.task, s.doc_id, s.lls, s.is_greedy, s.n_tokens, 1 - s.gold, s.choice_texts)
    with pytest.raises(DietError, match="another answer"):
        paired_metrics(dense, pruned, SPECS)
    with pytest.raises(DietError, match="no task entry"):
        paired_metrics(dense, pruned, {})


# ------------------------------------------------------------------- eval --compare-to --json
@pytest.mark.slow
def test_eval_compare_to_json_records_every_paired_metric(tiny_cache_root, tmp_path, capsys):
    """The CLI end to end on a tiny llama and a pruned copy of it: deltas[task][metric] and
    deltas["average"][metric] for every paired metric, equal to paired_metrics of the predictions."""
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from diet_explore.cli import main
    from diet_explore.pruning.saving import save_pruned
    from diet_explore.pruning.slicing import prune_model

    dense = tiny_cache_root.parent / "models" / "tiny-llama"
    model, tok = AutoModelForCausalLM.from_pretrained(dense), AutoTokenizer.from_pretrained(dense)
    keep = np.ones(model.config.hidden_size, dtype=bool)
    keep[: model.config.num_attention_heads * 2] = False  # a kept count the config class accepts
    pruned = save_pruned(prune_model(model, keep), tok, tmp_path / "pruned", source_model=str(dense))
    out, preds = tmp_path / "eval.json", tmp_path / "preds.jsonl"
    argv = ["eval", "--model", str(pruned), "--compare-to", str(dense), "--tasks", "rte,winogrande,arc_easy", "--limit", "4"]
    argv += ["--no-perplexity", "--no-eval-cache", "--device", "cpu", "--json", str(out), "--predictions", str(preds)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "agreement % [95% CI]" in printed and "Δ gold LL/char" in printed
    deltas = json.loads(out.read_text())["deltas"]
    assert list(deltas) == ["rte", "winogrande", "arc_easy", "average"]
    for part in deltas.values():
        assert set(PAIRED_METRICS) <= set(part)
        for metric in PAIRED_METRICS:
            assert {"delta", "ci_low", "ci_high", "n"} <= set(part[metric])
            _in_range(part[metric], metric)
    records = [json.loads(line) for line in preds.read_text().splitlines()]
    for t in ("rte", "winogrande", "arc_easy"):
        mine = [r for r in records if r["task"] == t]
        acc = np.mean([int(r["pruned_pred"] == r["gold"]) - int(r["dense_pred"] == r["gold"]) for r in mine])
        assert deltas[t]["acc"]["delta"] == pytest.approx(acc) and deltas[t]["acc"]["n"] == 4
        norm = SPECS[t].main_metric == "acc_norm"
        key = "pred_norm" if norm else "pred"
        agree = np.mean([int(r[f"pruned_{key}"] == r[f"dense_{key}"]) for r in mine])
        assert deltas[t]["agreement"]["delta"] == pytest.approx(agree)
        kl = np.mean([_kl(r["dense_lls"], r["pruned_lls"]) for r in mine])
        assert deltas[t]["choice_kl"]["delta"] == pytest.approx(kl, abs=1e-5)  # the file rounds lls to 1e-6
    assert deltas["winogrande"]["acc_norm"]["delta"] is None
