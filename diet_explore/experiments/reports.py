"""Sweep reports: the paper-style table (CSV + markdown), the DIET-minus-method paired table and the sweep plot.

Everything here reads result rows (``results.py``) and writes files; nothing evaluates a model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diet_explore.core import atomic
from diet_explore.evaluation.metrics import Z95
from diet_explore.experiments.results import METHODS, paired_avg_delta

if TYPE_CHECKING:
    from diet_explore.experiments.sweep import CompareConfig

Progress = Callable[[float, str], None]


# --------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------
def results_frame(rows: list[dict[str, Any]]):
    """Long table: one row per (method, sparsity, task) plus an 'average' task row."""
    import pandas as pd

    recs = []
    for r in rows:
        for t, v in r["tasks"].items():
            recs.append(
                {
                    "method": r["method"],
                    "sparsity": r["sparsity"],
                    "n_keep": r["n_keep"],
                    "task": t,
                    "metric": v["metric"],
                    "n": v["n"],
                    "value": v["main"],
                    "stderr": v["stderr"],
                    "delta": v.get("delta", 0.0),
                    "ci_low": v.get("ci_low", 0.0),
                    "ci_high": v.get("ci_high", 0.0),
                }
            )
        recs.append(
            {
                "method": r["method"],
                "sparsity": r["sparsity"],
                "n_keep": r["n_keep"],
                "task": "average",
                "metric": "main",
                "n": sum(v["n"] for v in r["tasks"].values()),
                "value": r["avg"],
                "stderr": r["avg_stderr"],
                "delta": r.get("delta_avg", 0.0),
                "ci_low": r.get("delta_ci_low", 0.0),
                "ci_high": r.get("delta_ci_high", 0.0),
                "ppl": r.get("ppl"),
            }
        )
    return pd.DataFrame(recs)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Paper style: one line per (sparsity, method), tasks as columns (main metric ± stderr, in %),
    the average with its paired delta vs dense and 95% CI, and wiki perplexity."""
    if not rows:
        return ""
    tasks = list(rows[0]["tasks"])
    metric = {t: rows[0]["tasks"][t]["metric"] for t in tasks}
    head = ["sparsity", "method", "kept"] + [f"{t} ({metric[t]})" for t in tasks] + ["avg", "Δ avg [95% CI]", "wiki ppl"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = sorted(rows, key=lambda r: (r["sparsity"], list(METHODS).index(r["method"]) if r["method"] in METHODS else -1))
    for r in order:
        cells = [f"{r['sparsity']:g}", r["method"], str(r["n_keep"])]
        cells += [f"{100 * r['tasks'][t]['main']:.1f} ± {100 * r['tasks'][t]['stderr']:.1f}" for t in tasks]
        cells.append(f"{100 * r['avg']:.1f} ± {100 * r['avg_stderr']:.1f}")
        cells.append(
            "—"
            if r["method"] == "dense"
            else f"{100 * r['delta_avg']:+.1f} [{100 * r['delta_ci_low']:+.1f}, {100 * r['delta_ci_high']:+.1f}]"
        )
        cells.append(f"{r['ppl']:.2f}" if r.get("ppl") else "—")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def versus_table(rows: list[dict[str, Any]], reference: str = "diet") -> str:
    """``reference`` minus every other method at each sparsity, paired on the same examples (in points):
    the comparison a claim like "DIET beats X by N points" needs, with its 95% CI."""
    refs = {r["sparsity"]: r for r in rows if r["method"] == reference}
    others = [r for r in rows if r["method"] not in (reference, "dense") and r["sparsity"] in refs]
    if not others:
        return ""
    tasks = list(refs[others[0]["sparsity"]]["tasks"])
    head = ["sparsity", "comparison", "kept"] + tasks + ["avg [95% CI]"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(others, key=lambda r: (r["sparsity"], list(METHODS).index(r["method"]) if r["method"] in METHODS else -1)):
        per_task, (m, lo, hi) = paired_avg_delta(refs[r["sparsity"]], r)
        cells = [f"{r['sparsity']:g}", f"{reference} − {r['method']}", str(r["n_keep"])]
        cells += [f"{100 * per_task[t][0]:+.1f}" for t in tasks]
        cells.append(f"{100 * m:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def rotation_table(rows: list[dict[str, Any]]) -> str:
    """The rotated (SliceGPT) rows' parameter counts, shortcut matrices and untied head included,
    beside a coordinate mask's at the same kept count, and the kept count a rotation could afford
    at the mask's parameter count (where the comparison at equal size would be)."""
    rotated = [r for r in rows if r.get("rotation")]
    if not rotated:
        return ""
    head = [
        "sparsity",
        "method",
        "kept",
        "parameters",
        "of which shortcuts",
        "mask at the same kept",
        "kept at the mask's parameters",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(rotated, key=lambda r: (r["sparsity"], r["method"])):
        rot = r["rotation"]
        cells = [f"{r['sparsity']:g}", r["method"], str(r["n_keep"])]
        cells += [f"{rot[k] / 1e6:.2f} M" for k in ("parameters", "shortcut_parameters", "parameters_mask_same_keep")]
        cells.append(str(rot["keep_at_mask_parameters"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def sweep_figure(rows: list[dict[str, Any]]):
    import plotly.graph_objects as go

    fig = go.Figure()
    dense = next((r for r in rows if r["method"] == "dense"), None)
    for method in [m for m in METHODS if any(r["method"] == m for r in rows)]:
        pts = sorted((r for r in rows if r["method"] == method), key=lambda r: r["sparsity"])
        if dense is not None:
            pts = [dense] + pts
        fig.add_trace(
            go.Scatter(
                x=[r["sparsity"] for r in pts],
                y=[100 * r["avg"] for r in pts],
                mode="lines+markers",
                name=method,
                error_y={"type": "data", "array": [100 * Z95 * r["avg_stderr"] for r in pts], "visible": True},
            )
        )
    fig.update_layout(
        title="Average zero-shot accuracy vs hidden-dimension sparsity (95% CI)",
        xaxis_title="sparsity (fraction of hidden dims pruned)",
        yaxis_title="average accuracy (%)",
        template="plotly_white",
    )
    return fig


def write_reports(rows: list[dict[str, Any]], out: Path, config: CompareConfig | None = None) -> dict[str, Path]:
    paths = {"csv": out / "table.csv", "markdown": out / "table.md", "html": out / "sweep.html"}
    atomic.write_text(paths["csv"], results_frame(rows).to_csv(index=False))
    note = ""
    if config is not None:
        note = (
            f"\nModel `{config.model}`, cache `{config.cache}`, {config.limit} held-out examples per task "
            f"(seed {config.seed}), exact kept counts: {config.exact}. Cells: main metric in % ± stderr; "
            "Δ avg: paired difference vs dense with a 95% CI.\n"
        )
    versus = versus_table(rows)
    if versus:
        versus = (
            "\nDIET minus each other method at the same kept count, paired on the same examples "
            "(points; positive = DIET better):\n\n" + versus
        )
    rotation = rotation_table(rows)
    if rotation:
        rotation = (
            "\nSliceGPT parameters (shortcut matrices and the untied head included) beside a coordinate "
            "mask's at the same kept count:\n\n" + rotation
        )
    atomic.write_text(paths["markdown"], markdown_table(rows) + note + versus + rotation)
    fig = sweep_figure(rows)
    atomic.write_text(paths["html"], fig.to_html(include_plotlyjs=True, full_html=True))
    try:  # a static image too when kaleido is installed
        import kaleido  # noqa: F401

        atomic.write_bytes(out / "sweep.png", fig.to_image(format="png"))
        paths["png"] = out / "sweep.png"
    except Exception:
        pass
    return paths
