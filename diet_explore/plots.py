"""Plot builders: plain arrays and DataFrames in, plotly figures out.

The app renders these with ``st.plotly_chart``; the CLI and notebooks can call them too. Nothing
here imports streamlit or computes a mask: callers pass what the library computed, so a plot never
disagrees with the number shown beside it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

# Curves longer than this are thinned for drawing (every point's rank is kept exactly).
MAX_CURVE_POINTS = 1200
_LAYOUT = dict(template="plotly_white", margin=dict(l=60, r=20, t=50, b=50))


def _thin(n: int, max_points: int = MAX_CURVE_POINTS) -> np.ndarray:
    """Indices to draw from a sorted curve of length n: all of the head, evenly spaced after."""
    if n <= max_points:
        return np.arange(n)
    head = np.arange(min(n, max_points // 4))  # the steep top of the curve, kept whole
    tail = np.linspace(head[-1] + 1, n - 1, max_points - head.size).round().astype(int)
    return np.unique(np.concatenate([head, tail]))


def sorted_score_curves(scores: Mapping[str, np.ndarray], log_y: bool = True, cutoff_rank: int | None = None) -> go.Figure:
    """One descending score curve per task (rank on x). ``cutoff_rank``: a vertical line at the keep count."""
    fig = go.Figure()
    for task, s in scores.items():
        s = np.sort(np.asarray(s, dtype=np.float64))[::-1]  # (D,)
        idx = _thin(s.size)
        fig.add_trace(go.Scatter(x=idx, y=s[idx], mode="lines", name=task))
    if cutoff_rank is not None:
        fig.add_vline(x=cutoff_rank, line_dash="dash", line_color="grey", annotation_text=f"keep {cutoff_rank}")
    fig.update_layout(
        title="Sorted dimension scores per task", xaxis_title="rank", yaxis_title="score (mean |activation|)", **_LAYOUT
    )
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def layer_dim_heatmap(layer_scores: np.ndarray, dims: Sequence[int], task: str = "") -> go.Figure:
    """Heatmap of ``layer_scores[:, dims]`` ((L, D) in): which blocks a dimension is active in."""
    layer_scores = np.asarray(layer_scores)
    dims = [int(d) for d in dims]
    z = layer_scores[:, dims] if dims else np.zeros((layer_scores.shape[0], 0))  # (L, len(dims))
    fig = go.Figure(
        go.Heatmap(
            z=z, x=[f"d{d}" for d in dims], y=list(range(layer_scores.shape[0])), colorscale="Viridis", colorbar_title="score"
        )
    )
    title = "Score by layer for the picked dimensions" + (f" ({task})" if task else "")
    fig.update_layout(title=title, xaxis_title="hidden dimension", yaxis_title="layer", **_LAYOUT)
    fig.update_xaxes(type="category")
    return fig


def score_distributions(scores: Mapping[str, np.ndarray], log_x: bool = True, bins: int = 60) -> go.Figure:
    """Overlaid histograms of per-dimension scores, one per task (log10 scale by default)."""
    fig = go.Figure()
    for task, s in scores.items():
        s = np.asarray(s, dtype=np.float64)
        x = np.log10(np.maximum(s, 1e-12)) if log_x else s
        fig.add_trace(go.Histogram(x=x, name=task, opacity=0.55, nbinsx=bins))
    fig.update_layout(
        title="Distribution of dimension scores",
        barmode="overlay",
        xaxis_title="log10 score" if log_x else "score",
        yaxis_title="dimensions",
        **_LAYOUT,
    )
    return fig


def task_heatmap(
    matrix: np.ndarray, tasks: Sequence[str], title: str, zmin: float = 0.0, zmax: float = 1.0, colorscale: str = "Blues"
) -> go.Figure:
    """A labelled, annotated task × task heatmap (symmetric matrices: Jaccard, Spearman)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    text = np.vectorize(lambda v: f"{v:.2f}")(matrix) if matrix.size else matrix
    fig = go.Figure(
        go.Heatmap(
            z=matrix,
            x=list(tasks),
            y=list(tasks),
            zmin=zmin,
            zmax=zmax,
            colorscale=colorscale,
            text=text,
            texttemplate="%{text}",
            hovertemplate="%{y} / %{x}: %{z:.3f}<extra></extra>",
        )
    )
    fig.update_layout(title=title, **_LAYOUT)
    fig.update_yaxes(autorange="reversed")
    return fig


def correlation_heatmap(matrix: np.ndarray, tasks: Sequence[str], method: str = "Spearman") -> go.Figure:
    return task_heatmap(matrix, tasks, f"{method} correlation of task scores", zmin=-1.0, zmax=1.0, colorscale="RdBu")


def jaccard_heatmap(matrix: np.ndarray, tasks: Sequence[str], sparsity: float) -> go.Figure:
    return task_heatmap(matrix, tasks, f"Jaccard overlap of pruned sets at sparsity {sparsity:.2f}")


def vote_matrix(prune: np.ndarray, tasks: Sequence[str], order: Sequence[int] | None = None, max_rows: int = 2000) -> go.Figure:
    """Dimensions (rows) × tasks (columns): 1 where the task prunes the dimension.

    ``prune`` is (T, D) bool. Rows are drawn in ``order`` (default: most votes first), thinned to
    ``max_rows`` evenly spaced rows for very wide models.
    """
    prune = np.asarray(prune, dtype=bool)  # (T, D)
    if order is None:
        votes = prune.sum(0)
        order = np.lexsort((np.arange(prune.shape[1]), -votes))
    order = np.asarray(order, dtype=int)
    if order.size > max_rows:
        order = order[np.linspace(0, order.size - 1, max_rows).round().astype(int)]
    z = prune[:, order].T.astype(np.int8)  # (rows, T)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(tasks),
            y=[f"d{d}" for d in order],
            zmin=0,
            zmax=1,
            colorscale=[[0, "#e8eef7"], [1, "#c0392b"]],
            showscale=False,
            hovertemplate="%{y} %{x}: %{z}<extra></extra>",
        )
    )
    fig.update_layout(
        title="Prune votes: dimensions × tasks (red = pruned)",
        xaxis_title="task",
        yaxis_title="dimension (sorted by votes)",
        **_LAYOUT,
    )
    fig.update_yaxes(showticklabels=False, autorange="reversed", type="category")
    return fig


def vote_histogram(votes: np.ndarray, n_tasks: int) -> go.Figure:
    """How many dimensions got k prune votes, k = 0..n_tasks."""
    votes = np.asarray(votes).astype(int)
    counts = np.bincount(votes, minlength=n_tasks + 1)[: n_tasks + 1]
    fig = go.Figure(go.Bar(x=list(range(n_tasks + 1)), y=counts, text=counts, textposition="outside"))
    fig.update_layout(title="Prune votes per dimension", xaxis_title="tasks voting to prune", yaxis_title="dimensions", **_LAYOUT)
    fig.update_xaxes(dtick=1)
    return fig


def upset_bars(overlaps: pd.DataFrame, tasks: Sequence[str], top: int = 20) -> go.Figure:
    """UpSet-style plot: bars of exact-intersection sizes over a dot matrix of member tasks.

    ``overlaps`` has ``size`` and one bool column per task (as ``agreement.upset_overlaps`` returns).
    """
    df = overlaps.sort_values("size", ascending=False).head(top).reset_index(drop=True)
    tasks = list(tasks)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.6, 0.4], vertical_spacing=0.03)
    xs = list(range(len(df)))
    fig.add_trace(
        go.Bar(x=xs, y=df["size"], text=df["size"], textposition="outside", marker_color="#34495e", showlegend=False),
        row=1,
        col=1,
    )
    for j, t in enumerate(tasks):
        member = df[t].astype(bool).to_numpy() if t in df else np.zeros(len(df), bool)
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=[j] * len(df),
                mode="markers",
                showlegend=False,
                hoverinfo="skip",
                marker=dict(size=11, color=np.where(member, "#34495e", "#dde3ea")),
            ),
            row=2,
            col=1,
        )
    fig.update_yaxes(title_text="dimensions", row=1, col=1)
    fig.update_yaxes(tickvals=list(range(len(tasks))), ticktext=tasks, autorange="reversed", row=2, col=1)
    fig.update_xaxes(showticklabels=False, row=2, col=1)
    fig.update_layout(title=f"Exact overlaps of pruned sets (top {len(df)})", height=520, **_LAYOUT)
    return fig


def stability_histogram(keep_frequency: np.ndarray, bins: int = 40) -> go.Figure:
    """Per-dimension frequency of being kept across bootstrap resamples (0 or 1 = stable)."""
    f = np.asarray(keep_frequency, dtype=np.float64)
    fig = go.Figure(go.Histogram(x=f, xbins=dict(start=0.0, end=1.0 + 1e-9, size=1.0 / bins)))
    fig.update_layout(
        title="Bootstrap keep frequency per dimension",
        xaxis_title="fraction of resamples keeping the dim",
        yaxis_title="dimensions",
        **_LAYOUT,
    )
    fig.update_yaxes(type="log")
    return fig


SPARSITY_RANGE = (0.0, 0.9)  # the app's sparsity slider: plots over sparsity keep this axis, so runs compare by eye


def run_history(
    runs: pd.DataFrame,
    x: str = "sparsity",
    y: str = "delta_avg",
    color: str | None = "method",
    ci: tuple[str, str] = ("ci_low", "ci_high"),
) -> go.Figure:
    """Stored runs (e.g. sparsity vs the mean main-metric delta), one line per ``color`` value
    (method), with the runs' 95% CIs (``ci`` columns, when present) as error bars; over sparsity
    the axis is fixed to ``SPARSITY_RANGE``. Hover shows the run id."""
    fig = go.Figure()
    runs = runs.dropna(subset=[c for c in (x, y) if c in runs]) if not runs.empty else runs
    if runs.empty or x not in runs or y not in runs:
        fig.update_layout(title="No runs yet", **_LAYOUT)
        return fig
    if color and color in runs:  # a run without the field is still plotted, under "?"
        groups = runs.assign(**{color: runs[color].fillna("?").astype(str)}).groupby(color, sort=True)
    else:
        groups = [("runs", runs)]
    for name, g in groups:
        g = g.sort_values(x)
        hover = g["run_id"].astype(str) if "run_id" in g else None
        bars = None
        if all(c in g for c in ci):
            lo, hi = (pd.to_numeric(g[c], errors="coerce") for c in ci)
            bars = dict(
                type="data",
                symmetric=False,
                array=(hi - g[y]).fillna(0).clip(lower=0),
                arrayminus=(g[y] - lo).fillna(0).clip(lower=0),
                visible=True,
                thickness=1,
                width=3,
            )
        fig.add_trace(
            go.Scatter(
                x=g[x],
                y=g[y],
                mode="lines+markers",
                name=str(name),
                text=hover,
                error_y=bars,
                hovertemplate="%{text}: %{x}, %{y:.4f}<extra></extra>",
            )
        )
    fig.add_hline(y=0, line_color="grey", line_dash="dot")
    fig.update_layout(title=f"Run history: {y} vs {x} (95% CI)", xaxis_title=x, yaxis_title=y, **_LAYOUT)
    if x == "sparsity":
        fig.update_xaxes(range=list(SPARSITY_RANGE))
    return fig


def _rgba(color: str, alpha: float) -> str:
    """A plotly hex colour (``#rrggbb``) as ``rgba(r, g, b, alpha)``."""
    c = color.lstrip("#")
    r, g, b = (int(c[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r}, {g}, {b}, {alpha})"


def sweep_curves(frame: pd.DataFrame, title: str, y_title: str, log_y: bool = False) -> go.Figure:
    """One line per method over sparsity with a shaded 95% CI band (``frame``: ``method``,
    ``sparsity``, ``value``, ``ci_low``, ``ci_high``, as ``experiments.reports.curve_frame`` returns;
    the band covers the points that have an interval, NaN elsewhere)."""
    import plotly.colors

    palette = plotly.colors.qualitative.Plotly
    fig = go.Figure()
    if frame.empty:
        fig.update_layout(title=f"{title}: no points", **_LAYOUT)
        return fig
    for i, (method, g) in enumerate(frame.groupby("method", sort=False)):
        g = g.sort_values("sparsity")
        color = palette[i % len(palette)]
        band = g.dropna(subset=["ci_low", "ci_high"])
        if len(band):
            fig.add_trace(
                go.Scatter(
                    x=list(band["sparsity"]) + list(band["sparsity"])[::-1],
                    y=list(band["ci_high"]) + list(band["ci_low"])[::-1],
                    fill="toself",
                    fillcolor=_rgba(color, 0.15),
                    line=dict(width=0),
                    hoverinfo="skip",
                    showlegend=False,
                    legendgroup=str(method),
                    name=f"{method} 95% CI",
                )
            )
        fig.add_trace(
            go.Scatter(
                x=g["sparsity"],
                y=g["value"],
                mode="lines+markers",
                name=str(method),
                legendgroup=str(method),
                line=dict(color=color),
                error_y=dict(
                    type="data",
                    symmetric=False,
                    array=(g["ci_high"] - g["value"]).fillna(0),
                    arrayminus=(g["value"] - g["ci_low"]).fillna(0),
                    visible=bool(g["ci_low"].notna().any()),
                    thickness=1,
                    width=3,
                ),
                hovertemplate=f"{method}: sparsity %{{x}}, %{{y:.4g}}<extra></extra>",
            )
        )
    fig.update_layout(title=title, xaxis_title="sparsity (fraction of hidden dims pruned)", yaxis_title=y_title, **_LAYOUT)
    if log_y:
        fig.update_yaxes(type="log")
    return fig
