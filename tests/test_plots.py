"""Plot builders return plotly figures whose data are exactly the arrays passed in."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from diet_explore import plots
from diet_explore.masking.agreement import upset_overlaps, vote_counts
from diet_explore.masking.selection import jaccard

TASKS = ["a", "b", "c"]


def _prune(seed=0, t=3, d=50, k=20):
    rng = np.random.default_rng(seed)
    prune = np.zeros((t, d), bool)
    for i in range(t):
        prune[i, rng.choice(d, k, replace=False)] = True
    return prune


def test_sorted_score_curves_descending_with_cutoff():
    rng = np.random.default_rng(0)
    scores = {t: rng.lognormal(size=300) for t in TASKS}
    fig = plots.sorted_score_curves(scores, cutoff_rank=240)
    assert isinstance(fig, go.Figure) and [tr.name for tr in fig.data] == TASKS
    for tr, t in zip(fig.data, TASKS):
        y = np.asarray(tr.y)
        assert np.all(np.diff(y) <= 0) and y[0] == scores[t].max() and y[-1] == scores[t].min()
    assert fig.layout.shapes[0].x0 == 240
    # the line is each task's own count, not the merged mask's (which the page names above it)
    assert fig.layout.annotations[0].text == "each task keeps 240"
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis.dtick == 1  # one label per power of ten


def test_long_curves_are_thinned_but_keep_head_and_tail():
    s = np.arange(5000, dtype=float)
    fig = plots.sorted_score_curves({"a": s}, log_y=False)
    x, y = np.asarray(fig.data[0].x), np.asarray(fig.data[0].y)
    assert x.size <= plots.MAX_CURVE_POINTS and x[0] == 0 and x[-1] == 4999
    assert np.array_equal(y, 4999 - x)  # each drawn point sits at its true rank
    head = plots.MAX_CURVE_POINTS // 4
    assert np.array_equal(x[:head], np.arange(head))
    assert np.asarray(plots.sorted_score_curves({"a": np.arange(576.0)}).data[0].x).size <= plots.MAX_CURVE_POINTS  # not 576


def test_layer_dim_heatmap_selects_columns():
    layer = np.arange(4 * 10, dtype=float).reshape(4, 10)
    fig = plots.layer_dim_heatmap(layer, [7, 2], "boolq")
    assert np.array_equal(np.asarray(fig.data[0].z), layer[:, [7, 2]])
    assert list(fig.data[0].x) == ["7", "2"] and "boolq" in fig.layout.title.text  # a dim is its index, as in tables
    assert "dim %{x}" in fig.data[0].hovertemplate
    scaled = plots.layer_dim_heatmap(layer, [7, 2], "boolq", per_dim=True)
    assert np.allclose(np.asarray(scaled.data[0].z), layer[:, [7, 2]] / layer[:, [7, 2]].max(0))
    assert np.array_equal(np.asarray(scaled.data[0].customdata), layer[:, [7, 2]])  # the hover gives the score


def test_score_distributions_log():
    fig = plots.score_distributions({"a": np.array([1.0, 10.0, 100.0]), "b": np.array([10.0, 10.0])}, bins=4)
    edges = np.asarray(fig.data[0].x)
    assert np.allclose(edges, [0, 0.5, 1, 1.5, 2])  # log10 of the scores, shared bins
    assert list(fig.data[0].y[:-1]) == [1, 0, 1, 1] and list(fig.data[1].y[:-1]) == [0, 0, 2, 0]


def test_task_heat_tables():
    prune = _prune()
    jac = jaccard(prune[:, None], prune[None])
    table = plots.jaccard_table(jac, TASKS, 0.4)
    assert np.allclose(table.frame.to_numpy(), jac) and "0.40" in table.title
    assert table.frame.columns.tolist() == table.frame.index.tolist() == TASKS
    assert table.css.shape == jac.shape and table.css.index.tolist() == TASKS  # Styler.apply needs the same labels
    corr = plots.correlation_table(np.eye(3), TASKS)
    assert (corr.zmin, corr.zmax) == (-1, 1)


def test_heat_table_colours_follow_the_scale_and_text_stays_readable():
    m = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, np.nan], [0.5, np.nan, 1.0]])
    css = plots.jaccard_table(m, TASKS, 0.2).css.to_numpy()
    assert css[0, 0] == "background-color: rgb(8, 48, 107); color: #ffffff"  # 1: Blues' dark top, white text
    assert css[0, 1] == "background-color: rgb(247, 251, 255); color: #000000"  # 0: its pale bottom, black text
    assert css[1, 2] == css[0, 1]  # no value (a constant task's NaN): the bottom colour, not an error
    corr = plots.correlation_table(np.array([[1.0, -1.0], [-1.0, 1.0]]), TASKS[:2]).css.to_numpy()
    assert corr[0, 1].startswith("background-color: rgb(103, 0, 31)")  # RdBu: -1 red, +1 blue
    assert corr[0, 0].startswith("background-color: rgb(5, 48, 97)")


def test_heat_tables_offer_a_colour_range_fitted_to_the_data():
    """Gemma's Jaccards all lie in 0.87-0.98: on [0, 1] every cell is the same dark blue."""
    m = np.array([[1.0, 0.87, 0.95], [0.87, 1.0, 0.98], [0.95, 0.98, 1.0]])
    fixed = plots.jaccard_table(m, TASKS, 0.2)
    assert (fixed.zmin, fixed.zmax) == (0, 1) and "colours" not in fixed.title
    fitted = plots.jaccard_table(m, TASKS, 0.2, auto_range=True)
    assert (fitted.zmin, fitted.zmax) == (0.87, 0.98)  # the off-diagonal range, not the 1s
    assert "0.87 to 0.98" in fitted.title
    assert fitted.css.iloc[0, 1] != fixed.css.iloc[0, 1]  # 0.87: the bottom colour once fitted
    assert fitted.css.iloc[0, 1] == plots.jaccard_table(np.zeros((1, 1)), TASKS[:1], 0.2).css.iloc[0, 0]
    corr = plots.correlation_table(m, TASKS, auto_range=True)
    assert (corr.zmin, corr.zmax) == (0.87, 0.98)


def test_vote_matrix_sorted_by_votes():
    prune = _prune()
    fig = plots.vote_matrix(prune, TASKS)
    z = np.asarray(fig.data[0].z)
    assert z.shape == (50, 3)
    assert np.all(np.diff(z.sum(1)) <= 0)  # most votes first
    assert z.sum() == prune.sum()
    dims = np.asarray(fig.data[0].customdata)[:, 0]  # each row's dimension, for the hover text
    assert np.array_equal(z, prune[:, dims].T)


def test_vote_matrix_thins_rows():
    prune = _prune(d=5000, k=1000)
    fig = plots.vote_matrix(prune, TASKS, max_rows=500)
    assert np.asarray(fig.data[0].z).shape == (500, 3)


def test_vote_histogram_counts_split_by_the_masks_decision():
    prune = _prune()
    votes = vote_counts(prune)
    keep = np.arange(votes.size) % 3 == 0  # any mask: the bars follow its decision, not a rule of their own
    fig = plots.vote_histogram(votes, keep, 3, label="diet τ0.6")
    kept, pruned = (np.asarray(tr.y) for tr in fig.data)
    assert np.array_equal(kept + pruned, np.bincount(votes, minlength=4)) and (kept + pruned).sum() == 50
    assert np.array_equal(kept, np.bincount(votes[keep], minlength=4))
    assert np.array_equal(pruned, np.bincount(votes[~keep], minlength=4))
    assert fig.layout.barmode == "stack" and "diet τ0.6" in fig.layout.title.text


def test_upset_bars_match_overlaps():
    prune = _prune()
    df = upset_overlaps(prune, TASKS)
    fig = plots.upset_bars(df, TASKS, top=5)
    bars = fig.data[0]
    assert list(bars.y) == df["size"].head(5).tolist()
    (dots,) = fig.data[1:]  # one trace for the whole dot matrix; row j is task j
    j = TASKS.index("b")
    rows = np.asarray(dots.y) == j
    member = df["b"].head(5).to_numpy()
    assert [c == "#34495e" for c in np.asarray(dots.marker.color)[rows]] == member.tolist()


def test_stability_histogram_bars_count_the_data():
    """The bar at 1.0 held ~5 where hundreds belonged: the last bin ended at 1.0 and dropped the
    dims kept in every resample. Each bar must hold exactly the dims in its range."""
    rng = np.random.default_rng(0)
    f = np.concatenate([np.zeros(100), np.ones(400), rng.uniform(0, 1, 70), [0.5, 0.025, 0.975]])
    fig = plots.stability_histogram(f, bins=40)
    bar = fig.data[0]
    y = np.asarray(bar.y)
    assert y.sum() == f.size and y[0] == 100 and y[-1] == 400  # never kept, always kept
    left, right, counts = plots.stability_bins(f, bins=40)
    assert np.array_equal(y, counts)
    for lo, hi, n in zip(left[1:-1], right[1:-1], counts[1:-1]):
        inside = (f > 0) & (f < 1) & (f >= lo) & ((f < hi) if hi < 1 else (f <= hi))
        assert n == inside.sum(), (lo, hi)
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis.dtick == 1
    # the colour key is a subtitle: in the title, it ran under plotly's toolbar (a real-browser walk)
    assert len(fig.layout.title.text) <= 40 and "blue: stable" in fig.layout.title.subtitle.text
    assert "orange: kept in some" in fig.layout.title.subtitle.text  # both bar colours are named


def test_run_history():
    assert plots.run_history(pd.DataFrame()).layout.title.text == "No runs yet"
    runs = pd.DataFrame(
        {"run_id": ["r1", "r2", "r3"], "model": ["m", "m", "n"], "sparsity": [0.1, 0.2, 0.1], "delta_avg": [-0.01, -0.05, 0.0]}
    )
    fig = plots.run_history(runs, color="model")
    assert [tr.name for tr in fig.data] == ["m", "n"]
    assert list(fig.data[0].y) == [-0.01, -0.05]


def test_run_history_draws_one_line_per_method_with_ci_bars_on_a_fixed_sparsity_axis():
    runs = pd.DataFrame(
        {
            "run_id": ["r1", "r2", "r3"],
            "method": ["diet", "random", "diet"],
            "sparsity": [0.2, 0.1, 0.1],
            "delta_avg": [-0.05, -0.10, -0.02],
            "ci_low": [-0.08, -0.14, -0.03],
            "ci_high": [-0.01, -0.06, 0.00],
        }
    )
    fig = plots.run_history(runs)
    assert [tr.name for tr in fig.data] == ["diet", "random"] and fig.data[0].mode == "lines+markers"
    assert list(fig.data[0].x) == [0.1, 0.2] and list(fig.data[0].y) == [-0.02, -0.05]  # sorted along the line
    assert list(fig.data[0].error_y.array) == pytest.approx([0.02, 0.04])  # ci_high - delta
    assert list(fig.data[0].error_y.arrayminus) == pytest.approx([0.01, 0.03])  # delta - ci_low
    assert tuple(fig.layout.xaxis.range) == (0.0, 0.9)


def test_run_history_keeps_runs_without_a_model():
    runs = pd.DataFrame({"run_id": ["r1", "r2"], "model": ["m", None], "sparsity": [0.1, 0.2], "delta_avg": [-0.01, -0.05]})
    fig = plots.run_history(runs, color="model")
    assert sorted(tr.name for tr in fig.data) == ["?", "m"] and sum(len(tr.x) for tr in fig.data) == 2


@pytest.mark.parametrize("build", ["task_scores", "layer_profile"])
def test_the_dimension_page_log_axes_label_powers_of_ten_only(build):
    """The Dimension page's log axes read 1, 10, 100, 1000 (they read "1000, 5, 2, 100, 5, 2")."""
    if build == "task_scores":
        fig = plots.dim_task_scores(507, ["a", "b"], [4.0, 1143.0], [4.3, 5.0], [True, True], [True, True])
    else:
        fig = plots.dim_layer_profile(507, {"a": [1.0, 40.0, 1900.0]}, log_y=True)
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis.dtick == 1


def test_run_history_axes_have_plain_titles():
    """The y axis read the raw column name 'delta_avg'."""
    runs = pd.DataFrame({"run_id": ["a"], "sparsity": [0.1], "delta_avg": [-0.02], "method": ["diet"]})
    fig = plots.run_history(runs, x="sparsity", y="delta_avg")
    assert fig.layout.yaxis.title.text == "Δ main metric vs dense (mean over tasks)"
    assert "delta_avg" not in fig.layout.title.text


def _figure_builders():
    import inspect

    from diet_explore.experiments import tune_plots

    return [
        (module.__name__, name, f)
        for module in (plots, tune_plots)
        for name, f in inspect.getmembers(module, inspect.isfunction)
        if f.__module__ == module.__name__
        and inspect.signature(f).return_annotation in ("go.Figure", go.Figure)
        and f is not plots.finish  # takes a figure: the rule itself
    ]


def test_every_figure_builder_leaves_through_finish():
    builders = _figure_builders()
    assert len(builders) >= 14  # the plots module's eleven, the tune's three
    assert [f"{m}.{n}" for m, n, f in builders if not getattr(f, "finished", False)] == []


def test_finish_gives_plain_lists_a_data_revision_and_no_template():
    import json

    import plotly.io as pio

    z = np.arange(6.0).reshape(2, 3)
    when = np.array(["2026-12-08T03:00", "2026-12-09T04:30"], dtype="datetime64[ns]")

    def build(z):
        return go.Figure(
            [
                go.Heatmap(z=z, x=np.arange(3), y=["p", "q"]),
                go.Scatter(x=when, y=np.array([1, 2]), marker=dict(color=np.array([0.5, 1.5]))),
            ],
            layout=dict(title="t", xaxis=dict(showgrid=True), xaxis2=dict(tickvals=np.array([1, 2]))),
        )

    fig = plots.finish(build(z))
    sent = pio.to_json(fig, validate=False)  # what Streamlit sends to the browser
    spec = json.loads(sent)
    assert "bdata" not in sent and spec["layout"].get("template") is None
    assert spec["data"][0]["z"] == z.tolist() and spec["data"][0]["x"] == [0, 1, 2]
    assert spec["data"][1]["x"] == ["2026-12-08 03:00:00", "2026-12-09 04:30:00"]
    assert spec["data"][1]["marker"]["color"] == [0.5, 1.5] and spec["layout"]["xaxis2"]["tickvals"] == [1, 2]
    assert spec["layout"]["title"]["text"] == "t" and spec["layout"]["font"] == plots.FONT
    lay = spec["layout"]
    assert lay["xaxis"]["showgrid"] is True  # what the builder set stays
    assert lay["xaxis2"]["showgrid"] is False and lay["xaxis2"]["zeroline"] is False  # the rest: no vertical lines
    assert all(lay[a]["automargin"] is True for a in ("xaxis", "xaxis2", "yaxis"))
    revision = spec["layout"]["datarevision"]
    assert plots.finish(build(z)).layout.datarevision == revision  # the same data: the same revision
    assert plots.finish(build(z + 1)).layout.datarevision != revision  # new data: redrawn
    assert plots.finish(fig).layout.datarevision == revision  # finishing twice changes nothing


def test_a_built_figure_is_finished():
    fig = plots.vote_histogram(np.array([0, 1, 1, 3]), np.array([True, True, False, False]), 3, "diet")
    sent = fig.to_json()
    assert fig.layout.datarevision and '"template"' not in sent.replace('"template":null', "") and "bdata" not in sent
    assert list(fig.data[0].y) == [1, 1, 0, 0] and list(fig.data[1].y) == [0, 1, 0, 1]


def test_the_dimension_chart_says_what_its_colours_and_marks_mean():
    """A demo audience saw teal, red and grey bars and black lines with nothing naming them."""
    fig = plots.dim_task_scores(507, ["a", "b", "c"], [4.0, 2.0, 3.0], [3.0, 3.0, 3.0], [True, False, True], [True, True, False])
    assert [b for b in fig.data[0].marker.color] == [plots.KEEP_COLOR, plots.PRUNE_COLOR, plots.IDLE_COLOR]
    subtitle = fig.layout.title.subtitle.text
    assert all(word in subtitle for word in ("teal: the task keeps", "red: the task prunes", "grey: not voting", "black line"))
