"""Tables as a person reads them: plain headers, numbers formatted once, blank cells for what is
undefined, the number that counts highlighted. Pure pandas (no streamlit), so every page that shows
a run (Prune & evaluate, a results or sweep page) formats it the same way and tests read it directly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from diet_explore.evaluation.decision import SCALES, format_estimate
from diet_explore.evaluation.metrics import MAIN
from diet_explore.experiments.history import in_points

MINUS = "\u2212"  # a real minus sign: "−0.45" reads as negative at a glance, "-0.45" less so
HIGHLIGHT = "font-weight: 700; background-color: rgba(255, 189, 69, 0.25)"

DELTA_CI = "Δ, points [95% CI]"  # decision.format_estimate's text: the paired difference in points
RESULT_COLUMNS = [
    "Task",
    "n",
    "Main metric",
    "Dense",
    "Pruned",
    DELTA_CI,
    "acc (dense → pruned)",
    "acc_norm (dense → pruned)",
]


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def number(value: Any, digits: int = 3, signed: bool = False) -> str:
    """``value`` with ``digits`` decimals ('' when undefined), a real minus sign, '+' when ``signed``."""
    if _missing(value):
        return ""
    text = f"{float(value):+.{digits}f}" if signed else f"{float(value):.{digits}f}"
    return text.replace("-", MINUS)


def _estimate(delta: Any, low: Any, high: Any) -> str:
    """``decision.format_estimate`` of a cell that may be blank (NaN in a frame): blank, never "—"."""
    if _missing(delta):
        return ""
    return format_estimate(delta, *(None if _missing(v) else v for v in (low, high)))


def pair(dense: Any, pruned: Any, digits: int = 3) -> str:
    """'0.420 → 0.380' ('' when the metric is undefined for the task, e.g. WinoGrande's acc_norm)."""
    if _missing(dense) and _missing(pruned):
        return ""
    return f"{number(dense, digits) or '?'} → {number(pruned, digits) or '?'}"


def format_results_table(
    task_results: Sequence[Mapping[str, Any]],
    average: Mapping[str, Any] | None = None,
    digits: int = 3,
) -> pd.DataFrame:
    """One row per task of a dense-vs-pruned run (``RunStore`` records' ``task_results``: ``task``,
    ``n``, ``metric``, ``dense_main``, ``pruned_main``, ``delta_main``, ``delta_main_ci_low/high`` and,
    when known, ``dense_acc``/``pruned_acc``/``dense_acc_norm``/``pruned_acc_norm``), plus an
    ``average`` row (``dense``, ``pruned``, ``delta``, ``ci_low``, ``ci_high``, ``n``). Every cell is
    text, formatted once; an undefined value is a blank cell, never "None" or "nan"."""
    rows = []
    for r in task_results:
        rows.append(
            {
                "Task": r["task"],
                "n": str(int(r["n"])) if not _missing(r.get("n")) else "",
                "Main metric": r.get("metric", ""),
                "Dense": number(r.get("dense_main"), digits),
                "Pruned": number(r.get("pruned_main"), digits),
                DELTA_CI: _estimate(r.get("delta_main"), r.get("delta_main_ci_low"), r.get("delta_main_ci_high")),
                "acc (dense → pruned)": pair(r.get("dense_acc"), r.get("pruned_acc"), digits),
                "acc_norm (dense → pruned)": pair(r.get("dense_acc_norm"), r.get("pruned_acc_norm"), digits),
            }
        )
    if average is not None:
        rows.append(
            {
                "Task": "average",
                "n": str(int(average["n"])) if not _missing(average.get("n")) else "",
                "Main metric": "main",
                "Dense": number(average.get("dense"), digits),
                "Pruned": number(average.get("pruned"), digits),
                DELTA_CI: _estimate(average.get("delta"), average.get("ci_low"), average.get("ci_high")),
                "acc (dense → pruned)": "",
                "acc_norm (dense → pruned)": "",
            }
        )
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def results_styler(table: pd.DataFrame):
    """``format_results_table``'s table with the main metric highlighted: the Dense/Pruned/Δ [CI]
    cells, and in each task row the acc or acc_norm column that is its main metric (the average row
    in bold)."""
    main_cols = ["Dense", "Pruned", DELTA_CI]

    def style(row: pd.Series) -> list[str]:
        out = []
        for col in row.index:
            metric_col = f"{row['Main metric']} (dense → pruned)"
            hot = col in main_cols or col == metric_col or row["Task"] == "average" and col == "Task"
            out.append(HIGHLIGHT if hot else "")
        return out

    return table.style.apply(style, axis=1)


HISTORY_COLUMNS = {  # run listing column (runs.runs_frame) -> header: short, to fit the 978-px column of a 1440-px page
    "created": "When (UTC)",
    "label": "Mask",
    "model": "Model",
    "sparsity": "Sparsity",
    "n_keep": "Kept",
    "limit": "n/task",
    "main": "Main %",  # "dense → pruned" in one cell, in points as the Δ beside it
    "delta": "Δ pts [95% CI]",
    "gold_ll_per_char": "Δ gold LL",
    "ppl": "PPL",
    "run_id": "Run",  # the run id's hash part: its time is in the first column
}


#: History columns shown even when every run lacks them (a run is named by these); any other empty column is dropped.
KEPT_HISTORY_COLUMNS = ("created", "label", "sparsity", "delta", "run_id")


def short_run_id(run_id: Any) -> str:
    """'20261128T213845-9339a21d' -> '9339a21d' (what the history shows; the store file is named by the whole id)."""
    return "" if _missing(run_id) else str(run_id).rsplit("-", 1)[-1]


def format_history_table(runs: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """The run listing (``history.runs_frame``) narrowed to what fits the content column of a 1440-px
    page: short headers, the date without seconds' clutter, the mask by its label, the main metric as
    'dense → pruned' and Δ with its CI (``decision.format_estimate``), both in points
    (``history.in_points``), perplexity as 'dense → pruned', blanks for what a run lacks, and no
    column that every run leaves blank (other than those that name a run, ``KEPT_HISTORY_COLUMNS``)."""
    out = pd.DataFrame(index=runs.index)
    for col, header in HISTORY_COLUMNS.items():
        if col == "delta":
            cells = zip(runs.get("delta_avg", []), runs.get("ci_low", []), runs.get("ci_high", []))
            out[header] = (
                [format_estimate(*(None if _missing(v) else v for v in c)) for c in cells] if "delta_avg" in runs else ""
            )
        elif col == "ppl":
            dense, pruned = runs.get("dense_ppl", pd.Series(dtype=float)), runs.get("pruned_ppl", pd.Series(dtype=float))
            out[header] = [pair(d, p, 2) for d, p in zip(dense, pruned)] if len(dense) else ""
        elif col == "main":  # in points (decision.SCALES), as the Δ beside it and the history chart
            points = in_points(runs)
            dense, pruned = (
                points.get("dense_points", pd.Series(dtype=float)),
                points.get("pruned_points", pd.Series(dtype=float)),
            )
            out[header] = [pair(d, p, SCALES[MAIN].digits) for d, p in zip(dense, pruned)] if len(dense) else ""
        elif col not in runs:
            out[header] = ""
        elif col == "created":
            out[header] = [str(v)[:16].replace("T", " ") if not _missing(v) else "" for v in runs[col]]
        elif col == "gold_ll_per_char":
            out[header] = [number(v, digits, signed=True) for v in runs[col]]
        elif col == "sparsity":
            out[header] = [number(v, 4) for v in runs[col]]
        elif col == "run_id":
            out[header] = [short_run_id(v) for v in runs[col]]
        else:
            out[header] = ["" if _missing(v) else str(v) for v in runs[col]]
    kept = {HISTORY_COLUMNS[c] for c in KEPT_HISTORY_COLUMNS}
    empty = [h for h in out if h not in kept and (out[h] == "").all()]
    return out.drop(columns=empty).reset_index(drop=True)
