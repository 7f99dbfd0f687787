"""A sweep's results file (``<out>/results.jsonl``): one row per finished (method, sparsity) and one
for the dense model, with per-example correctness, so every delta and CI is recomputed from it.

``METHODS`` maps the sweep's method names (CLI) to ``MaskConfig.method``; ``single-task`` and
``leave-one-out`` build one mask per evaluated task."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from diet_explore.core import atomic
from diet_explore.core.errors import DietError
from diet_explore.evaluation.metrics import TaskResult, average_paired_delta, average_stderr, mean_stderr, paired_delta

Progress = Callable[[float, str], None]


# --------------------------------------------------------------------------------------------
# Results file
# --------------------------------------------------------------------------------------------
def read_results(out: Path) -> list[dict[str, Any]]:
    path = out / RESULTS
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by an interruption: that combination simply runs again
    return rows


def append_result(out: Path, row: dict[str, Any]) -> None:
    rows = read_results(out) + [row]
    atomic.write_text(out / RESULTS, "".join(json.dumps(r) + "\n" for r in rows))


def check_resumable(done: list[dict[str, Any]], out: Path, fingerprint: str) -> None:
    """Refuse to add to results made with other settings (mixed rows would not be comparable)."""
    if any(r.get("fingerprint") != fingerprint for r in done):
        raise DietError(
            f"{out / RESULTS} holds results made with other settings (model, cache, tasks, limit, seed, "
            "dtype, ...) or by an older diet-explore",
            "use another --out, or delete the folder to start over",
        )


def task_row(res: TaskResult, scores: list | None = None) -> dict[str, Any]:
    """One task's part of a row: the main metric, its stderr and per-example correctness, and (with
    ``scores``, that task's ``ChoiceScores`` in request order) every example's per-choice
    log-likelihoods, choice lengths in characters and gold answer, from which any paired metric
    (agreement, gold log-likelihood, choice KL) is recomputed later."""
    main = res.main_correct()
    row = {
        "metric": res.main_metric,
        "n": res.n,
        "main": float(main.mean()),
        "stderr": mean_stderr(main),
        "correct": [int(x) for x in main],
    }
    if scores is not None:
        row["examples"] = examples_of(scores)
    return row


def examples_of(scores: list) -> dict[str, list]:
    """Per example of one task's ``ChoiceScores`` (in request order): doc id, gold answer, every
    choice's log-likelihood and length in characters: enough to recompute any paired metric."""
    return {
        "doc_id": [int(s.doc_id) for s in scores],
        "gold": [int(s.gold) for s in scores],
        "lls": [[round(float(x), 6) for x in s.lls] for s in scores],
        "chars": [[len(c) for c in s.choice_texts] for s in scores],
    }


def paired_avg_delta(
    row: dict[str, Any], ref: dict[str, Any]
) -> tuple[dict[str, tuple[float, float, float]], tuple[float, float, float]]:
    """Paired deltas ``row - ref`` on the same examples: per task (mean, CI low, CI high) and for the
    average over tasks (tasks are independent samples, so their variances add)."""
    pairs = {t: (np.array(ref["tasks"][t]["correct"]), np.array(r["correct"])) for t, r in row["tasks"].items()}
    per_task = {t: paired_delta(a, b) for t, (a, b) in pairs.items()}
    return per_task, average_paired_delta([b - a for a, b in pairs.values()])


def add_deltas(row: dict[str, Any], dense: dict[str, Any]) -> None:
    """Add paired deltas vs dense per task and for the average (in place)."""
    per_task, (m, lo, hi) = paired_avg_delta(row, dense)
    for t, (d, t_lo, t_hi) in per_task.items():
        row["tasks"][t].update(delta=d, ci_low=t_lo, ci_high=t_hi)
    row.update(delta_avg=m, delta_ci_low=lo, delta_ci_high=hi)


def add_average(row: dict[str, Any]) -> None:
    vals = [r["main"] for r in row["tasks"].values()]
    ses = [r["stderr"] for r in row["tasks"].values()]
    row.update(avg=float(np.mean(vals)), avg_stderr=average_stderr(ses))


METHODS: dict[str, dict[str, Any]] = {  # sweep name -> the MaskConfig fields that make that method
    "diet": {"method": "diet"},
    "diet-normed": {"method": "diet", "site": "normed"},  # the vote on the normed inputs (Minitron's site)
    "random": {"method": "random"},
    "magnitude": {"method": "magnitude"},
    "wiki": {"method": "wiki"},
    "single-task": {"method": "single"},
    "leave-one-out": {"method": "leave_one_out"},
}
PER_TASK_METHODS = ("single-task", "leave-one-out")
RESULTS = "results.jsonl"
