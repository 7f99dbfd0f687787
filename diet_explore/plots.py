"""Plot builders: plain arrays and DataFrames in, plotly figures out (and task × task matrices as
coloured tables, ``HeatTable``).

The app draws these with ``widgets.chart``; the CLI and notebooks can call them too. Nothing
here imports streamlit or computes a mask: callers pass what the library computed, so a plot never
disagrees with the number shown beside it.

Figures are drawn again on every slider move, so they are kept light: curves thinned to what a
chart can show, histograms binned here (so a bar's height is the count the caller can check), one
trace where one will do. Every builder's figure leaves through ``finish`` (``@figure_builder``):
plain lists, a data revision, no template, so a front end's update draws it once (see ``finish``).
A hidden dimension is named by its index alone, as every table shows it ("507"); hover text says
"dim 507".
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.colors as pc
import plotly.graph_objects as go

# Curves longer than this are thinned for drawing (every point's rank is kept exactly): a chart about
# 1000 px wide shows no more, and every point is SVG the browser redraws on each slider move.
MAX_CURVE_POINTS = 240
_LAYOUT = dict(margin=dict(l=60, r=20, t=50, b=50))
DODGE_SHARE = 0.006  # sweep curves: methods side by side at one sparsity, this share of the x range apart
_LOG_AXIS = dict(type="log", dtick=1)  # one labelled tick per power of ten (not "1000, 5, 2, 100, 5, 2")


# The look every figure has on its own (it carries no template): the app's body font and text colour.
FONT = dict(family='"Source Sans", sans-serif', color="#31333F")


def _plain(value):
    """``value`` with every numpy array in it (at any depth) as a list (dates as ISO strings), or
    ``value`` itself when it holds none."""
    if isinstance(value, np.ndarray):
        return [str(t) for t in pd.DatetimeIndex(value)] if value.dtype.kind == "M" else value.tolist()
    if isinstance(value, dict):
        out = {k: _plain(v) for k, v in value.items()}
        return value if all(out[k] is v for k, v in value.items()) else out
    if isinstance(value, (list, tuple)):
        out = [_plain(v) for v in value]
        return value if all(a is b for a, b in zip(out, value, strict=True)) else out
    return value


def finish(fig: go.Figure) -> go.Figure:
    """``fig`` as every figure of this package leaves it: its data as plain lists,
    ``layout.datarevision`` a digest of that data, no template, ``FONT``, and axes as below (changed
    in place).

    The rule, and why: a front end updates a figure with ``Plotly.react`` (Streamlit's chart after
    it mounts one, Dash's ``dcc.Graph`` on every change), which diffs the new figure against the one
    drawn and redraws only what changed. Three things make it redraw everything for an unchanged
    figure: without a datarevision, an array that is a new object counts as new data; numpy arrays,
    which plotly sends as base64 typed arrays, are decoded into new objects on every draw; and a
    template is compared as an object, not by value. Streamlit copies the figure (and, with its own
    theme, the template) right after every mount, so each of them cost a second full draw of every
    chart on every slider move. With the datarevision, data that does change still redraws: its
    digest changes."""
    for part in (*fig.data, fig.layout):
        # each part's own JSON (numpy intact; the figure's to_dict has already made them base64)
        for key, value in part.to_plotly_json().items():
            if (plain := _plain(value)) is not value:
                part[key] = None  # an equal value set again is ignored: an array would stay numpy
                part[key] = plain
    data = json.dumps([t.to_plotly_json() for t in fig.data], sort_keys=True, default=str)
    fig.layout.template = None
    fig.update_layout(datarevision=hashlib.sha1(data.encode()).hexdigest()[:16], font=FONT)
    # What a builder leaves unset: margins grow to fit long tick labels (task names) instead of
    # cutting them; no vertical grid or zero lines (a bar chart's columns, an UpSet's dot grid).
    fig.for_each_xaxis(lambda ax: ax.update(_unset(ax, automargin=True, showgrid=False, zeroline=False)))
    fig.for_each_yaxis(lambda ax: ax.update(_unset(ax, automargin=True)))
    return fig


def _unset(axis, **defaults) -> dict:
    """The ``defaults`` the ``axis`` does not set itself."""
    return {k: v for k, v in defaults.items() if axis[k] is None}


def figure_builder(build: Callable[..., go.Figure]) -> Callable[..., go.Figure]:
    """Marks a function that returns a figure: its figure leaves through ``finish``."""

    @functools.wraps(build)
    def built(*args, **kwargs) -> go.Figure:
        return finish(build(*args, **kwargs))

    built.finished = True
    return built


def _vline(x: float, text: str, color: str) -> dict:
    """Layout entries for a dashed vertical line at ``x`` labelled at its top right: what
    ``fig.add_vline(annotation_position="top right")`` makes, at a tenth of its cost (it ran on
    every slider move)."""
    return dict(
        shapes=[dict(type="line", x0=x, x1=x, xref="x", y0=0, y1=1, yref="y domain", line=dict(color=color, dash="dash"))],
        annotations=[dict(text=text, x=x, xref="x", xanchor="left", y=1, yref="y domain", yanchor="top", showarrow=False)],
    )


def dim_label(dim: int) -> str:
    """How a hidden dimension is named in hover text (tables and axes show the index alone)."""
    return f"dim {int(dim)}"


def _thin(n: int, max_points: int = MAX_CURVE_POINTS) -> np.ndarray:
    """Indices to draw from a sorted curve of length n: all of the head, evenly spaced after."""
    if n <= max_points:
        return np.arange(n)
    head = np.arange(min(n, max_points // 4))  # the steep top of the curve, kept whole
    tail = np.linspace(head[-1] + 1, n - 1, max_points - head.size).round().astype(int)
    return np.unique(np.concatenate([head, tail]))


@figure_builder
def sorted_score_curves(scores: Mapping[str, np.ndarray], log_y: bool = True, cutoff_rank: int | None = None) -> go.Figure:
    """One descending score curve per task (rank on x). ``cutoff_rank``: a vertical line at the keep count."""
    traces = []
    for task, s in scores.items():
        s = np.sort(np.asarray(s, dtype=np.float64))[::-1]  # (D,)
        idx = _thin(s.size)
        traces.append(go.Scatter(x=idx, y=s[idx], mode="lines", name=task))
    # traces and layout handed to the constructor, not add_trace/update_layout: the same figure at
    # ~0.6x the cost (it is rebuilt on every sparsity move, for the keep-count line)
    layout = dict(
        title=dict(text="Sorted dimension scores per task"),
        xaxis=dict(title=dict(text="rank")),
        yaxis=dict(title=dict(text="score (mean |activation|)"), **(_LOG_AXIS if log_y else {})),
        **(_vline(cutoff_rank, f"each task keeps {cutoff_rank}", "grey") if cutoff_rank is not None else {}),
        **_LAYOUT,
    )
    return go.Figure(data=traces, layout=layout)


@figure_builder
def layer_dim_heatmap(layer_scores: np.ndarray, dims: Sequence[int], task: str = "", per_dim: bool = False) -> go.Figure:
    """Heatmap of ``layer_scores[:, dims]`` ((L, D) in): which blocks a dimension is active in.
    ``per_dim``: each column divided by its own peak, so a massive dim (100× the others) does not
    leave every other column one dark colour; the hover still gives the score."""
    layer_scores = np.asarray(layer_scores)
    dims = [int(d) for d in dims]
    raw = layer_scores[:, dims] if dims else np.zeros((layer_scores.shape[0], 0))  # (L, len(dims))
    z = raw / np.where(raw.max(0) > 0, raw.max(0), 1.0) if per_dim else raw
    heat = go.Heatmap(
        z=z,
        x=[str(d) for d in dims],
        y=list(range(layer_scores.shape[0])),
        colorscale="Viridis",
        colorbar=dict(title=dict(text="share of the dim's peak" if per_dim else "score")),
        **(
            dict(customdata=raw, hovertemplate="dim %{x}, layer %{y}: %{customdata:.4g} (%{z:.0%} of its peak)<extra></extra>")
            if per_dim
            else dict(hovertemplate="dim %{x}, layer %{y}: %{z:.4g}<extra></extra>")
        ),
    )
    title = "Score by layer for the picked dimensions" + (f" ({task})" if task else "")
    layout = dict(
        title=dict(text=title),
        xaxis=dict(title=dict(text="hidden dimension"), type="category"),
        yaxis=dict(title=dict(text="layer")),
        **_LAYOUT,
    )
    return go.Figure(data=[heat], layout=layout)


@figure_builder
def score_distributions(scores: Mapping[str, np.ndarray], log_x: bool = True, bins: int = 60) -> go.Figure:
    """Per-dimension score distributions, one step outline per task over shared bins (log10 scale
    by default): one path per task instead of a bar per bin, binned here."""
    xs = {t: np.asarray(s, dtype=np.float64) for t, s in scores.items()}
    xs = {t: (np.log10(np.maximum(s, 1e-12)) if log_x else s) for t, s in xs.items()}
    finite = np.concatenate([x for x in xs.values()]) if xs else np.zeros(0)
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    fig = go.Figure()
    for task, x in xs.items():
        counts, _ = np.histogram(x, bins=edges)
        fig.add_trace(
            go.Scatter(
                x=edges,
                y=np.append(counts, counts[-1]),  # the last edge closes the last step
                mode="lines",
                line_shape="hv",
                name=task,
                hovertemplate=f"{task}: %{{y}} dims from %{{x:.3g}}<extra></extra>",
            )
        )
    fig.update_layout(
        title="Distribution of dimension scores",
        xaxis_title="log10 score" if log_x else "score",
        yaxis_title="dimensions per bin",
        **_LAYOUT,
    )
    return fig


def data_range(matrix: np.ndarray) -> tuple[float, float]:
    """The colour range that spreads a task × task matrix's off-diagonal values over the whole
    scale (the diagonal is 1 by definition and would otherwise take the top colour alone)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    off = matrix[~np.eye(matrix.shape[0], dtype=bool)] if matrix.ndim == 2 and matrix.shape[0] > 1 else matrix.ravel()
    off = off[np.isfinite(off)]
    if not off.size:
        return 0.0, 1.0
    lo, hi = float(off.min()), float(off.max())
    return (lo, hi) if hi > lo else (lo - 0.01, hi + 0.01)


@dataclass(frozen=True)
class HeatTable:
    """A task × task matrix as a coloured table: ``frame`` holds the values (rows and columns named by
    task), ``css`` each cell's colours on the same grid, ``title`` says what it is and the colour range."""

    frame: pd.DataFrame
    css: pd.DataFrame
    title: str
    zmin: float
    zmax: float


def _text_colour(rgb: str) -> str:
    """Black or white, whichever reads on the background ``rgb(r, g, b)`` (relative luminance)."""
    r, g, b = (float(v) / 255 for v in rgb[rgb.index("(") + 1 : -1].split(","))
    return "#000000" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.45 else "#ffffff"


def task_heat_table(
    matrix: np.ndarray,
    tasks: Sequence[str],
    title: str,
    zmin: float = 0.0,
    zmax: float = 1.0,
    colorscale: str = "Blues",
    auto_range: bool = False,
) -> HeatTable:
    """A symmetric task × task matrix (Jaccard, Spearman) as a table coloured like a heatmap: a table,
    not a plotly figure, so a page whose first view it is opens without plotly's script (a fresh
    browser spends over a second loading and running it), and every value is printed.
    ``auto_range``: colours span the off-diagonal data (``data_range``) instead of [zmin, zmax], so
    nearby values (Gemma's 0.87–0.98) are told apart; the title says which range is shown."""
    matrix = np.asarray(matrix, dtype=np.float64)
    if auto_range:
        zmin, zmax = data_range(matrix)
        title = f"{title} (colours: {zmin:.2f} to {zmax:.2f})"
    scale = pc.get_colorscale(colorscale)
    share = np.clip((np.nan_to_num(matrix, nan=zmin) - zmin) / (zmax - zmin), 0.0, 1.0)
    fills = pc.sample_colorscale(scale, share.ravel().tolist()) if share.size else []
    css = [f"background-color: {c}; color: {_text_colour(c)}" for c in fills]
    names = list(tasks)
    return HeatTable(
        frame=pd.DataFrame(matrix, index=names, columns=names),
        css=pd.DataFrame(np.array(css, dtype=object).reshape(matrix.shape), index=names, columns=names),
        title=title,
        zmin=float(zmin),
        zmax=float(zmax),
    )


def correlation_table(matrix: np.ndarray, tasks: Sequence[str], method: str = "Spearman", auto_range: bool = False) -> HeatTable:
    return task_heat_table(
        matrix, tasks, f"{method} correlation of task scores", zmin=-1.0, zmax=1.0, colorscale="RdBu", auto_range=auto_range
    )


def jaccard_table(matrix: np.ndarray, tasks: Sequence[str], sparsity: float, auto_range: bool = False) -> HeatTable:
    return task_heat_table(matrix, tasks, f"Jaccard overlap of pruned sets at sparsity {sparsity:.2f}", auto_range=auto_range)


@figure_builder
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
    # rows on a numeric axis (a category axis of thousands of labels is slow to lay out in the
    # browser); each row's dimension index rides along as hover data
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(tasks),
            y=np.arange(order.size),
            customdata=np.repeat(order[:, None], z.shape[1], axis=1).astype(np.int32),
            zmin=0,
            zmax=1,
            colorscale=[[0, "#e8eef7"], [1, "#c0392b"]],
            showscale=False,
            hovertemplate="dim %{customdata}, %{x}: %{z}<extra></extra>",
        )
    )
    fig.update_layout(
        title="Prune votes: dimensions × tasks (red = pruned)",
        xaxis_title="task",
        yaxis=dict(title="dimension (sorted by votes)", showticklabels=False, autorange="reversed"),
        **_LAYOUT,
    )
    return fig


@figure_builder
def vote_histogram(prune_votes: np.ndarray, keep: np.ndarray, n_tasks: int, label: str = "") -> go.Figure:
    """How many dimensions got k prune votes, k = 0..n_tasks, each bar split by what the mask does
    with them (``masking.voteview.VoteView``: ``prune_votes`` (D,) and the mask's ``keep`` (D,)): kept
    in grey, pruned in red. The split is the mask's own decision, so task weights, τ, an exact count
    or a rounded count all show as they act; ``label`` names the mask (``MaskConfig.label``)."""
    votes = np.asarray(prune_votes).astype(int)
    keep = np.asarray(keep, dtype=bool)
    x = list(range(n_tasks + 1))
    kept = np.bincount(votes[keep], minlength=n_tasks + 1)[: n_tasks + 1]
    pruned = np.bincount(votes[~keep], minlength=n_tasks + 1)[: n_tasks + 1]
    bars = [
        go.Bar(x=x, y=counts, name=name, marker_color=colour, text=[str(n) for n in counts], textposition="inside", textangle=0)
        for counts, name, colour in ((kept, "kept by the mask", "#7f8c9d"), (pruned, "pruned by the mask", "#c0392b"))
    ]
    return go.Figure(
        bars,
        layout=dict(
            title="Prune votes per dimension" + (f", split by the mask ({label})" if label else ""),
            xaxis=dict(title="tasks voting to prune", dtick=1),
            yaxis_title="dimensions",
            barmode="stack",
            showlegend=True,
            legend=dict(orientation="h", x=1, xanchor="right", y=1.0, yanchor="bottom"),
            uniformtext=dict(minsize=11, mode="show"),  # a short bar's count stays readable, not shrunk
            **_LAYOUT,
        ),
    )


@figure_builder
def upset_bars(overlaps: pd.DataFrame, tasks: Sequence[str], top: int = 20) -> go.Figure:
    """UpSet-style plot: bars of exact-intersection sizes over a dot matrix of member tasks.

    ``overlaps`` has ``size`` and one bool column per task (as ``agreement.upset_overlaps`` returns).
    The two panels share the x axis; their layout is written out (what ``make_subplots(rows=2,
    shared_xaxes=True, row_heights=[0.6, 0.4], vertical_spacing=0.03)`` makes), since building it
    through make_subplots took 60 ms of every sparsity move on the Agreement page.
    """
    df = overlaps.sort_values("size", ascending=False).head(top).reset_index(drop=True)
    tasks = list(tasks)
    xs = list(range(len(df)))
    bars = go.Bar(
        x=xs,
        y=df["size"],
        text=[str(n) for n in df["size"]],
        textposition="outside",
        marker_color="#34495e",
        showlegend=False,
        xaxis="x",
        yaxis="y",
    )
    # the dot matrix as one trace (row j = task j): one trace instead of one per task
    member = np.array([df[t].astype(bool).to_numpy() if t in df else np.zeros(len(df), bool) for t in tasks])  # (T, n)
    dots = go.Scatter(
        x=np.tile(xs, len(tasks)),
        y=np.repeat(np.arange(len(tasks)), len(df)),
        mode="markers",
        showlegend=False,
        hoverinfo="skip",
        marker=dict(size=11, color=np.where(member.ravel(), "#34495e", "#dde3ea")),
        xaxis="x2",
        yaxis="y2",
    )
    gap = 0.03
    split = 0.4 * (1 - gap)  # the dot panel's share of the height, below the bars
    return go.Figure(
        [bars, dots],
        layout=dict(
            xaxis=dict(anchor="y", domain=[0.0, 1.0], matches="x2", showticklabels=False),
            yaxis=dict(anchor="x", domain=[split + gap, 1.0], title=dict(text="dimensions")),
            xaxis2=dict(anchor="y2", domain=[0.0, 1.0], showticklabels=False),
            yaxis2=dict(
                anchor="x2",
                domain=[0.0, split],
                tickvals=list(range(len(tasks))),
                ticktext=tasks,
                autorange="reversed",
                zeroline=False,
            ),
            title=f"Exact overlaps of pruned sets (top {len(df)})",
            height=520,
            **_LAYOUT,
        ),
    )


def stability_bins(keep_frequency: np.ndarray, bins: int = 40) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(left edges, right edges, counts) of the keep-frequency histogram: a bar for exactly 0 (never
    kept), ``bins`` bars over (0, 1), and a bar for exactly 1 (kept in every resample), so the
    stable dims, usually most of them, each get the bar they belong to. Counts sum to D."""
    f = np.asarray(keep_frequency, dtype=np.float64)
    inner = np.linspace(0.0, 1.0, bins + 1)
    between = f[(f > 0) & (f < 1)]
    counts_in, _ = np.histogram(between, bins=inner)
    left = np.concatenate([[0.0], inner[:-1], [1.0]])
    right = np.concatenate([[0.0], inner[1:], [1.0]])
    counts = np.concatenate([[int((f <= 0).sum())], counts_in, [int((f >= 1).sum())]])
    return left, right, counts


@figure_builder
def stability_histogram(keep_frequency: np.ndarray, bins: int = 40) -> go.Figure:
    """Per-dimension frequency of being kept across bootstrap resamples (0 or 1 = stable), binned
    by ``stability_bins``: its first and last bars are the dims kept in no resample and in all."""
    left, right, counts = stability_bins(keep_frequency, bins)
    width = 1.0 / bins
    # the exact-0 and exact-1 bars stand one bar width outside [0, 1], beside the bins they are not part of
    centers = np.where(left == right, np.where(left == 0, -width, 1 + width), (left + right) / 2)
    labels = [
        "kept in no resample" if lo == hi == 0 else "kept in every resample" if lo == hi == 1 else f"kept in {lo:.1%}–{hi:.1%}"
        for lo, hi in zip(left, right)
    ]
    colors = ["#2e86c1" if lo == hi else "#e67e22" for lo, hi in zip(left, right)]
    bars = go.Bar(
        x=centers,
        y=counts,
        width=width * 0.9,
        marker=dict(color=colors),
        customdata=labels,
        hovertemplate="%{customdata}: %{y} dims<extra></extra>",
    )
    ticks = [-width, 0.2, 0.4, 0.6, 0.8, 1 + width]
    layout = dict(
        # short enough to clear plotly's toolbar (top right, shown on hover)
        title=dict(
            text="Bootstrap keep frequency per dimension",
            subtitle=dict(text="blue: stable, kept in none or all of the resamples; orange: kept in some"),
        ),
        xaxis=dict(
            title=dict(text="fraction of resamples keeping the dim"),
            range=[-2 * width, 1 + 2 * width],
            tickvals=ticks,
            ticktext=["never", "0.2", "0.4", "0.6", "0.8", "always"],
        ),
        yaxis=dict(title=dict(text="dimensions"), **_LOG_AXIS),
        **{**_LAYOUT, "margin": dict(_LAYOUT["margin"], t=80)},  # room for the subtitle
    )
    return go.Figure(data=[bars], layout=layout)  # built in one go: rebuilt on every sparsity move


# Run-store columns as a reader should see them on an axis (the raw name otherwise)
RUN_COLUMN_TITLES = {
    "delta_avg": "Δ main metric vs dense (mean over tasks)",
    "delta_points": "Δ main metric vs dense, points (mean over tasks)",
    "sparsity": "sparsity",
    "n_keep": "kept dims",
}

SPARSITY_RANGE = (0.0, 0.9)  # the app's sparsity slider: plots over sparsity keep this axis, so runs compare by eye


@figure_builder
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
                hovertemplate="%{text}: %{x}, %{y:.4g}<extra></extra>",
            )
        )
    fig.add_hline(y=0, line_color="grey", line_dash="dot")
    xt, yt = RUN_COLUMN_TITLES.get(x, x), RUN_COLUMN_TITLES.get(y, y)
    fig.update_layout(title=f"Run history: {yt} vs {xt} (95% CI)", xaxis_title=xt, yaxis_title=yt, **_LAYOUT)
    if x == "sparsity":
        fig.update_xaxes(range=list(SPARSITY_RANGE))
    return fig


@figure_builder
def sweep_curves(
    frame: pd.DataFrame, title: str, y_title: str, log_y: bool = False, methods: Sequence[str] | None = None
) -> go.Figure:
    """One line per method over sparsity with 95% CI error bars (``frame``: ``method``, ``sparsity``,
    ``value``, ``ci_low``, ``ci_high``, as ``experiments.reports.curve_frame`` returns; NaN where a
    point has no interval). ``methods``: every method's place in the palette, so a method keeps its
    colour in a figure where another has no points.

    The methods are drawn side by side at each sparsity, a few pixels apart (hover gives the exact
    sparsity): eight methods' intervals at one x were one vertical smear, and shaded bands between
    two sparsities overlapped into one colour and drew an interval where none was measured."""
    import plotly.colors

    palette = plotly.colors.qualitative.Plotly
    order = list(methods or [])
    order += [m for m in frame["method"].unique() if m not in order] if not frame.empty else []
    fig = go.Figure()
    if frame.empty:
        fig.update_layout(title=f"{title}: no points", **_LAYOUT)
        return fig
    drawn = list(frame["method"].unique())
    span = float(frame["sparsity"].max() - frame["sparsity"].min()) or 1.0
    step = DODGE_SHARE * span
    for method, g in frame.groupby("method", sort=False):
        g = g.sort_values("sparsity")
        color = palette[order.index(method) % len(palette)]
        offset = step * (drawn.index(method) - (len(drawn) - 1) / 2)
        fig.add_trace(
            go.Scatter(
                x=g["sparsity"] + offset,
                y=g["value"],
                customdata=g["sparsity"],
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
                    thickness=1.5,
                    width=2,
                ),
                hovertemplate=f"{method}: sparsity %{{customdata}}, %{{y:.4g}}<extra></extra>",
            )
        )
    fig.update_layout(title=title, xaxis_title="sparsity (fraction of hidden dims pruned)", yaxis_title=y_title, **_LAYOUT)
    if log_y:
        fig.update_yaxes(**_LOG_AXIS)  # one tick per decade: perplexities span 10^1 to 10^12
    return fig


KEEP_COLOR, PRUNE_COLOR, IDLE_COLOR = "#2a9d8f", "#c0392b", "#9aa5b1"


@figure_builder
def dim_task_scores(
    dim: int,
    tasks: Sequence[str],
    scores: Sequence[float],
    thresholds: Sequence[float],
    kept: Sequence[bool],
    voting: Sequence[bool],
) -> go.Figure:
    """One bar per task: the dim's score, coloured by the task's vote (keep / prune; grey: not
    voting), with a mark at the lowest score that task keeps at the sparsity."""
    scores, thresholds = np.asarray(scores, dtype=np.float64), np.asarray(thresholds, dtype=np.float64)
    colors = [(KEEP_COLOR if k else PRUNE_COLOR) if v else IDLE_COLOR for k, v in zip(kept, voting, strict=True)]
    votes = [
        ("keeps" if k else "prunes") if v else ("would keep" if k else "would prune") for k, v in zip(kept, voting, strict=True)
    ]
    fig = go.Figure(
        go.Bar(
            x=list(tasks),
            y=scores,
            marker_color=colors,
            name="score",
            customdata=np.stack([thresholds, np.asarray(votes, dtype=object)], axis=1) if len(tasks) else None,
            hovertemplate="%{x}: score %{y:.4g}, keeps ≥ %{customdata[0]:.4g} (%{customdata[1]})<extra></extra>",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=list(tasks),
            y=thresholds,
            mode="markers",
            name="keep threshold",
            marker=dict(symbol="line-ew", size=34, line=dict(width=3, color="#222")),
            hovertemplate="%{x}: keeps dims scoring ≥ %{y:.4g}<extra></extra>",
        )
    )
    positive = np.concatenate([scores, thresholds])
    positive = positive[positive > 0]
    log = positive.size > 0 and positive.max() / positive.min() > 20
    fig.update_layout(
        title=dict(
            text=f"Dim {dim}: score per task and each task's keep threshold",
            subtitle=dict(
                text="teal: the task keeps the dim, red: the task prunes it, grey: not voting; "
                "black line: the lowest score the task keeps"
            ),
        ),
        xaxis_title="task",
        yaxis_title="score (mean |activation|)",
        showlegend=False,
        **{**_LAYOUT, "margin": dict(_LAYOUT["margin"], t=80)},  # room for the subtitle
    )
    fig.update_xaxes(type="category")
    if log:
        fig.update_yaxes(**_LOG_AXIS)
    return fig


@figure_builder
def dim_layer_profile(dim: int, profiles: Mapping[str, Sequence[float]], log_y: bool = False) -> go.Figure:
    """The dim's score at each layer, one line per task."""
    fig = go.Figure()
    for task, values in profiles.items():
        v = np.asarray(values, dtype=np.float64)
        fig.add_trace(go.Scatter(x=np.arange(v.size), y=v, mode="lines+markers", marker=dict(size=4), name=task))
    fig.update_layout(title=f"Dim {dim}: score by layer", xaxis_title="layer", yaxis_title="mean |activation|", **_LAYOUT)
    if log_y:
        fig.update_yaxes(**_LOG_AXIS)
    return fig
