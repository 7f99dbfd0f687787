"""Run comparison (experiments/history.py): the columns that tell runs apart, what differs, and the
paired difference between two runs on the examples they share."""

from __future__ import annotations

import numpy as np
import pytest

from diet_explore.evaluation.decision import format_estimate
from diet_explore.experiments.history import (
    compare_runs,
    differing,
    paired_between,
    paired_frame,
    run_heading,
    runs_frame,
    side_by_side,
)
from diet_explore.experiments.runs import run_record


def _examples(rng, n: int, offset: int = 0, choices: int = 2) -> dict:
    return {
        "doc_id": list(range(offset, offset + n)),
        "gold": [int(g) for g in rng.integers(0, choices, n)],
        "lls": [[float(x) for x in -rng.random(choices) * 10] for _ in range(n)],
        "chars": [[5] * choices for _ in range(n)],
    }


def _record(run_id: str, rng, *, method="diet", sparsity=0.1, offset=0, n=12, examples=True, **extra) -> dict:
    dense, pruned = _examples(rng, n, offset), _examples(rng, n, offset)
    pruned["gold"] = dense["gold"]  # the same examples: the same answers
    row = {
        "task": "rte",
        "n": n,
        "metric": "acc",
        "dense_main": 0.5,
        "pruned_main": 0.4,
    }
    if examples:
        row["examples"] = {"dense": dense, "pruned": pruned}
    record = run_record(
        source="app",
        model="m",
        method=method,
        mask_config=extra.pop("mask_config", None),
        target_sparsity=sparsity,
        actual_sparsity=sparsity,
        n_keep=500,
        tasks=["rte"],
        limit=n,
        eval_config={"limit": n},
        dense_avg=0.5,
        pruned_avg=0.4,
        paired=None,
        dense_ppl=10.0,
        pruned_ppl=20.0,
        wall_time_s=1.0,
        task_results=[row],
        **extra,
    )
    return record | {"run_id": run_id, "created": f"2026-01-0{run_id[-1]}T00:00:00+00:00"}


def test_the_history_says_what_tells_runs_apart():
    rng = np.random.default_rng(0)
    app = _record("r1", rng, mask_config={"threshold": 0.6, "weights": {"rte": 2.0}, "site": "normed"})
    sweep = _record("r2", rng, method="diet-normed", config={"threshold": 0.5}) | {"source": "compare"}
    frame = runs_frame([app, sweep])
    assert list(frame["run_id"]) == ["r2", "r1"]  # newest first
    by_id = frame.set_index("run_id")
    assert by_id.loc["r1", "threshold"] == 0.6 and by_id.loc["r1", "weights"] == "rte=2" and by_id.loc["r1", "site"] == "normed"
    assert by_id.loc["r2", "threshold"] == 0.5 and by_id.loc["r2", "weights"] == "equal" and by_id.loc["r2", "site"] == "normed"
    assert by_id.loc["r1", "limit"] == 12 and by_id.loc["r1", "tasks"] == "rte"
    assert differing(frame) == ["source", "label", "method", "threshold", "weights"]
    assert by_id.loc["r1", "label"] == "diet τ0.6 rte×2 normed" and by_id.loc["r2", "label"] == "diet-normed"


def test_two_runs_are_paired_on_the_examples_they_share_only():
    rng = np.random.default_rng(1)
    a = _record("r1", rng, n=12)
    b = _record("r2", rng, n=12, offset=6)  # doc ids 6..17: 6 shared with a
    b["task_results"][0]["examples"]["pruned"]["gold"][:6] = a["task_results"][0]["examples"]["pruned"]["gold"][6:]
    result = paired_between(a, b)
    assert result["shared"] == {"rte": 6}
    ea, eb = a["task_results"][0]["examples"]["pruned"], b["task_results"][0]["examples"]["pruned"]
    ca = (np.argmax(ea["lls"][6:], axis=1) == np.array(ea["gold"][6:])).astype(float)
    cb = (np.argmax(eb["lls"][:6], axis=1) == np.array(eb["gold"][:6])).astype(float)
    assert result["tasks"]["rte"]["main"]["delta"] == pytest.approx(float(np.mean(cb - ca)))
    assert result["tasks"]["rte"]["main"]["n"] == 6
    table = paired_frame(result)
    main = result["tasks"]["rte"]["main"]
    shown = format_estimate(main["delta"], main["ci_low"], main["ci_high"])
    assert table.loc["rte", "Δ main metric, points [95% CI]"] == shown and table.loc["average", "shared examples"] == 6
    # candidate − reference, whichever order they were picked in
    said = compare_runs(b, a)
    assert said["tasks"]["rte"]["main"]["delta"] == pytest.approx(float(np.mean(cb - ca)))
    assert said["sentences"][0].startswith(run_heading(b)) or run_heading(b) in said["sentences"][0]


def test_runs_without_their_examples_are_not_paired_but_still_shown_side_by_side():
    rng = np.random.default_rng(2)
    a, b = _record("r1", rng), _record("r2", rng, examples=False)
    assert paired_between(a, b) is None
    side = side_by_side([a, b])
    ha, hb = run_heading(a), run_heading(b)
    assert side.loc["rte", (hb, "main metric")] == 0.4 and side.loc["average", (ha, "main metric")] == 0.4
    assert side.loc["rte", (hb, "agreement")] is None or np.isnan(side.loc["rte", (hb, "agreement")])


def test_the_side_by_side_table_prints_every_cell_by_the_one_number_rule():
    """Accuracy and agreement in points with one decimal, Δ gold LL/char in nats with three and a real
    minus sign, "—" where a run has no value: never a raw fraction such as 0.4 or −3.220105266571045."""
    from diet_explore.experiments.history import side_by_side_text

    rng = np.random.default_rng(4)
    a, b = _record("r1", rng), _record("r2", rng, examples=False)
    entry = lambda d: {"delta": d, "ci_low": None, "ci_high": None, "n": 12}
    paired = {"agreement": entry(0.9166666666666666), "gold_ll_per_char": entry(-3.220105266571045)}
    a["paired"] = {"tasks": {"rte": paired}, "average": paired}
    side = side_by_side_text(side_by_side([a, b]))
    ha, hb = run_heading(a), run_heading(b)
    assert side.loc["rte", (ha, "main metric")] == "40.0" and side.loc["average", (hb, "main metric")] == "40.0"
    assert side.loc["rte", (ha, "agreement")] == "91.7" and side.loc["average", (ha, "agreement")] == "91.7"
    assert side.loc["rte", (ha, "Δ gold LL/char")] == "\u22123.220"
    assert side.loc["rte", (hb, "agreement")] == "—" and side.loc["average", (hb, "Δ gold LL/char")] == "—"


def test_a_run_history_line_never_joins_runs_of_other_settings_or_examples():
    from diet_explore.experiments.history import with_lines

    rng = np.random.default_rng(3)
    runs = [
        _record("r1", rng, mask_config={"method": "diet", "threshold": 0.6}),
        _record("r2", rng, sparsity=0.2, mask_config={"method": "diet", "threshold": 0.6}),
        _record("r3", rng, mask_config={"method": "diet"}),
        _record("r4", rng, n=6, mask_config={"method": "diet"}),
    ]
    lines = with_lines(runs_frame(runs)).set_index("run_id")["line"]
    assert lines["r1"] == lines["r2"] == "diet τ0.6 · limit 12"  # one rule, one example set: one line
    assert lines["r3"] == "diet · limit 12" and lines["r4"] == "diet · limit 6"


def test_an_old_records_method_name_is_listed_by_its_canonical_name():
    """Records written before one method vocabulary say ``leave_one_out``/``single``: the listing (the
    History table, its CSV, what differs) shows today's name, so an old and a new run of one method
    do not differ in it."""
    rng = np.random.default_rng(3)
    old = _record("r1", rng, method="leave-one-out") | {"method": "leave_one_out"}  # as an old file holds it
    new = _record("r2", rng, method="leave-one-out")
    single = _record("r3", rng, method="single-task") | {"method": "single"}
    frame = runs_frame([old, new, single]).set_index("run_id")
    assert frame.loc["r1", "method"] == frame.loc["r2", "method"] == "leave-one-out"
    assert frame.loc["r3", "method"] == "single-task"
    assert "method" not in differing(frame.loc[["r1", "r2"]])


def test_a_setting_the_method_does_not_read_is_blank_and_never_differs():
    """'What differs' listed τ 0.5 and equal weights for a random run, which reads neither."""
    rng = np.random.default_rng(5)
    tuned = _record("r1", rng, mask_config={"method": "diet", "threshold": 0.6, "weights": {"rte": 2.0}})
    from diet_explore.masking.build import MaskConfig

    rand = _record("r2", rng, method="random", mask_config=MaskConfig(method="random").to_dict())  # τ 0.5 stored
    frame = runs_frame([tuned, rand]).set_index("run_id")
    assert frame.loc["r1", "threshold"] == 0.6 and frame.loc["r1", "weights"] == "rte=2"
    assert frame.loc["r2", ["threshold", "weights"]].isna().all()  # random has no τ and no task vote
    assert differing(frame) == ["label", "method"]


def test_the_history_shows_the_main_metric_in_points():
    """The run-history chart read −0.1 beside the table's −10.0: one unit (decision.SCALES) for both."""
    from diet_explore.experiments.history import in_points

    rng = np.random.default_rng(6)
    listed = runs_frame([_record("r1", rng), _record("r2", rng)]).assign(delta_avg=[-0.1, None], ci_low=[-0.15, None])
    row, blank = in_points(listed).iloc[0], in_points(listed).iloc[1]
    assert row["delta_points"] == pytest.approx(-10.0) and row["ci_low_points"] == pytest.approx(-15.0)
    assert row["dense_points"] == pytest.approx(50.0) and row["pruned_points"] == pytest.approx(40.0)
    assert np.isnan(blank["delta_points"])  # a run without a Δ stays without one


def test_baseline_runs_of_different_kept_counts_are_listed_apart_and_stay_one_history_line():
    """A Prune & evaluate random baseline (455 kept, matched to its mask) and a sweep's (461 kept) are
    two masks: the listing names them apart, while the history chart keeps one random line."""
    from diet_explore.experiments.history import run_labels, with_lines
    from diet_explore.masking.build import MaskConfig

    rng = np.random.default_rng(6)
    rand = MaskConfig(method="random").to_dict()
    matched = _record("r1", rng, method="random", mask_config=rand) | {"n_keep": 455}
    swept = _record("r2", rng, method="random", mask_config=rand, sparsity=0.2) | {"n_keep": 461}
    again = _record("r3", rng, method="random", mask_config=rand) | {"n_keep": 455}
    diets = [_record(f"r{i}", rng, mask_config={"method": "diet"}) | {"n_keep": n} for i, n in ((4, 455), (5, 461))]
    assert run_labels([matched, swept, again, *diets]) == [
        "random 455 kept",
        "random 461 kept",
        "random 455 kept",
        "diet",
        "diet",
    ]
    assert run_labels([matched, again]) == ["random", "random"]  # one count: nothing to tell apart
    frame = with_lines(runs_frame([matched, swept])).set_index("run_id")
    assert frame.loc["r1", "label"] == "random 455 kept" and frame.loc["r2", "label"] == "random 461 kept"
    assert "label" in differing(frame.reset_index())  # "What differs" says the masks differ
    assert frame.loc["r1", "line"] == frame.loc["r2", "line"] == "random"  # one rule: one line across sparsity
