"""The rules that turn per-example scores into reported numbers: accuracies, stderrs, paired deltas and their CIs.

* acc = argmax of the summed log-likelihood; acc_norm = argmax of log-likelihood per character of
  the choice text (``scoring.ChoiceScores``, lm-eval's ``completion_len``);
* which of them a task reports, and which is its headline ("main") number, is the task's registry
  entry (``TaskSpec.metrics`` / ``main_metric``): acc_norm for HellaSwag, ARC and OpenBookQA, acc
  elsewhere, the convention of pruning papers (SliceGPT, DIET); acc_norm is undefined for partial
  scoring (WinoGrande), as in lm-eval;
* stderr = sample standard deviation / sqrt(n), as lm-eval's ``mean_stderr``;
* a pruned-vs-dense delta is paired (same examples): its CI is mean(d) ± 1.96·sd(d)/sqrt(n) over
  per-example differences d; the average over tasks adds the tasks' variances (independent samples).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from diet_explore.evaluation.scoring import ChoiceScores
from diet_explore.tasks.registry import TaskSpec

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def mean_stderr(x: np.ndarray) -> float:
    """lm-eval's stderr: sample std (ddof=1) / sqrt(n); 0 for a single example."""
    x = np.asarray(x, dtype=float)
    return float(np.std(x, ddof=1) / math.sqrt(len(x))) if len(x) > 1 else 0.0


def paired_delta(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """(mean(b - a), CI low, CI high) for per-example values of the same examples."""
    d = np.asarray(b, float) - np.asarray(a, float)
    se = mean_stderr(d)
    m = float(d.mean())
    return m, m - Z95 * se, m + Z95 * se


def average_stderr(stderrs: Sequence[float]) -> float:
    """Standard error of an unweighted mean over independent tasks: sqrt(Σ se_t²) / T."""
    return math.sqrt(sum(s * s for s in stderrs)) / len(stderrs)


def average_paired_delta(diffs: Sequence[np.ndarray]) -> tuple[float, float, float]:
    """(mean over tasks of mean(d_t), CI low, CI high) for per-task paired differences ``d_t``:
    the paper-style average's delta. Tasks are independent samples, so se = sqrt(Σ se_t²) / T."""
    means = [float(np.mean(d)) for d in diffs]
    m = float(np.mean(means))
    se = average_stderr([mean_stderr(d) for d in diffs])
    return m, m - Z95 * se, m + Z95 * se


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
