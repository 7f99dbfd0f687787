"""Reading stored runs: THE listing (``runs_frame``: one row per run, ``run_view``, deltas derived
on read), the settings that tell runs apart, runs side by side per task, and a candidate against a reference run, paired
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

from diet_explore.core.errors import DietError
from diet_explore.core.numbers import number
from diet_explore.evaluation.decision import MINUS, SCALES, decision_sentences, format_entry
from diet_explore.evaluation.metrics import MAIN, paired_examples
from diet_explore.experiments.results import METHODS, row_spec
from diet_explore.masking.config import BASELINE_METHODS, canonical_method, ignored_settings
from diet_explore.tasks.registry import TaskSpec, load_registry

#: Flat columns the listing shows, in this order (``run_view``), then ``SETTING_COLUMNS``.
LIST_COLUMNS = (
    "run_id",
    "created",
    "source",
    "model",
    "label",
    "rule",
    "method",
    "target_sparsity",
    "actual_sparsity",
    "sparsity",
    "n_keep",
    "tasks",
    "limit",
    "dense_avg",
    "pruned_avg",
    "delta_avg",
    "ci_low",
    "ci_high",
    "n_paired",
    "agreement",
    "gold_ll_per_char",
    "dense_ppl",
    "pruned_ppl",
    "wall_time_s",
)
SETTING_COLUMNS = ("site", "threshold", "weights")  # history.run_settings: what else tells two runs of one method apart


def _cell(value):
    return ",".join(map(str, value)) if isinstance(value, list) else value


def _entry(paired: dict[str, Any] | None, metric: str, task: str | None = None) -> dict[str, Any]:
    """One entry of a record's stored paired results (``{}`` when it has none)."""
    paired = paired or {}
    entries = ((paired.get("tasks") or {}).get(task) or {}) if task is not None else (paired.get("average") or {})
    return entries.get(metric) or {}


def run_label(record: dict[str, Any]) -> str:
    """What the run's mask was, in a few words: ``MaskConfig.label()`` of its mask settings (e.g.
    "diet τ0.6 boolq×2"; the paper default is "diet"), else its method. Runs with one label were
    built by one rule, so a run-history line joins only runs with one label."""
    from diet_explore.masking.build import MaskConfig

    mask = record.get("mask_config")
    if isinstance(mask, dict):
        try:
            return MaskConfig.from_dict(mask).label()
        except (DietError, TypeError, ValueError):  # a mask config of another version: the method says enough
            pass
    return str(record.get("method") or "?")


def run_labels(records: Sequence[dict[str, Any]]) -> list[str]:
    """What each of ``records`` is listed as: its ``run_label``, and where one baseline's label
    (``masking.config.BASELINE_METHODS``: random, magnitude, ...; their label says nothing that sets
    two counts apart) names runs that keep different counts, each of those runs says its count:
    "random 455 kept" (a Prune & evaluate baseline matched to its mask's count) and "random 461
    kept" (a sweep's, at the target sparsity), never "random" twice for two different masks."""
    labels = [run_label(r) for r in records]
    counts: dict[str, set] = {}
    for r, label in zip(records, labels):
        if _is_baseline(r):
            counts.setdefault(label, set()).add(r.get("n_keep"))
    return [
        f"{label} {r['n_keep']} kept" if _is_baseline(r) and r.get("n_keep") is not None and len(counts[label]) > 1 else label
        for r, label in zip(records, labels)
    ]


def _is_baseline(record: dict[str, Any]) -> bool:
    method = record.get("method")
    try:
        return isinstance(method, str) and canonical_method(method) in BASELINE_METHODS
    except (DietError, TypeError, ValueError):  # a method of another version: its label is what it has
        return False


def target_and_actual(record: dict[str, Any]) -> tuple[float | None, float | None]:
    """(the sparsity asked for, the sparsity the kept count gives). Records written before both
    were kept stored one ``sparsity``: the actual one for app runs, the target for ``compare``
    (whose actual is then the target's kept count over the hidden size, when the record knows it)."""
    if "target_sparsity" in record or "actual_sparsity" in record:
        return record.get("target_sparsity"), record.get("actual_sparsity")
    stored = record.get("sparsity")
    mask = record.get("mask_config") if isinstance(record.get("mask_config"), dict) else {}
    if record.get("source") == "compare":
        hidden, n_keep = record.get("hidden_size"), record.get("n_keep")
        return stored, (1.0 - n_keep / hidden) if hidden and n_keep is not None else None
    return mask.get("sparsity", stored), stored


def run_view(record: dict[str, Any]) -> dict[str, Any]:
    """A stored run as every listing reads it (app job or ``compare``, new or old record): its flat
    fields, ``label``, ``target_sparsity``, ``actual_sparsity`` and ``sparsity`` (the actual one
    where known, for a plot's axis), and the derived numbers, computed here on read from the stored
    paired results: ``delta_avg`` with ``ci_low``/``ci_high`` (the average paired Δ main metric),
    ``agreement`` and ``gold_ll_per_char`` (their averages). A record from before the paired
    results were kept gives its stored ``delta_avg`` and ``delta_avg_ci``."""
    view = {k: v for k, v in record.items() if k not in ("task_results", "paired")}
    if isinstance(view.get("method"), str):  # an old record's name (leave_one_out) in today's vocabulary
        view["method"] = canonical_method(view["method"])
    target, actual = target_and_actual(record)
    view |= {"target_sparsity": target, "actual_sparsity": actual, "sparsity": actual if actual is not None else target}
    main = _entry(record.get("paired"), "main")
    if main:
        view |= {"delta_avg": main.get("delta"), "ci_low": main.get("ci_low"), "ci_high": main.get("ci_high")}
    else:
        ci = record.get("delta_avg_ci") or [None, None]
        view |= {"delta_avg": record.get("delta_avg"), "ci_low": ci[0], "ci_high": ci[1]}
    view["n_paired"] = main.get("n")
    view |= {m: _entry(record.get("paired"), m).get("delta") for m in ("agreement", "gold_ll_per_char")}
    view["label"] = run_label(record)
    return view


def task_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The record's ``task_results`` with each task's paired Δ main metric and its CI
    (``delta_main``, ``delta_main_ci_low``, ``delta_main_ci_high``), derived on read from the stored
    paired results (an old record's stored values where it has no paired results)."""
    out = []
    for row in record.get("task_results") or []:
        e = _entry(record.get("paired"), "main", row.get("task"))
        derived = {"delta_main": e.get("delta"), "delta_main_ci_low": e.get("ci_low"), "delta_main_ci_high": e.get("ci_high")}
        out.append(row | derived if e else dict(row))
    return out


def runs_frame(records):
    """THE listing of stored runs (app or CLI), one row per run (``run_view``), newest first, with
    the ``LIST_COLUMNS`` and the mask settings that tell runs apart (``history.run_settings``):
    ``label`` as the runs are listed together (``run_labels``: a baseline's kept count where its
    runs differ in it), ``rule`` the mask's label alone (``run_label``, what a history line joins)."""
    import pandas as pd

    records = list(records)
    rows = []
    for r, label in zip(records, run_labels(records)):
        view = run_view(r)
        row = {k: _cell(view.get(k)) for k in LIST_COLUMNS} | {"label": label, "rule": view["label"]}
        rows.append(row | run_settings(r))
    frame = pd.DataFrame(rows, columns=[*LIST_COLUMNS, *SETTING_COLUMNS])
    return newest_first(frame)


def newest_first(frame):
    """``frame``'s rows newest first: by ``created``, ties (runs saved in one second) by run id, so
    the order never depends on which file the listing read first."""
    return frame.sort_values(["created", "run_id"], ascending=False, kind="stable").reset_index(drop=True)


#: The listing's columns that say what differs between runs (``runs_frame``).
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
    method = record.get("method")
    method_fields = METHODS.get(canonical_method(method) if isinstance(method, str) else "", {})
    weights = mask.get("weights") or {}
    out = {
        "site": mask.get("site") or method_fields.get("site") or "residual",
        "threshold": mask.get("threshold", sweep.get("threshold")),
        "weights": ",".join(f"{t}={w:g}" for t, w in sorted(weights.items())) if weights else "equal",
        "limit": record.get("limit"),
    }
    return out | {k: None for k in _ignored(method) if k in out}


def _ignored(method: Any) -> set[str]:
    """The mask settings ``method`` does not read (``masking.config.ignored_settings``): a random run
    has no τ and no task weights, so the listing leaves them blank rather than show the defaults."""
    if not isinstance(method, str) or method == "dense":
        return set()
    try:
        return set(ignored_settings(canonical_method(method)))
    except (DietError, TypeError, ValueError):  # a method of another version: show what the record holds
        return set()


def differing(frame, columns: Sequence[str] = SETTINGS) -> list[str]:
    """The settings columns whose values are not the same in every row of ``frame`` that has one: a
    blank (a setting the run's method does not read, ``run_settings``) differs from nothing."""
    out = []
    for c in columns:
        if c in frame and frame[c].dropna().map(lambda v: json.dumps(v, sort_keys=True, default=str)).nunique() > 1:
            out.append(c)
    return out


LINE_APART = ("model", "tasks", "limit")  # besides the mask label, what puts two runs on separate history lines


def with_lines(frame):
    """The listing (``runs_frame``) with ``line``: the run-history line a run belongs to, its
    mask label (``rule``: a baseline's runs at several kept counts are one line across sparsity),
    plus the model, tasks and examples per task where the runs differ in them, so one line never
    joins runs of other mask settings or other examples."""
    apart = [c for c in LINE_APART if c in frame and frame[c].astype(str).nunique() > 1]
    line = frame["rule" if "rule" in frame else "label"].astype(str)
    for c in apart:
        line = line + f" · {c} " + frame[c].astype(str)
    return frame.assign(line=line)


#: run listing column -> its column in points (``in_points``): the page shows Δ and both averages in points.
POINTS_COLUMNS = {"delta_avg": "delta_points", "ci_low": "ci_low_points", "ci_high": "ci_high_points"}
POINTS_COLUMNS |= {"dense_avg": "dense_points", "pruned_avg": "pruned_points"}


def in_points(frame):
    """The listing with the main-metric columns also in points (× ``decision.SCALES[MAIN]``, the one
    factor every page prints accuracy by): the history chart and table beside it read one unit."""
    import pandas as pd

    factor = SCALES[MAIN].factor
    cols = {new: pd.to_numeric(frame[old], errors="coerce") * factor for old, new in POINTS_COLUMNS.items() if old in frame}
    return frame.assign(**cols)


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


#: ``side_by_side``'s value -> (its ``decision.SCALES`` entry, whether it carries a sign): the main
#: metric and agreement are shares in points (no sign: a level, not a difference), Δ gold LL/char a
#: signed difference in nats with the decimals every paired table prints it with.
SIDE_SCALES = {"main metric": (MAIN, False), "agreement": ("agreement", False), "Δ gold LL/char": ("gold_ll_per_char", True)}


def side_by_side_text(frame):
    """``side_by_side`` as the page shows it: every cell printed by the one number rule
    (``core.numbers.number`` with the metric's ``decision.SCALES`` factor and decimals, a real
    minus sign, "—" where a run has no value), never a raw fraction or float."""
    out = frame.astype(object).copy()
    for col in frame.columns:
        metric, signed = SIDE_SCALES[col[-1]]
        scale = SCALES[metric]
        out[col] = [
            number(None if v is None else float(v) * scale.factor, scale.digits, signed=signed, minus=MINUS) for v in frame[col]
        ]
    return out


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
