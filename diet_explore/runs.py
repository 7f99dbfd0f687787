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
import warnings
from pathlib import Path
from typing import Any

from diet_explore import atomic
from diet_explore.assets import PROJECT_ROOT, data_home
from diet_explore.errors import DietError

RUN_KIND = "diet-explore-run"
RUN_SCHEMA_VERSION = 1
# Flat columns the listing shows (when a record has them), in this order.
RESERVED = ("kind", "schema_version", "run_id", "created")  # set by the store; a record's own values are dropped
LIST_COLUMNS = ("run_id", "created", "source", "model", "method", "sparsity", "n_keep", "tasks", "limit",
                "dense_avg", "pruned_avg", "delta_avg", "dense_ppl", "pruned_ppl", "wall_time_s")


def default_root() -> Path:
    if (PROJECT_ROOT / "pyproject.toml").exists():
        return PROJECT_ROOT / "runs"
    return data_home() / "runs"


class RunStore:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_root()

    def save(self, record: dict[str, Any]) -> str:
        """Store a JSON-serialisable record; returns its run id."""
        now = _dt.datetime.now(_dt.timezone.utc)
        try:
            body = json.dumps(record, sort_keys=True, default=_jsonable)
        except (TypeError, ValueError) as exc:
            raise DietError(f"run record is not JSON-serialisable ({exc})", "store plain numbers, strings, lists and dicts") from None
        digest = hashlib.sha256((now.isoformat() + body).encode()).hexdigest()[:8]
        run_id = f"{now.strftime('%Y%m%dT%H%M%S')}-{digest}"
        full = {"kind": RUN_KIND, "schema_version": RUN_SCHEMA_VERSION, "run_id": run_id,
                "created": now.isoformat(timespec="seconds"),
                **{k: v for k, v in json.loads(body).items() if k not in RESERVED}}
        atomic.write_text(self.root / f"{run_id}.json", json.dumps(full, indent=2, default=_jsonable) + "\n")
        return run_id

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
        """A pandas table with one row per run (the summary columns a record has)."""
        import pandas as pd

        rows = [{k: _cell(r.get(k)) for k in LIST_COLUMNS if k in r} for r in self.records()]
        frame = pd.DataFrame(rows)
        if frame.empty:
            return pd.DataFrame(columns=list(LIST_COLUMNS))
        return frame[[c for c in LIST_COLUMNS if c in frame.columns]]

    @staticmethod
    def _read(path: Path) -> dict[str, Any] | None:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        if not isinstance(record, dict) or record.get("kind") != RUN_KIND or "run_id" not in record:
            return None
        return record


def _cell(value):
    return ",".join(map(str, value)) if isinstance(value, list) else value


def _jsonable(obj):
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")
