"""Figures of a tune (``experiments/tune.py``): trials over time, settings against the objective
(parallel coordinates) and parameter importance. Each builder takes ``tune.trial_rows`` rows (or an
importance dict) and returns a plotly figure; the app's Tune page only renders them."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from diet_explore.experiments.tune import WEIGHT_PREFIX
from diet_explore.plots import figure_builder

STATE_COLOURS = {"complete": "#1f77b4", "pruned": "#bbbbbb", "fail": "#d62728", "running": "#2ca02c"}


def param_title(name: str) -> str:
    """A parameter as the Mask builder names it: 'τ', 'weight boolq', 'layer aggregation'."""
    if name.startswith(WEIGHT_PREFIX):
        return f"weight {name.removeprefix(WEIGHT_PREFIX)}"
    return {"threshold": "τ", "layer_agg": "layer aggregation", "last_k": "last k", "site": "site"}.get(name, name)


def objective_title(objective: str) -> str:
    return "Δ main metric vs dense (points)" if objective == "main" else "Δ gold log-likelihood per char vs dense"


def _scaled(value: float | None, objective: str) -> float | None:
    return None if value is None else (100 * value if objective == "main" else value)


@figure_builder
def history_figure(rows: list[dict[str, Any]], objective: str = "main") -> go.Figure:
    """Each trial's value against its number (pruned trials at their last reported value, grey),
    and the best complete value so far as a step line."""
    fig = go.Figure()
    for state, colour in STATE_COLOURS.items():
        mine = [r for r in rows if r["state"] == state and r["value"] is not None]
        if mine:
            fig.add_trace(
                go.Scatter(
                    x=[r["number"] for r in mine],
                    y=[_scaled(r["value"], objective) for r in mine],
                    mode="markers",
                    name=state,
                    marker={"color": colour, "size": 9},
                    text=[f"{r.get('label') or ''} · {r.get('examples') or 0} examples" for r in mine],
                    hovertemplate="trial %{x}: %{y:.3f}<br>%{text}<extra></extra>",
                )
            )
    best, xs, ys = None, [], []
    for r in sorted(rows, key=lambda r: r["number"]):
        if r["state"] == "complete" and r["value"] is not None and (best is None or r["value"] > best):
            best = r["value"]
        if best is not None:
            xs.append(r["number"])
            ys.append(_scaled(best, objective))
    if xs:
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line={"shape": "hv", "color": "#ff7f0e"}, name="best so far"))
    fig.update_layout(
        title="Trials (tuning set)",
        xaxis_title="trial",
        yaxis_title=objective_title(objective),
        height=360,
        margin={"t": 50, "b": 40},
    )
    return fig


@figure_builder
def parallel_figure(rows: list[dict[str, Any]], objective: str = "main") -> go.Figure:
    """Parallel coordinates of the complete trials: one axis per setting (choices as labelled
    codes; a setting a trial does not read, e.g. last k without last_k, at the axis' lowest value)
    and the objective, coloured by the objective."""
    done = [r for r in rows if r["state"] == "complete" and r["value"] is not None]
    names = list(dict.fromkeys(k for r in done for k in r["params"]))
    dims = []
    for name in names:
        values = [r["params"].get(name) for r in done]
        if any(isinstance(v, str) for v in values if v is not None):
            options = sorted({str(v) for v in values if v is not None})
            codes = [options.index(str(v)) if v is not None else 0 for v in values]
            dims.append({"label": param_title(name), "values": codes, "tickvals": list(range(len(options))), "ticktext": options})
        else:
            nums = [float(v) for v in values if v is not None]
            low = min(nums) if nums else 0.0
            dims.append({"label": param_title(name), "values": [float(v) if v is not None else low for v in values]})
    scores = [_scaled(r["value"], objective) for r in done]
    dims.append({"label": objective_title(objective), "values": scores})
    line = {"color": scores, "colorscale": "Viridis", "showscale": True} if scores else {}
    fig = go.Figure(go.Parcoords(dimensions=dims, line=line))
    fig.update_layout(
        title=f"Settings against the objective ({len(done)} complete trials)", height=420, margin={"t": 80, "l": 60, "r": 60}
    )
    return fig


@figure_builder
def importance_figure(importance: dict[str, float]) -> go.Figure:
    """Each searched setting's share of the objective's variance (fANOVA), largest on top."""
    items = sorted(importance.items(), key=lambda kv: kv[1])
    fig = go.Figure(go.Bar(x=[v for _, v in items], y=[param_title(k) for k, _ in items], orientation="h"))
    fig.update_layout(
        title="Parameter importance (fANOVA, complete trials)",
        xaxis_title="share of the objective's variance",
        height=max(240, 40 * len(items) + 120),
        margin={"t": 50, "l": 140},
    )
    return fig
