"""Comparing stored runs: the settings that tell runs apart (the listing itself is
``runs.runs_frame``), runs side by side per task, and a candidate against a reference run, paired
on the examples they share and stated in words (``evaluation/decision.py``).

Every run record (``runs.run_record``: the app's jobs, ``compare``) keeps each task's examples of
both models (``task_results[i]["examples"]``: doc ids, gold answers, choice log-likelihoods and
lengths), so two runs on the same held-out examples are paired exactly as a pruned model is
paired with the dense one: ``metrics.paired_examples`` with one run in the place of the dense
model. Records made before the examples were kept show their stored numbers and no pairing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from diet_explore.evaluation.decision import decision_sentences, format_entry
from diet_explore.evaluation.metrics import MAIN, paired_examples
from diet_explore.experiments.results import METHODS, row_spec
from diet_explore.experiments.runs import run_label
from diet_explore.tasks.registry import TaskSpec, load_registry

#: The listing's columns that say what differs between runs (``runs.runs_frame``).
SETTINGS = (
    "source",
    "model",
    "label",
    "method",
    "site",
    "target_sparsity",
    "actual_sparsity",
    "n_keep",
    "tasks",
    "limit",
    "threshold",
    "weights",
)


def run_settings(record: dict[str, Any]) -> dict[str, Any]:
    """The mask and evaluation settings of a run, whoever made it: the app's ``mask_config``, or a
    ``compare`` sweep's ``config`` and its method's ``MaskConfig`` fields."""
    mask = record.get("mask_config") or {}
    sweep = record.get("config") or {}
    method_fields = METHODS.get(record.get("method", ""), {})
    weights = mask.get("weights") or {}
    return {
        "site": mask.get("site") or method_fields.get("site") or "residual",
        "threshold": mask.get("threshold", sweep.get("threshold")),
        "weights": ",".join(f"{t}={w:g}" for t, w in sorted(weights.items())) if weights else "equal",
        "limit": record.get("limit"),
    }


def differing(frame, columns: Sequence[str] = SETTINGS) -> list[str]:
    """The settings columns whose values are not the same in every row of ``frame``."""
    out = []
    for c in columns:
        if c in frame and frame[c].map(lambda v: json.dumps(v, sort_keys=True, default=str)).nunique() > 1:
            out.append(c)
    return out


LINE_APART = ("model", "tasks", "limit")  # besides the mask label, what puts two runs on separate history lines


def with_lines(frame):
    """The listing (``runs.runs_frame``) with ``line``: the run-history line a run belongs to, its
    mask label, plus the model, tasks and examples per task where the runs differ in them, so one
    line never joins runs of other mask settings or other examples."""
    apart = [c for c in LINE_APART if c in frame and frame[c].astype(str).nunique() > 1]
    line = frame["label"].astype(str)
    for c in apart:
        line = line + f" · {c} " + frame[c].astype(str)
    return frame.assign(line=line)


def run_heading(record: dict[str, Any]) -> str:
    """A run as a column heading: its mask label, the kept count and the short run id (two runs of
    one label and count still differ), e.g. "diet τ0.6 boolq×2 · kept 459 · 9339a21d"."""
    return f"{run_label(record)} · kept {record.get('n_keep')} · {str(record.get('run_id', '')).rsplit('-', 1)[-1]}"


def _specs(records: Sequence[dict[str, Any]]) -> dict[str, TaskSpec]:
    """The registry entry of every task the runs evaluated (``results.row_spec``: a task the
    registry no longer has gets the main metric its rows say)."""
    registry = load_registry()
    return {row["task"]: row_spec(row["task"], row, registry) for r in records for row in r.get("task_results") or []}


def _examples(record: dict[str, Any], which: str = "pruned") -> dict[str, dict[str, list]]:
    return {
        row["task"]: row["examples"][which] for row in record.get("task_results") or [] if (row.get("examples") or {}).get(which)
    }


def side_by_side(records: Sequence[dict[str, Any]]):
    """Per task (rows) and run (column groups headed by ``run_heading``): the pruned model's main
    metric, its agreement with the dense model and its Δ gold log-likelihood per char vs dense
    (the run's stored paired results; None where a record has none)."""
    import pandas as pd

    tasks = list(dict.fromkeys(row["task"] for r in records for row in r.get("task_results") or []))
    out = {}
    for r in records:
        by_task = {row["task"]: row for row in r.get("task_results") or []}
        paired = (r.get("paired") or {}).get("tasks") or {}
        avg = (r.get("paired") or {}).get("average") or {}
        for label, values in (
            ("main metric", [by_task.get(t, {}).get("pruned_main") for t in tasks] + [r.get("pruned_avg")]),
            ("agreement", [((paired.get(t) or {}).get("agreement") or {}).get("delta") for t in tasks] + [_d(avg, "agreement")]),
            (
                "Δ gold LL/char",
                [((paired.get(t) or {}).get("gold_ll_per_char") or {}).get("delta") for t in tasks]
                + [_d(avg, "gold_ll_per_char")],
            ),
        ):
            out[(run_heading(r), label)] = values
    frame = pd.DataFrame(out, index=[*tasks, "average"])
    frame.columns = pd.MultiIndex.from_tuples(frame.columns, names=["run", "value"])
    return frame


def _d(entries: dict[str, Any], metric: str) -> float | None:
    return (entries.get(metric) or {}).get("delta")


def paired_between(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any] | None:
    """``b − a`` paired on the examples both runs scored (``metrics.paired_examples``, with run
    ``a``'s pruned model in the dense model's place): per task and averaged, every paired metric.
    None when either record does not keep its examples or they share no task; a task without
    shared examples says so in its entries' notes."""
    ea, eb = _examples(a), _examples(b)
    shared = [t for t in ea if t in eb]
    if not shared:
        return None
    specs = _specs([a, b])
    result = paired_examples({t: ea[t] for t in shared}, {t: eb[t] for t in shared}, {t: specs[t] for t in shared})
    result["shared"] = {t: len(set(ea[t]["doc_id"]) & set(eb[t]["doc_id"])) for t in shared}
    return result


def compare_runs(candidate: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any] | None:
    """``candidate − reference`` paired on their shared examples (``paired_between``), with
    ``sentences``: the decision in words (``decision.decision_sentences``: the verdict on the main
    metric and on gold log-likelihood, and the reconciling line when they disagree). None when the
    two cannot be paired (``paired_between``)."""
    result = paired_between(reference, candidate)
    if result is None:
        return None
    result["sentences"] = decision_sentences(
        result["average"],
        candidate=run_heading(candidate),
        reference=run_heading(reference),
        tasks=len(result["tasks"]),
    )
    return result


def paired_frame(result: dict[str, Any], metrics: Sequence[str] = (MAIN, "gold_ll_per_char")):
    """A ``paired_between`` result as a table a person reads: per task and the average, the shared
    examples and each metric's Δ with its 95% CI (``decision.format_entry``: accuracy in points,
    log-likelihood in nats per character)."""
    import pandas as pd

    names = {MAIN: "Δ main metric, points [95% CI]", "gold_ll_per_char": "Δ gold LL/char, nats [95% CI]"}
    rows = []
    for t, entries in [*result["tasks"].items(), ("average", result["average"])]:
        row: dict[str, Any] = {
            "task": t,
            "shared examples": result.get("shared", {}).get(t, sum(result.get("shared", {}).values())),
        }
        row |= {names.get(m, f"Δ {m} [95% CI]"): format_entry(entries.get(m), m) for m in metrics}
        rows.append(row)
    return pd.DataFrame(rows).set_index("task")
