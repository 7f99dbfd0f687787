"""The run store: one JSON file per evaluation run, listed as a table.

Each run is written atomically as ``<root>/<run_id>.json`` (``run_id`` = UTC time + a short hash of
the record), so a listing never sees half a run. A file that cannot be read is skipped with a
warning; it never breaks the listing. The default root is ``<repo>/runs`` in a source checkout
(git-ignored) or ``<data home>/runs`` in an installed package.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any

from diet_explore.core import atomic
from diet_explore.core.assets import PROJECT_ROOT, data_home
from diet_explore.core.clock import utc_now, utc_timestamp
from diet_explore.core.config import is_finite_number, is_whole_number
from diet_explore.core.errors import DietError

RUN_KIND = "diet-explore-run"
RUN_SCHEMA_VERSION = 1
RESERVED = ("kind", "schema_version", "run_id", "created")  # set by the store; a record's own values are dropped
_RUN_ID = re.compile(r"\d{8}T\d{6}-[0-9a-f]{8}")  # what new_run_id makes; anything else could escape the root


RUNS_DIR_ENV = "DIET_EXPLORE_RUNS_DIR"
STORE_LOCK = "store"  # locked() takes <root>/.store.lock (and removes it after the outermost hold)


def default_root() -> Path:
    """``DIET_EXPLORE_RUNS_DIR``, else ``<repo>/runs`` in a source checkout, else ``<data home>/runs``."""
    env = os.environ.get(RUNS_DIR_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    if (PROJECT_ROOT / "pyproject.toml").exists():
        return PROJECT_ROOT / "runs"
    return data_home() / "runs"


def new_run_id(text: str, now: _dt.datetime | None = None) -> str:
    """A fresh run id: UTC time + a short hash of the time and ``text`` (what the run is).

    Made before the run is stored, so a caller can record the id first and store the run under it
    later (idempotently: the same id always names the same file)."""
    now = now or utc_now()
    digest = hashlib.sha256((now.isoformat() + text).encode()).hexdigest()[:8]
    return f"{now.strftime('%Y%m%dT%H%M%S')}-{digest}"


class RunStore:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_root()
        # what a message calls a root the caller did not give: the variable that set it, or the default
        self._default_name = (
            None if root is not None else (RUNS_DIR_ENV if os.environ.get(RUNS_DIR_ENV, "").strip() else "run store")
        )

    def name(self, what: str) -> str:
        """How a message names the root: ``what`` (the caller's flag, e.g. ``--runs``) when the
        caller gave it; else ``DIET_EXPLORE_RUNS_DIR`` when that set it, else "run store"."""
        return self._default_name or what

    def save(self, record: dict[str, Any], run_id: str | None = None) -> str:
        """Store a JSON-serialisable record; returns its run id (``run_id`` when given, from
        ``new_run_id``: saving again under it replaces that run instead of adding a second one)."""
        now = utc_now()
        try:
            body = json.dumps(json_safe(record), sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise DietError(
                f"run record is not JSON-serialisable ({exc})", "store plain numbers, strings, lists and dicts"
            ) from None
        if run_id is None:
            run_id = new_run_id(body, now)
        elif not _RUN_ID.fullmatch(run_id):
            raise DietError(f"run id {run_id!r} is not a run id", "use diet_explore.experiments.runs.new_run_id() to make one")
        full = {
            "kind": RUN_KIND,
            "schema_version": RUN_SCHEMA_VERSION,
            "run_id": run_id,
            "created": utc_timestamp(now),
            **{k: v for k, v in json.loads(body).items() if k not in RESERVED},
        }
        path = self.root / f"{run_id}.json"
        try:
            with atomic.locked(self.root / STORE_LOCK):  # two writers of one run id (a resume, a retry) take turns
                atomic.write_text(path, json.dumps(full, indent=2, allow_nan=False) + "\n")
        except OSError as exc:  # a file in the way, a read-only or full disk: the user's to fix, not a bug
            raise DietError(
                f"cannot write run record {path} ({exc.strerror or exc})",
                f"make the run store folder {self.root} writable, or use another one",
            ) from None
        return run_id

    def has(self, run_id: str) -> bool:
        """Whether run ``run_id`` is stored here (readable or not)."""
        return bool(_RUN_ID.fullmatch(run_id)) and (self.root / f"{run_id}.json").is_file()

    def check(self, what: str = "run store") -> None:
        """Refuse now a root that ``save`` could not write later (``atomic.check_writable``)."""
        atomic.check_writable(self.root, self.name(what), folder=True)

    def load(self, run_id: str) -> dict[str, Any]:
        path = self.root / f"{run_id}.json"
        if not path.is_file():
            raise DietError(f"run {run_id!r} is not in {self.root}", "list runs with RunStore(...).records()")
        record, why = self._read_checked(path)
        if record is None:
            raise DietError(f"run file {path} is corrupt ({why})", "delete it; the other runs are unaffected")
        return record

    def records(self, problems: list[str] | None = None) -> list[dict[str, Any]]:
        """Every readable record, oldest first; unreadable files, and records with a wrong-typed
        field (``record_problem``), are skipped with a line that says which and why: a warning, or
        appended to ``problems`` when given (a page shows them; ``warnings.catch_warnings`` is
        process-wide, so no use on Streamlit's session threads)."""
        if not self.root.is_dir():
            return []
        out = []
        for path in sorted(self.root.glob("*.json")):
            record, why = self._read_checked(path)
            if record is None:
                line = f"skipping unreadable run file {path}" if why == "unreadable" else f"skipping run file {path}: {why}"
                if problems is None:
                    warnings.warn(line, stacklevel=2)
                else:
                    problems.append(line)
                continue
            out.append(record)
        return out

    @staticmethod
    def _read(path: Path) -> dict[str, Any] | None:
        record = atomic.read_json_object(path)
        if record is None or record.get("kind") != RUN_KIND or "run_id" not in record:
            return None
        return record

    @classmethod
    def _read_checked(cls, path: Path) -> tuple[dict[str, Any] | None, str]:
        """(the record, "") or (None, why it is skipped): unreadable, or a field the listings, the
        History page and ``compare`` read has the wrong type (``record_problem``)."""
        record = cls._read(path)
        if record is None:
            return None, "unreadable"
        problem = record_problem(record)
        return (None, f"damaged: {problem}") if problem else (record, "")


# --------------------------------------------------------------------------------------------
# Field checks: what a reader may assume of a stored record (and, in results.py, of a sweep row)
# --------------------------------------------------------------------------------------------
Check = tuple[Any, str]  # (predicate on the value, what the value should be, as a message says it)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# the JSON type predicates are core.config's (one set for every reader of stored JSON)
is_number, is_int = is_finite_number, is_whole_number


def is_text(value: Any) -> bool:
    return isinstance(value, str)


def or_none(ok) -> Any:
    return lambda v: v is None or ok(v)


def list_of(ok) -> Any:
    return lambda v: isinstance(v, list) and all(ok(x) for x in v)


def dict_of(ok) -> Any:
    return lambda v: isinstance(v, dict) and all(isinstance(k, str) and ok(x) for k, x in v.items())


NUMBER: Check = (is_number, "a number")
NUMBER_OR_NONE: Check = (or_none(is_number), "a number or null")
INT: Check = (is_int, "a whole number")
TEXT: Check = (is_text, "a string")
TEXTS: Check = (list_of(is_text), "a list of strings")
DICT: Check = (lambda v: isinstance(v, dict), "an object")
DICT_OR_NONE: Check = (or_none(lambda v: isinstance(v, dict)), "an object or null")


def fields_problem(
    record: dict[str, Any], checks: dict[str, Check], where: str = "", required: tuple[str, ...] = ()
) -> str | None:
    """The first field of ``record`` that ``checks`` refuses (or a ``required`` one it lacks), as
    "field 'tasks.rte.main' is 'x', not a number" (``where``: the path of ``record`` itself); None
    when every checked field that is present passes."""
    for name, (ok, what) in checks.items():
        if name not in record:
            if name in required:
                return f"field {where + name!r} is missing"
            continue
        if not ok(record[name]):
            return f"field {where + name!r} is {_shown(record[name])}, not {what}"
    return None


_ENTRY: Check = (
    lambda e: isinstance(e, dict) and all(or_none(is_number)(e.get(k)) for k in ("delta", "ci_low", "ci_high")),
    "a paired entry (an object whose delta, ci_low and ci_high are numbers or null)",
)
#: the paired results a record or row may hold (``metrics.paired_metrics``' shape)
PAIRED: Check = (
    or_none(
        lambda p: (
            isinstance(p, dict) and dict_of(_ENTRY[0])(p.get("average", {})) and dict_of(dict_of(_ENTRY[0]))(p.get("tasks", {}))
        )
    ),
    "paired results ({tasks: {task: {metric: entry}}, average: {metric: entry}}) or null",
)
EXAMPLE_KEYS = ("doc_id", "gold", "lls", "chars")  # ``metrics.examples_of``


def examples_problem(examples: Any) -> str | None:
    """What is wrong with a per-example record (``metrics.examples_of``: doc ids, gold answers,
    per-choice log-likelihoods and lengths in characters, one entry per example), or None."""
    if not isinstance(examples, dict):
        return f"is {_shown(examples)}, not an object of per-example results"
    lacking = [k for k in EXAMPLE_KEYS if not isinstance(examples.get(k), list)]
    if lacking:
        return f"has no list {lacking[0]!r}"
    n = len(examples["doc_id"])
    if any(len(examples[k]) != n for k in EXAMPLE_KEYS):
        return "has lists of different lengths"
    if not all(is_int(d) for d in examples["doc_id"]):
        return "has a doc_id that is not a whole number"
    for gold, lls, chars in zip(examples["gold"], examples["lls"], examples["chars"]):
        if not (isinstance(lls, list) and isinstance(chars, list) and len(lls) == len(chars) >= 1):
            return "has an example whose lls and chars are not two lists of the same length"
        if not (is_int(gold) and 0 <= gold < len(lls)):
            return f"has a gold answer {_shown(gold)} that is not one of its example's choices"
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and x == x for x in lls):
            return "has a log-likelihood that is not a number"
        if not all(is_number(x) and x > 0 for x in chars):
            return "has a choice length that is not a positive number"
    return None


#: a stored run's flat fields, the ones the listings, the History page and ``compare`` read
RECORD_FIELDS: dict[str, Check] = {
    "run_id": TEXT,
    "created": TEXT,
    "source": (or_none(is_text), "a string or null"),
    "model": (or_none(is_text), "a string or null"),
    "method": (or_none(is_text), "a string or null"),
    "sparsity": NUMBER,
    "target_sparsity": NUMBER_OR_NONE,
    "actual_sparsity": NUMBER_OR_NONE,
    "eval_config": DICT_OR_NONE,
    "n_keep": (or_none(is_int), "a whole number or null"),
    "tasks": (or_none(list_of(is_text)), "a list of strings or null"),
    "limit": (or_none(is_int), "a whole number or null"),
    "dense_avg": NUMBER_OR_NONE,
    "pruned_avg": NUMBER_OR_NONE,
    "delta_avg": NUMBER_OR_NONE,
    "delta_avg_ci": (
        or_none(lambda v: isinstance(v, list) and len(v) == 2 and all(or_none(is_number)(x) for x in v)),
        "a list of two numbers (or nulls), or null",
    ),
    "dense_ppl": NUMBER_OR_NONE,
    "pruned_ppl": NUMBER_OR_NONE,
    "wall_time_s": NUMBER_OR_NONE,
    "task_results": (or_none(list_of(lambda v: isinstance(v, dict))), "a list of objects or null"),
    "paired": PAIRED,
    "mask_config": DICT_OR_NONE,
    "config": DICT_OR_NONE,
}
TASK_RESULT_FIELDS: dict[str, Check] = {
    "task": TEXT,
    "n": INT,
    "metric": TEXT,
    "dense_main": NUMBER_OR_NONE,
    "pruned_main": NUMBER_OR_NONE,
    "delta_main": NUMBER_OR_NONE,
    "delta_main_ci_low": NUMBER_OR_NONE,
    "delta_main_ci_high": NUMBER_OR_NONE,
    "examples": (or_none(dict_of(or_none(lambda v: examples_problem(v) is None))), "an object of per-example results or null"),
}
MASK_CONFIG_FIELDS: dict[str, Check] = {
    "site": (or_none(is_text), "a string or null"),
    "weights": (or_none(dict_of(is_number)), "an object of numbers or null"),
    "threshold": NUMBER_OR_NONE,
}


def record_problem(record: dict[str, Any]) -> str | None:
    """What is wrong with a stored run's fields (``RECORD_FIELDS``, each task result's
    ``TASK_RESULT_FIELDS``, the mask settings), or None: the one check every reader of the store
    relies on, so a hand-edited or damaged record is skipped instead of breaking a page."""
    problem = fields_problem(record, RECORD_FIELDS, required=("run_id",))
    if problem:
        return problem
    for i, row in enumerate(record.get("task_results") or []):
        problem = fields_problem(row, TASK_RESULT_FIELDS, f"task_results.{i}.", required=("task",))
        if problem:
            return problem
    problem = fields_problem(record.get("mask_config") or {}, MASK_CONFIG_FIELDS, "mask_config.")
    return problem or fields_problem(record.get("config") or {}, {"threshold": NUMBER_OR_NONE}, "config.")


#: what ``run_record`` computes on read, so a maker may not store it
DERIVED = ("delta_avg", "delta_avg_ci", "sparsity")
TASK_DERIVED = ("delta_main", "delta_main_ci_low", "delta_main_ci_high")


def run_record(
    *,
    source: str,
    model: str,
    method: str,
    mask_config: dict[str, Any] | None,
    target_sparsity: float,
    actual_sparsity: float,
    n_keep: int,
    tasks: list[str],
    limit: int,
    eval_config: dict[str, Any],
    dense_avg: float,
    pruned_avg: float,
    dense_ppl: float | None,
    pruned_ppl: float | None,
    wall_time_s: float,
    task_results: list[dict[str, Any]],
    paired: dict[str, Any] | None,
    **detail: Any,
) -> dict[str, Any]:
    """The one writer of a stored run, whoever made it (``source``: "app", "compare", ...): what
    was asked (``target_sparsity``, the ``mask_config`` and ``eval_config``) and what was done
    (``actual_sparsity`` = 1 − ``n_keep`` / hidden size, the scores).

    ``task_results`` holds one dict per task with at least ``task``, ``n``, ``metric``,
    ``dense_main`` and ``pruned_main`` (and, to pair runs later, ``examples``); ``paired`` is every
    paired metric per task and averaged, ``{"tasks": {task: {metric: entry}}, "average": {metric:
    entry}}`` (``evaluation.metrics.paired_metrics``); ``detail`` is whatever else the maker knows
    (parameter counts, timings). Deltas are not stored apart from ``paired``: ``history.run_view`` and
    ``history.task_rows`` derive them on read. Returns a strict-JSON dict for ``RunStore.save``."""
    required = ("task", "n", "metric", "dense_main", "pruned_main")
    for row in task_results:
        missing = [k for k in required if k not in row]
        if missing:
            raise ValueError(f"task result {row.get('task')!r} lacks {', '.join(missing)}")
        derived = [k for k in TASK_DERIVED if k in row]
        if derived:
            raise ValueError(f"task result {row.get('task')!r} stores {', '.join(derived)}, which are derived on read")
    derived = [k for k in DERIVED if k in detail]
    if derived:
        raise ValueError(f"a run record does not store {', '.join(derived)}: history.run_view derives it on read")
    return json_safe(
        {
            "source": source,
            "model": model,
            "method": method,
            "mask_config": mask_config,
            "target_sparsity": float(target_sparsity),
            "actual_sparsity": float(actual_sparsity),
            "n_keep": int(n_keep),
            "tasks": list(tasks),
            "limit": int(limit),
            "eval_config": eval_config,
            "dense_avg": dense_avg,
            "pruned_avg": pruned_avg,
            "dense_ppl": dense_ppl,
            "pruned_ppl": pruned_ppl,
            "wall_time_s": wall_time_s,
            "task_results": task_results,
            "paired": paired,
            **detail,
        }
    )


def json_safe(value: Any) -> Any:
    """A strict-JSON copy: NaN/inf -> None (JSON has neither; other readers reject Python's NaN),
    numpy scalars and arrays -> Python, paths -> str. Anything else unknown is left for json to refuse."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy scalars and arrays
        return json_safe(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
