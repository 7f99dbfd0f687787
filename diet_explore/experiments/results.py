"""A sweep's results file (``<out>/results.jsonl``): one row per finished (method, sparsity) and one
for the dense model, with per-example correctness and (since per-example log-likelihoods are kept)
every example's choice log-likelihoods, so every delta and CI is recomputed from it (``row_paired``).
Rows written before that have the main metric's correctness only: their paired results hold the
main metric (acc or acc_norm, whichever the task's is) and say that the rest was not recorded.

``METHODS`` maps the sweep's method names (CLI) to ``MaskConfig.method``; ``single-task`` and
``leave-one-out`` build one mask per evaluated task; ``slicegpt`` and ``slicegpt-wiki`` build no
mask (``ROTATION_METHODS``: rotate-and-slice, calibrated on the cache's task samples or wiki windows)."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from diet_explore.core import atomic
from diet_explore.core.errors import DietError
from diet_explore.evaluation.metrics import (
    MAIN,
    PAIRED_METRICS,
    TaskResult,
    average_paired,
    average_stderr,
    entry,
    examples_of,
    mean_stderr,
    missing,
    paired_proportion_delta,
    task_paired,
)
from diet_explore.experiments.runs import (
    NUMBER_OR_NONE,
    PAIRED,
    TEXT,
    Check,
    dict_of,
    examples_problem,
    fields_problem,
    is_int,
    is_number,
    list_of,
    or_none,
)
from diet_explore.tasks.registry import TaskSpec, load_registry

Progress = Callable[[float, str], None]


# --------------------------------------------------------------------------------------------
# Results file
# --------------------------------------------------------------------------------------------
def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


_PART_FIELDS: dict[str, Check] = {  # one task's part of a row (``task_row``, ``add_deltas``)
    "metric": TEXT,
    "n": (lambda v: is_int(v) and v >= 1, "a whole number of examples (1 or more)"),
    "main": (lambda v: is_number(v) and 0 <= v <= 1, "a number from 0 to 1"),
    "stderr": (lambda v: is_number(v) and v >= 0, "a number of 0 or more"),
    "correct": (list_of(lambda v: is_int(v) and v in (0, 1)), "a list of 0s and 1s"),
    "delta": NUMBER_OR_NONE,
    "ci_low": NUMBER_OR_NONE,
    "ci_high": NUMBER_OR_NONE,
}
_ROW_FIELDS: dict[str, Check] = {  # a row (the sweep's ``_run_one``/dense row, ``add_average``, ``add_deltas``)
    "key": TEXT,
    "method": TEXT,
    "sparsity": (lambda v: is_number(v) and 0 <= v < 1, "a number from 0 up to 1"),
    "n_keep": (lambda v: is_int(v) and v >= 1, "a whole number of kept dims (1 or more)"),
    "tasks": (lambda v: isinstance(v, dict) and len(v) > 0, "an object with one entry per task"),
    "avg": (lambda v: is_number(v) and 0 <= v <= 1, "a number from 0 to 1"),
    "avg_stderr": (lambda v: is_number(v) and v >= 0, "a number of 0 or more"),
    "ppl": (or_none(lambda v: is_number(v) and v > 0), "a positive number or null"),
    "wall_time_s": NUMBER_OR_NONE,
    "fingerprint": TEXT,
    "run_id": TEXT,
    "reused": TEXT,
    "actual_sparsity": NUMBER_OR_NONE,
    "delta_avg": NUMBER_OR_NONE,
    "delta_ci_low": NUMBER_OR_NONE,
    "delta_ci_high": NUMBER_OR_NONE,
    "n_keep_per_task": (or_none(dict_of(is_int)), "an object of whole numbers or null"),
    "rotation": (
        or_none(
            lambda v: (
                isinstance(v, dict)
                and all(is_number(v.get(k)) for k in ("parameters", "shortcut_parameters"))
                and all(is_number(v.get(k)) for k in ("parameters_mask_same_keep", "keep_at_mask_parameters"))
            )
        ),
        "an object of parameter counts or null",
    ),
    "paired": PAIRED,
}
_REQUIRED = ("key", "method", "sparsity", "n_keep", "tasks", "avg", "avg_stderr")
_PART_REQUIRED = ("metric", "n", "main", "stderr", "correct")


def row_problem(row: Any) -> str | None:
    """What is wrong with a results row, or None: the one check every reader of a results file (the
    sweep's resume, the reports, the Results page) relies on, so a damaged or hand-edited row is
    dropped with a warning instead of breaking them. Says the first bad field, e.g. "field
    'tasks.rte.main' is 'x', not a number from 0 to 1"."""
    if not isinstance(row, dict):
        return f"the line is {type(row).__name__}, not an object"
    # a finished run's row has every _REQUIRED field; a row with neither method nor tasks (a key and
    # bookkeeping alone) is no result, and is checked only as far as it goes
    result = "method" in row or "tasks" in row
    problem = fields_problem(row, _ROW_FIELDS, required=_REQUIRED if result else ("key",))
    if problem or not result:
        return problem
    for task, part in row["tasks"].items():
        if not isinstance(part, dict):
            return f"field {'tasks.' + task!r} is {part!r:.40}, not an object"
        problem = fields_problem(part, _PART_FIELDS, f"tasks.{task}.", required=_PART_REQUIRED)
        if problem:
            return problem
        if len(part["correct"]) != part["n"]:
            return f"field {f'tasks.{task}.correct'!r} holds {len(part['correct'])} examples, not n = {part['n']}"
        if "examples" in part:
            problem = examples_problem(part["examples"])
            if problem is None and len(part["examples"]["doc_id"]) != part["n"]:
                problem = f"holds {len(part['examples']['doc_id'])} examples, not n = {part['n']}"
            if problem:
                return f"field {f'tasks.{task}.examples'!r} {problem}"
    return None


def _parse(lines: list[str], path: Path | None = None, problems: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per key, in file order; of a key written twice the first row counts (two runs into
    one --out, or an older diet-explore, could write a key twice). A line cut by an interruption
    (possible only before writes were atomic) is skipped: that combination simply runs again. So is
    a row with a wrong-typed or impossible field (``row_problem``): one line per such row, naming
    the file (``path``), the line and the field, goes to ``problems`` when given; and a row whose
    tasks or examples per task are not the other rows' (``_odd_rows``): no paired result could pair it."""
    rows, seen, numbers, dropped = [], set(), [], {}
    for number, line in enumerate(lines, 1):
        try:
            row = atomic.loads_json(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("key"), str) and row["key"] in seen:
            continue
        problem = row_problem(row)
        if problem:
            dropped[number] = problem
            continue
        seen.add(row["key"])
        rows.append(row)
        numbers.append(number)
    odd = _odd_rows(rows)
    for i, problem in odd.items():
        dropped[numbers[i]] = problem
    if problems is not None:
        problems.extend(
            f"skipping line {number} of {path or RESULTS}: {problem}; that run is left out (re-run it)"
            for number, problem in sorted(dropped.items())
        )
    return [row for i, row in enumerate(rows) if i not in odd]


def _tasks_of(row: dict[str, Any]) -> tuple[tuple[str, int], ...]:
    return tuple(sorted((t, part["n"]) for t, part in row["tasks"].items()))


def _odd_rows(rows: list[dict[str, Any]]) -> dict[int, str]:
    """Index -> why, for each row whose (task, examples) set is not the sweep's: the set most rows
    have (a tie goes to the dense row's, else the first row's). One sweep evaluates every run on
    the same tasks and examples; a row that does not cannot be paired with the others."""
    results = {i: _tasks_of(r) for i, r in enumerate(rows) if "tasks" in r}  # not a bare key's row
    if not results:
        return {}
    counts: dict[tuple, int] = {}
    for sig in results.values():
        counts[sig] = counts.get(sig, 0) + 1
    first = next((i for i in results if rows[i]["method"] == "dense"), next(iter(results)))
    usual = max(counts, key=lambda sig: (counts[sig], sig == results[first]))

    def why(sig: tuple) -> str:
        extra, lacking = (
            [f"{t} ({n})" for t, n in sig if (t, n) not in usual],
            [f"{t} ({n})" for t, n in usual if (t, n) not in sig],
        )
        return "its tasks (examples) are not the other rows': " + "; ".join(
            f"{what} {', '.join(items)}" for what, items in (("it has", extra), ("it lacks", lacking)) if items
        )

    return {i: why(sig) for i, sig in results.items() if sig != usual}


def read_results(out: Path) -> list[dict[str, Any]]:
    """The rows of ``<out>/results.jsonl``, one per (method, sparsity) key and one for dense; a
    damaged row is dropped with a warning (``read_results_file``), and ``compare`` runs it again."""
    return read_results_file(Path(out) / RESULTS)


def read_results_file(path: Path, problems: list[str] | None = None) -> list[dict[str, Any]]:
    """The rows of a results file, e.g. a committed ``docs/results/<name>.results.jsonl``
    (``[]`` when there is none). A row with a wrong-typed or impossible field (``row_problem``) is
    dropped: with ``problems``, one line per dropped row is added to it (the app shows them); without,
    each is a warning (the CLI prints it). Either names the file, the line and the field."""
    found: list[str] = []
    rows = _parse(_lines(Path(path)), Path(path), found)
    if problems is not None:
        problems.extend(found)
    else:
        for message in found:
            warnings.warn(message, stacklevel=2)
    return rows


def _write(out: Path, rows: list[dict[str, Any]]) -> None:
    atomic.write_text(out / RESULTS, "".join(json.dumps(r) + "\n" for r in rows))


def append_result(out: Path, row: dict[str, Any]) -> dict[str, Any]:
    """Add ``row`` to the results file, unless a row with its key is there already (another run of
    the same sweep into this --out finished it first); returns the row the file holds for that key.
    The read, the check and the rewrite happen under the file's lock, so two runs at once neither
    lose a row nor write one twice."""
    with atomic.locked(out / RESULTS):
        rows = read_results(out)
        for existing in rows:
            if existing.get("key") == row.get("key"):
                return existing
        _write(out, [*rows, row])
    return row


def repair_results(out: Path) -> int:
    """Rewrite the results file with one row per key (dropping repeated keys and unreadable lines);
    returns how many lines were dropped (0: the file was already clean and is not rewritten)."""
    with atomic.locked(out / RESULTS):
        lines = _lines(out / RESULTS)
        rows = _parse(lines)
        if len(rows) == len(lines):
            return 0
        _write(out, rows)
    return len(lines) - len(rows)


def check_resumable(done: list[dict[str, Any]], out: Path, fingerprint: str, difference: str | None = None) -> None:
    """Refuse to add to results made with other settings (mixed rows would not be comparable).
    ``difference``: which settings differ, as the message says them (None: not known)."""
    if any(r.get("fingerprint") != fingerprint for r in done):
        raise DietError(
            f"{out / RESULTS} holds results made with {difference}; refusing to mix two sweeps"
            if difference
            else f"{out / RESULTS} holds results made with other settings: the same flags, so the score cache's "
            "contents, the dtype the device resolves to, or the diet-explore version differ",
            "resume with the earlier settings, use another --out, or delete the folder to start over",
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
        examples = examples_of(scores)
        examples["lls"] = [[round(x, 6) for x in lls] for lls in examples["lls"]]
        row["examples"] = examples
    return row


NOT_RECORDED = "not recorded: these results were made before per-example log-likelihoods were kept"


def row_spec(task: str, part: dict[str, Any], registry: dict[str, TaskSpec]) -> TaskSpec:
    """The task's registry entry; for a task the registry no longer has, what the row says (its main metric)."""
    if task in registry:
        return registry[task]
    metric = part.get("metric", "acc")
    return TaskSpec(task, {}, metrics=("acc", "acc_norm") if metric == "acc_norm" else ("acc",), main_metric=metric)


def row_paired(row: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    """Paired results of ``row`` against ``ref`` on the same examples, in ``metrics.paired_metrics``'
    shape (``row - ref``: ``ref`` is the dense row, or another method's for DIET-minus-method).
    Every metric where both rows keep per-example log-likelihoods; the main metric alone (from the
    per-example correctness, in the same order) where either does not."""
    registry = load_registry()
    per_task = {}
    for t, part in row["tasks"].items():
        other = ref["tasks"][t]
        spec = row_spec(t, part, registry)
        if "examples" in part and "examples" in other:
            per_task[t] = task_paired(other["examples"], part["examples"], spec)
            continue
        a, b = np.array(other["correct"]), np.array(part["correct"])
        entries = {m: missing(0, NOT_RECORDED) for m in PAIRED_METRICS}
        entries[spec.main_metric] = entry(*paired_proportion_delta(a, b), len(b))
        entries[MAIN] = dict(entries[spec.main_metric]) | {"metric": spec.main_metric}
        per_task[t] = entries
    return {"tasks": per_task, "average": average_paired(per_task)}


def add_deltas(row: dict[str, Any], dense: dict[str, Any]) -> None:
    """Add paired results vs dense (in place): ``row["paired"]`` (``row_paired``), and the main
    metric's per task (``delta``, ``ci_low``, ``ci_high``) and averaged (``delta_avg``, ``delta_ci_low``,
    ``delta_ci_high``)."""
    paired = row_paired(row, dense)
    for t, entries in paired["tasks"].items():
        main = entries[MAIN]
        row["tasks"][t].update(delta=main["delta"], ci_low=main["ci_low"], ci_high=main["ci_high"])
    avg = paired["average"][MAIN]
    row.update(delta_avg=avg["delta"], delta_ci_low=avg["ci_low"], delta_ci_high=avg["ci_high"], paired=paired)


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
    "single-task": {"method": "single-task"},
    "leave-one-out": {"method": "leave-one-out"},
}
PER_TASK_METHODS = ("single-task", "leave-one-out")
#: Rotate-and-slice (SliceGPT, ``pruning/rotate.py``): no mask, so not MaskConfig fields; sweep name
#: -> the calibration text (``pruning.pca.SOURCES``): the cache's task samples, or its wiki windows.
ROTATION_METHODS: dict[str, str] = {"slicegpt": "tasks", "slicegpt-wiki": "wiki"}
METHODS.update({name: {"calibration": source} for name, source in ROTATION_METHODS.items()})
RESULTS = "results.jsonl"


def builds_mask(method: str) -> bool:
    """Whether the sweep method ``method`` is a hidden-dimension mask (``MaskConfig`` fields in
    ``METHODS``), which ``run_masks`` can rebuild; a method that transforms the weights otherwise
    (a rotation) has none."""
    return "method" in METHODS.get(method, {})


def sweep_mask_config(config, method: str, sparsity: float, multiple: int, **extra):
    """The ``MaskConfig`` of the run ``method@sparsity`` in a sweep (``config``: a ``CompareConfig``):
    the sweep's mask (``config.mask``: τ, weights, site, ...) with the run's method, sparsity and kept-count
    multiple. A setting the method does not read (``ignored_settings``) is put back to its default, so
    the run's record and label (``MaskConfig.label``) say only what acted on its mask."""
    from diet_explore.masking.config import MaskConfig, ignored_settings

    fields = config.mask.to_dict() | {"sparsity": sparsity, "multiple_of": multiple, **METHODS[method], **extra}
    default = MaskConfig().to_dict()
    for name in ignored_settings(MaskConfig.from_dict(fields)):
        fields[name] = extra.get(name, default[name])
    return MaskConfig.from_dict(fields)


def mask_for(pre, method: str, sparsity: float, config, multiple: int, **extra):
    """The mask ``method`` builds at ``sparsity`` with a sweep's settings (``config``: a ``CompareConfig``)."""
    from diet_explore.masking.build import build_mask

    return build_mask(pre, sweep_mask_config(config, method, sparsity, multiple, **extra))


def run_masks(pre, method: str, sparsity: float, config, multiple: int, tasks: list[str]) -> dict[str, Any]:
    """The mask (``MaskResult``) each evaluated task is scored with in the run ``method@sparsity``:
    the same mask for every task, or (``PER_TASK_METHODS``) one per task. The one place that decides
    it, for the sweep and for whoever rebuilds a finished sweep's masks (``experiments/proxy.py``)."""
    if method not in PER_TASK_METHODS:
        mask = mask_for(pre, method, sparsity, config, multiple)
        return {t: mask for t in tasks}
    cache_tasks = set(pre.cache.task_names)
    out = {}
    for t in tasks:
        if t not in cache_tasks:
            raise DietError(f"task {t!r} is not in the cache, so {method} has no mask for it", "evaluate the cache's tasks")
        extra = {"single_task": t, "tasks": [t]} if method == "single-task" else {"held_out_task": t}
        out[t] = mask_for(pre, method, sparsity, config, multiple, **extra)
    return out
