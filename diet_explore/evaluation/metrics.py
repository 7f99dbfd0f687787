"""The rules that turn per-example scores into reported numbers: accuracies, stderrs, paired deltas and their CIs.

Absolute numbers (one model):

* acc = argmax of the summed log-likelihood (``choice_pred``); acc_norm = argmax of log-likelihood
  per character of the choice text (``choice_pred_norm``, lm-eval's ``completion_len``);
* which of them a task reports, and which is its headline ("main") number, is the task's registry
  entry (``TaskSpec.metrics`` / ``main_metric``): acc_norm for HellaSwag, ARC and OpenBookQA, acc
  elsewhere, the convention of pruning papers (SliceGPT, DIET); acc_norm is undefined for partial
  scoring (WinoGrande), as in lm-eval;
* stderr = sample standard deviation / sqrt(n), as lm-eval's ``mean_stderr``.

Paired numbers (a pruned model against the dense one on the same examples), ``PAIRED_METRICS``:

=================== ============================================================ ============ ==========================
metric              per example (pruned p vs dense d)                            range        95% CI
=================== ============================================================ ============ ==========================
``acc``             correct_p − correct_d                                        [−1, 1]      Newcombe paired score
``acc_norm``        same, with acc_norm's choice                                 [−1, 1]      Newcombe paired score
``agreement``       1 if p picks the choice d picks (the task's main-metric rule) [0, 1]       Wilson score
``gold_ll_per_char`` (ll_p[gold] − ll_d[gold]) / characters of the gold choice   (−∞, ∞)      bootstrap (expanded %)
``choice_kl``       KL(softmax(ll_d) ‖ softmax(ll_p)) over the choices            [0, ∞)       bootstrap (expanded %)
=================== ============================================================ ============ ==========================

``delta`` is the mean over examples of the per-example value: a difference for acc, acc_norm and
gold_ll_per_char (0 = no change); for agreement it is the share itself (1 = the same choices) and
for choice_kl the mean divergence (0 = the same choice distributions).

The intervals (each rule in one function here):

* ``paired_proportion_delta``: Newcombe's (1998) method 10 for a difference of paired proportions:
  Wilson intervals of both marginals combined with the estimated correlation φ of the pair
  (with its n/2 correction). Valid at small n, never outside [−1, 1], never zero width: n = 5
  examples that both models get right give [−0.43, +0.43], not [0, 0];
* ``proportion``: the Wilson score interval, inside [0, 1]; ``average_proportion`` (one model's
  average accuracy over tasks) combines the tasks' Wilson intervals by MOVER;
* ``bootstrap_intervals``: a seeded paired bootstrap over examples (``BOOTSTRAP_RESAMPLES``
  resamples), the percentile interval at Hesterberg's (2015) expanded level
  α' = 2Φ(−√(n/(n−1))·t_{n−1,0.975}), which corrects the percentile interval's small-n narrowness;
  a resampled mean lies between the smallest and the largest example, so the interval stays inside
  the metric's range. With one example, or examples that all have the same value, there is
  nothing to resample: the interval is ``None`` and ``note`` says "too few examples";
* ``average_interval``: the average over tasks is the unweighted mean of the per-task deltas (the
  paper-style "Avg"); tasks are independent samples, so its interval combines theirs by MOVER
  (Zou & Donner 2008): low = mean − √Σ(δ_t − low_t)² / T, high = mean + √Σ(high_t − δ_t)² / T, the
  "variances add" rule with each task's own asymmetric interval, inside the range because each
  task's is.

``paired_metrics`` (the API the app's running results and the CLI call) returns::

    {"tasks":   {task: {metric: {"delta", "ci_low", "ci_high", "n", "note"?}}},
     "average": {metric: {"delta", "ci_low", "ci_high", "n", "note"?}}}

for every metric of ``PAIRED_METRICS`` plus ``"main"`` (the task's main metric, with ``"metric"``
naming it; its average is the paper-style Δ avg). Values are floats or ``None`` (not computable:
no paired example yet, a metric the task does not report, too few examples for an interval);
``n`` is the number of paired examples used (0 when none); ``note`` says why a value is missing
or what an average leaves out. It works on any subset of examples (running, partial results use
the examples present in both), is deterministic for a given input (the bootstrap is seeded by task
name) and takes 0.05–0.08 s for 7 tasks × 100 examples, 0.3 s for 7 × 400 on 2 shared CPU cores
(``benchmarks/bench_metrics.py``).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import stats

from diet_explore.core.errors import DietError
from diet_explore.tasks.registry import TaskSpec

if TYPE_CHECKING:
    from diet_explore.evaluation.scoring import ChoiceScores

Z95 = 1.959963984540054  # two-sided 95% normal quantile
ALPHA = 0.05
PAIRED_METRICS = ("acc", "acc_norm", "agreement", "gold_ll_per_char", "choice_kl")
MAIN = "main"  # the task's main metric (acc or acc_norm), an extra key of every paired result
METRIC_RANGES = {
    "acc": (-1.0, 1.0),
    "acc_norm": (-1.0, 1.0),
    "agreement": (0.0, 1.0),
    "gold_ll_per_char": (-math.inf, math.inf),
    "choice_kl": (0.0, math.inf),
}
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
TOO_FEW = "too few examples"
Entry = dict[str, Any]  # {"delta", "ci_low", "ci_high", "n", "note"?}
Interval = tuple[float, float, float]  # (estimate, low, high)


# --------------------------------------------------------------------------------------------
# Choices (lm-eval's rules)
# --------------------------------------------------------------------------------------------
def choice_pred(lls) -> Any:
    """acc's choice: the highest summed log-likelihood, along the last axis (the first maximum on
    ties, as lm-eval's np.argmax). An int for one example's (C,) list, an array for (n, C)."""
    return np.argmax(np.asarray(lls, dtype=np.float64), axis=-1)


def choice_pred_norm(lls, chars) -> Any:
    """acc_norm's choice: the highest log-likelihood per character of the choice text, along the last axis."""
    return np.argmax(np.asarray(lls, dtype=np.float64) / np.asarray(chars, dtype=np.float64), axis=-1)


# --------------------------------------------------------------------------------------------
# Absolute numbers
# --------------------------------------------------------------------------------------------
def mean_stderr(x: np.ndarray) -> float:
    """lm-eval's stderr: sample std (ddof=1) / sqrt(n); 0 for a single example."""
    x = np.asarray(x, dtype=float)
    return float(np.std(x, ddof=1) / math.sqrt(len(x))) if len(x) > 1 else 0.0


def average_stderr(stderrs: Sequence[float]) -> float:
    """Standard error of an unweighted mean over independent tasks: sqrt(Σ se_t²) / T."""
    return math.sqrt(sum(s * s for s in stderrs)) / len(stderrs)


@dataclass
class TaskResult:
    task: str
    correct: np.ndarray  # (n,) 0/1
    correct_norm: np.ndarray | None  # (n,) 0/1, None where the task does not report acc_norm
    main_metric: str = "acc"  # the task's headline metric (TaskSpec.main_metric)

    @property
    def n(self) -> int:
        return len(self.correct)

    def metrics(self) -> dict[str, float]:
        out = {
            "n": self.n,
            "acc": float(self.correct.mean()),
            "acc_stderr": mean_stderr(self.correct),
            "acc_norm": float("nan"),
            "acc_norm_stderr": float("nan"),
        }
        if self.correct_norm is not None:
            out.update(acc_norm=float(self.correct_norm.mean()), acc_norm_stderr=mean_stderr(self.correct_norm))
        key = self.main_metric
        out.update(main_metric=key, main=out[key], main_stderr=out[f"{key}_stderr"])
        return out

    def main_correct(self) -> np.ndarray:
        """(n,) 0/1 per example of the headline metric."""
        return self.correct_norm if self.main_metric == "acc_norm" else self.correct


def task_result(spec: TaskSpec, scores: list[ChoiceScores]) -> TaskResult:
    """Per-example correctness of one task's scored requests, for the metrics its registry entry reports."""
    correct = np.array([float(s.pred == s.gold) for s in scores])
    norm = np.array([float(s.pred_norm == s.gold) for s in scores]) if "acc_norm" in spec.metrics else None
    return TaskResult(spec.name, correct, norm, spec.main_metric)


# --------------------------------------------------------------------------------------------
# Intervals
# --------------------------------------------------------------------------------------------
def wilson_interval(k: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion k / n (n ≥ 1), inside [0, 1]."""
    p, z2 = k / n, z * z
    center = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, center - half), min(1.0, center + half)


def proportion(x: np.ndarray) -> Interval:
    """(share, low, high) of 0/1 values: the Wilson score interval."""
    x = np.asarray(x, dtype=bool)
    lo, hi = wilson_interval(float(x.sum()), len(x))
    return float(x.mean()), lo, hi


def paired_proportion_delta(a: np.ndarray, b: np.ndarray) -> Interval:
    """(mean(b) − mean(a), low, high) for 0/1 values of the same examples (``b`` pruned, ``a`` dense):
    Newcombe's (1998) method 10 (Wilson intervals of both proportions, combined with their
    estimated correlation φ). Inside [−1, 1]; never zero width."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    n = len(a)
    n11, n10 = int((b & a).sum()), int((b & ~a).sum())  # b right and a right; b right, a wrong
    n01, n00 = int((~b & a).sum()), int((~b & ~a).sum())
    p1, p2 = (n11 + n10) / n, (n11 + n01) / n
    l1, u1 = wilson_interval(n11 + n10, n)
    l2, u2 = wilson_interval(n11 + n01, n)
    margins = (n11 + n10) * (n01 + n00) * (n11 + n01) * (n10 + n00)
    phi = 0.0
    if margins > 0:
        cross = n11 * n00 - n10 * n01
        if cross > n / 2:
            phi = (cross - n / 2) / math.sqrt(margins)
        elif cross < 0:
            phi = cross / math.sqrt(margins)
    d = p1 - p2
    down = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    up = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    # the bounds are never outside [l1 − u2, u1 − l2] ⊂ [−1, 1]; max/min only remove rounding
    return d, max(d - down, l1 - u2), min(d + up, u1 - l2)


def expanded_alpha(n: int, alpha: float = ALPHA) -> float:
    """Hesterberg's expanded percentile level for a bootstrap of n ≥ 2 examples: the α' whose normal
    quantile matches √(n/(n−1)) times Student's t quantile, so the percentile interval is as wide
    as the t interval at small n."""
    return float(2 * stats.norm.cdf(-math.sqrt(n / (n - 1)) * stats.t.ppf(1 - alpha / 2, n - 1)))


# Per-example values that differ by no more than this are one value: a log-likelihood difference of
# 1e-300 nats per character is float noise (fp32 scores agree to ~1e-6 at best), and its bootstrap
# collapsed to a zero-width interval (hypothesis found [0, -4e-300]).
SPREAD_TOL = 1e-12


def bootstrap_intervals(values: np.ndarray, seed, resamples: int = BOOTSTRAP_RESAMPLES) -> list[tuple[float, float] | None]:
    """Per column of (n, k) per-example values, the paired-bootstrap 95% interval of the mean (the
    same resampled examples for every column), or None where there is nothing to resample (one
    example, or all of a column's values equal)."""
    values = np.asarray(values, dtype=np.float64)
    n, k = values.shape
    if n < 2:
        return [None] * k
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))  # (B, n)
    means = np.stack([np.take(values[:, j], idx).mean(axis=1) for j in range(k)], axis=1)  # (B, k); 1-D gathers are 10x faster
    a = expanded_alpha(n)
    q = np.quantile(means, [a / 2, 1 - a / 2], axis=0)  # (2, k)
    spread = np.ptp(values, axis=0) > SPREAD_TOL
    return [(float(q[0, j]), float(q[1, j])) if spread[j] else None for j in range(k)]


def average_interval(intervals: Sequence[Interval]) -> Interval:
    """(mean of the estimates, low, high) of an unweighted mean over independent tasks, by MOVER."""
    t = len(intervals)
    m = float(np.mean([e for e, _, _ in intervals]))
    lo = m - math.sqrt(sum((e - lo) ** 2 for e, lo, _ in intervals)) / t
    hi = m + math.sqrt(sum((hi - e) ** 2 for e, _, hi in intervals)) / t
    # never beyond the mean of the tasks' own bounds (√Σx² ≤ Σx); max/min only remove rounding
    return m, max(lo, float(np.mean([lo for _, lo, _ in intervals]))), min(hi, float(np.mean([hi for _, _, hi in intervals])))


def average_proportion(per_task: Sequence[np.ndarray]) -> Interval:
    """(unweighted mean over tasks of each task's share of 1s, low, high): one model's average
    accuracy with each task's Wilson interval combined by MOVER, the rule for a proportion and for an
    average over tasks (never ±1.96·stderr, which leaves [0, 1] at small n)."""
    return average_interval([proportion(x) for x in per_task])


# --------------------------------------------------------------------------------------------
# Paired metrics
# --------------------------------------------------------------------------------------------
def examples_of(scores: Sequence[ChoiceScores]) -> dict[str, list]:
    """The per-example record paired metrics read, and sweep rows store: doc ids, gold answers,
    per-choice log-likelihoods and choice lengths in characters."""
    return {
        "doc_id": [int(s.doc_id) for s in scores],
        "gold": [int(s.gold) for s in scores],
        "lls": [[float(x) for x in s.lls] for s in scores],
        "chars": [list(s.choice_chars) for s in scores],
    }


def entry(value: float | None, low: float | None, high: float | None, n: int, note: str | None = None) -> Entry:
    out: Entry = {
        "delta": None if value is None else float(value),
        "ci_low": None if low is None else float(low),
        "ci_high": None if high is None else float(high),
        "n": int(n),
    }
    if note:
        out["note"] = note
    return out


def missing(n: int, note: str) -> Entry:
    return entry(None, None, None, n, note)


def _padded(rows: Sequence[Sequence[float]], fill: float) -> np.ndarray:
    width = max(len(r) for r in rows)
    out = np.full((len(rows), width), fill, dtype=np.float64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def _log_softmax(lls: np.ndarray) -> np.ndarray:
    top = lls.max(axis=1, keepdims=True)
    return lls - (top + np.log(np.exp(lls - top).sum(axis=1, keepdims=True)))


def choice_kl(dense_lls: np.ndarray, pruned_lls: np.ndarray) -> np.ndarray:
    """(n,) KL(dense ‖ pruned) of the choice distributions (softmax over each example's choice
    log-likelihoods; (n, C) in, padded with -inf where an example has fewer choices)."""
    real = np.isfinite(dense_lls)
    lp = np.where(real, _log_softmax(dense_lls), 0.0)
    lq = np.where(real, _log_softmax(pruned_lls), 0.0)
    terms = np.where(real, np.exp(lp) * (lp - lq), 0.0)
    return np.maximum(terms.sum(axis=1), 0.0)  # ≥ 0 (Gibbs); max() only removes rounding below 0


def _pair(dense: Mapping[str, list], pruned: Mapping[str, list], task: str) -> tuple[np.ndarray, ...]:
    """The examples in both (dense order): gold (n,), dense and pruned lls (n, C), chars (n, C)."""
    where = {int(d): i for i, d in enumerate(pruned["doc_id"])}
    pairs = [(i, where[int(d)]) for i, d in enumerate(dense["doc_id"]) if int(d) in where]
    for i, j in pairs:
        if int(dense["gold"][i]) != int(pruned["gold"][j]) or len(dense["lls"][i]) != len(pruned["lls"][j]):
            raise DietError(
                f"{task} example {dense['doc_id'][i]} has another answer or other choices in the two results",
                "compare results computed on the same examples (same tasks, seed and calibration exclusions)",
            )
    if not pairs:
        return ()
    di, pj = [i for i, _ in pairs], [j for _, j in pairs]
    gold = np.array([int(dense["gold"][i]) for i in di])
    return (
        gold,
        _padded([dense["lls"][i] for i in di], -np.inf),
        _padded([pruned["lls"][j] for j in pj], -np.inf),
        _padded([dense["chars"][i] for i in di], 1.0),
    )


def task_paired(
    dense: Mapping[str, list],
    pruned: Mapping[str, list],
    spec: TaskSpec,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, Entry]:
    """One task's paired metrics (``PAIRED_METRICS`` and ``"main"``) from two ``examples_of``
    records, on the examples present in both."""
    arrays = _pair(dense, pruned, spec.name)
    if not arrays:
        out = {m: missing(0, "no paired examples yet") for m in PAIRED_METRICS}
        return out | {MAIN: missing(0, "no paired examples yet") | {"metric": spec.main_metric}}
    gold, dl, pl, chars = arrays
    n = len(gold)
    rows = np.arange(n)
    out: dict[str, Entry] = {}
    preds = {"acc": (choice_pred(dl), choice_pred(pl))}
    if "acc_norm" in spec.metrics:
        preds["acc_norm"] = (choice_pred_norm(dl, chars), choice_pred_norm(pl, chars))
    else:
        out["acc_norm"] = missing(0, f"{spec.name} does not report acc_norm")
    for metric, (pd_, pp_) in preds.items():
        out[metric] = entry(*paired_proportion_delta(pd_ == gold, pp_ == gold), n)
    main_d, main_p = preds[spec.main_metric]
    out["agreement"] = entry(*proportion(main_d == main_p), n)
    per_char = (pl[rows, gold] - dl[rows, gold]) / chars[rows, gold]
    kl = choice_kl(dl, pl)
    cis = bootstrap_intervals(np.stack([per_char, kl], axis=1), _seed(seed, spec.name), resamples)
    for metric, values, ci in (("gold_ll_per_char", per_char, cis[0]), ("choice_kl", kl, cis[1])):
        if ci is None:
            why = "one example" if n == 1 else f"all {n} examples have the same value"
            out[metric] = entry(values.mean(), None, None, n, f"{TOO_FEW}: {why}, so no interval")
        else:
            out[metric] = entry(values.mean(), ci[0], ci[1], n)
    out[MAIN] = dict(out[spec.main_metric]) | {"metric": spec.main_metric}
    return {m: out[m] for m in (*PAIRED_METRICS, MAIN)}


def _seed(seed: int, task: str) -> list[int]:
    return [int(seed), zlib.crc32(task.encode())]


def average_paired(per_task: Mapping[str, Mapping[str, Entry]]) -> dict[str, Entry]:
    """The average over tasks of every metric in ``per_task`` (``task -> metric -> entry``): the mean
    of the tasks that have a value, with the MOVER interval (``average_interval``); ``None`` when a
    task that has a value has no interval. ``note`` names the tasks left out."""
    tasks = list(per_task)
    out: dict[str, Entry] = {}
    for metric in dict.fromkeys(m for t in tasks for m in per_task[t]):
        have = [t for t in tasks if metric in per_task[t] and per_task[t][metric]["delta"] is not None]
        n = sum(per_task[t][metric]["n"] for t in have)
        notes = []
        if len(have) < len(tasks):
            notes.append(f"over {len(have)} of {len(tasks)} tasks (not {', '.join(t for t in tasks if t not in have)})")
        if not have:
            out[metric] = missing(0, "no task has a value")
            continue
        no_ci = [t for t in have if per_task[t][metric]["ci_low"] is None]
        mean = float(np.mean([per_task[t][metric]["delta"] for t in have]))
        if no_ci:
            notes.append(f"{TOO_FEW}: no interval for {', '.join(no_ci)}")
            out[metric] = entry(mean, None, None, n, "; ".join(notes))
        else:
            e = [(per_task[t][metric]["delta"], per_task[t][metric]["ci_low"], per_task[t][metric]["ci_high"]) for t in have]
            out[metric] = entry(*average_interval(e), n, "; ".join(notes) or None)
    return out


def paired_examples(
    dense: Mapping[str, Mapping[str, list]],
    pruned: Mapping[str, Mapping[str, list]],
    specs: Mapping[str, TaskSpec],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, Any]:
    """``paired_metrics`` from ``examples_of`` records per task (what sweep rows store)."""
    tasks = list(dict.fromkeys([*dense, *pruned]))
    unknown = [t for t in tasks if t not in specs]
    if unknown:
        raise DietError(f"no task entry for {', '.join(unknown)}", "pass the TaskSpec of every task scored")
    empty = {"doc_id": [], "gold": [], "lls": [], "chars": []}
    per_task = {
        t: task_paired(dense.get(t, empty), pruned.get(t, empty), specs[t], resamples=resamples, seed=seed) for t in tasks
    }
    return {"tasks": per_task, "average": average_paired(per_task)}


def paired_metrics(
    dense: Mapping[str, Sequence[ChoiceScores]],
    pruned: Mapping[str, Sequence[ChoiceScores]],
    specs: Mapping[str, TaskSpec],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, Any]:
    """Paired metrics of ``pruned`` against ``dense`` per task and averaged over tasks (the module
    docstring describes the metrics, intervals and result). ``dense``/``pruned``: task -> that task's
    ``ChoiceScores`` (any subset, any order: examples are paired by doc id); ``specs``: task ->
    ``TaskSpec`` (which metrics it reports, its main metric)."""
    return paired_examples(
        {t: examples_of(s) for t, s in dense.items()},
        {t: examples_of(s) for t, s in pruned.items()},
        specs,
        resamples=resamples,
        seed=seed,
    )
