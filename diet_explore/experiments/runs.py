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
from diet_explore.core.errors import DietError

RUN_KIND = "diet-explore-run"
RUN_SCHEMA_VERSION = 1
# Flat columns the listing shows (when a record has them), in this order.
RESERVED = ("kind", "schema_version", "run_id", "created")  # set by the store; a record's own values are dropped
_RUN_ID = re.compile(r"\d{8}T\d{6}-[0-9a-f]{8}")  # what new_run_id makes; anything else could escape the root
LIST_COLUMNS = (
    "run_id",
    "created",
    "source",
    "model",
    "method",
    "sparsity",
    "n_keep",
    "tasks",
    "limit",
    "dense_avg",
    "pruned_avg",
    "delta_avg",
    "ci_low",
    "ci_high",
    "dense_ppl",
    "pruned_ppl",
    "wall_time_s",
)


RUNS_DIR_ENV = "DIET_EXPLORE_RUNS_DIR"
STORE_LOCK = "store"  # locked() keeps its lock file as <root>/.store.lock


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
            raise DietError(f"run {run_id!r} is not in {self.root}", "list runs with RunStore(...).list()")
        record = self._read(path)
        if record is None:
            raise DietError(f"run file {path} is corrupt", "delete it; the other runs are unaffected")
        return record

    def records(self) -> list[dict[str, Any]]:
        """Every readable record, oldest first; unreadable files are skipped with a warning."""
        if not self.root.is_dir():
            return []
        out = []
        for path in sorted(self.root.glob("*.json")):
            record = self._read(path)
            if record is None:
                warnings.warn(f"skipping unreadable run file {path}", stacklevel=2)
                continue
            out.append(record)
        return out

    def list(self):
        """The runs as a table, newest first (``runs_frame``)."""
        return runs_frame(self.records())

    @staticmethod
    def _read(path: Path) -> dict[str, Any] | None:
        record = atomic.read_json_object(path)
        if record is None or record.get("kind") != RUN_KIND or "run_id" not in record:
            return None
        return record


def _cell(value):
    return ",".join(map(str, value)) if isinstance(value, list) else value


def runs_frame(records):
    """One row per stored run (app or CLI), newest first, with the ``LIST_COLUMNS`` a record has;
    ``ci_low``/``ci_high`` are the 95% CI of ``delta_avg``."""
    import pandas as pd

    rows = []
    for r in records:
        ci = r.get("delta_avg_ci") or [None, None]
        row = {k: _cell(r.get(k)) for k in LIST_COLUMNS if k in r}
        rows.append(row | {"ci_low": ci[0], "ci_high": ci[1]})
    frame = pd.DataFrame(rows, columns=list(LIST_COLUMNS))
    return frame.sort_values("created", ascending=False, kind="stable").reset_index(drop=True)


def run_record(
    *,
    source: str,
    model: str,
    method: str,
    sparsity: float,
    n_keep: int,
    tasks: list[str],
    limit: int,
    dense_avg: float,
    pruned_avg: float,
    delta_avg: float,
    delta_avg_ci: tuple[float, float],
    dense_ppl: float | None,
    pruned_ppl: float | None,
    wall_time_s: float,
    task_results: list[dict[str, Any]],
    **detail: Any,
) -> dict[str, Any]:
    """The one schema of a stored run, whoever made it (``source``: "app", "compare", ...).

    The flat fields are the listing's columns; ``task_results`` holds one dict per task with at
    least ``task``, ``n``, ``metric``, ``dense_main``, ``pruned_main``, ``delta_main``,
    ``delta_main_ci_low`` and ``delta_main_ci_high``; ``detail`` is whatever else the maker knows
    (configs, parameter counts, timings). The app and ``compare`` add ``paired``: every paired
    metric per task and averaged, ``{"tasks": {task: {metric: entry}}, "average": {metric: entry}}``
    (``evaluation.metrics.paired_metrics``; None for a sweep row made before it was kept).
    Returns a strict-JSON dict for ``RunStore.save``."""
    required = ("task", "n", "metric", "dense_main", "pruned_main", "delta_main", "delta_main_ci_low", "delta_main_ci_high")
    for row in task_results:
        missing = [k for k in required if k not in row]
        if missing:
            raise ValueError(f"task result {row.get('task')!r} lacks {', '.join(missing)}")
    return json_safe(
        {
            "source": source,
            "model": model,
            "method": method,
            "sparsity": float(sparsity),
            "n_keep": int(n_keep),
            "tasks": list(tasks),
            "limit": int(limit),
            "dense_avg": dense_avg,
            "pruned_avg": pruned_avg,
            "delta_avg": delta_avg,
            "delta_avg_ci": list(delta_avg_ci),
            "dense_ppl": dense_ppl,
            "pruned_ppl": pruned_ppl,
            "wall_time_s": wall_time_s,
            "task_results": task_results,
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
