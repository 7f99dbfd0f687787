"""Sweep reports from result rows (committed or growing) and the Sweeps page that shows them."""

from __future__ import annotations

import json
import math
import re
import shutil

import numpy as np
import pytest
from app_helpers import DOCS_RESULTS, chart_by_key, metrics, run_page

from diet_explore.core.errors import DietError
from diet_explore.evaluation.metrics import PAIRED_METRICS, paired_examples, paired_proportion_delta, task_paired, wilson_interval
from diet_explore.evaluation.scoring import ChoiceScores
from diet_explore.experiments.reports import (
    RESULTS_DIR_ENV,
    curve_figure,
    curve_frame,
    list_sweeps,
    load_sweep,
    markdown_table,
    paper_cells,
    results_frame,
    sweep_name,
    versus_cells,
    versus_table,
)
from diet_explore.experiments.results import NOT_RECORDED, row_paired, task_row
from diet_explore.tasks.registry import builtin_task_names, resolve_tasks

COMMITTED = list_sweeps(DOCS_RESULTS)
TASK_NAMES = set(builtin_task_names())
SPECS = {s.name: s for s in resolve_tasks("rte,hellaswag,winogrande")}


@pytest.fixture(autouse=True)
def _committed_sweeps(monkeypatch):
    """The committed sweeps of this checkout, also when the library runs from a copy (tools/mutants.py)."""
    monkeypatch.setenv(RESULTS_DIR_ENV, str(DOCS_RESULTS))


def _row(key: str, method: str, sparsity: float, scores: dict[str, list[ChoiceScores]], ppl: float | None = 30.0):
    """A results row as ``compare`` writes it (``task_row`` of real ``ChoiceScores``)."""
    from diet_explore.evaluation.metrics import task_result
    from diet_explore.experiments.results import add_average

    tasks = {t: task_row(task_result(SPECS[t], s), s) for t, s in scores.items()}
    row = {"key": key, "method": method, "sparsity": sparsity, "n_keep": int(64 * (1 - sparsity)), "tasks": tasks, "ppl": ppl}
    add_average(row)
    return row


@pytest.fixture(scope="module")
def grown_sweep(tmp_path_factory):
    """A sweep folder with per-example log-likelihoods: dense, diet and random at 0.25, wiki still to run."""
    rng = np.random.default_rng(4)
    dense = {}
    for t in SPECS:
        dense[t] = []
        for i in range(30):
            texts = ["a" * int(rng.integers(1, 20)) for _ in range(4)]
            texts = [texts[0]] * 2 if t == "winogrande" else texts[:2] if t == "rte" else texts
            dense[t].append(
                ChoiceScores(
                    t,
                    i,
                    list(-rng.uniform(1, 30, len(texts))),
                    [False] * len(texts),
                    [2] * len(texts),
                    int(rng.integers(0, len(texts))),
                    texts,
                )
            )

    def noisy(scale):
        return {
            t: [
                ChoiceScores(
                    t, s.doc_id, [x + scale * rng.normal() for x in s.lls], s.is_greedy, s.n_tokens, s.gold, s.choice_texts
                )
                for s in v
            ]
            for t, v in dense.items()
        }

    rows = [
        _row("dense", "dense", 0.0, dense, 20.0),
        _row("diet@0.25", "diet", 0.25, noisy(1.0), 40.0),
        _row("random@0.25", "random", 0.25, noisy(8.0), 900.0),
    ]
    folder = tmp_path_factory.mktemp("sweep") / "grown"
    folder.mkdir()
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {"model": "tiny", "cache": "cache/x", "methods": ["diet", "random", "wiki"], "sparsities": [0.25], "limit": 30}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "verdict.md").write_text("**DIET keeps more of the gold log-likelihood than random here.**\n")
    return folder, rows, dense


# ------------------------------------------------------------------- reports from rows
def test_rows_with_examples_give_every_paired_metric_recomputed_from_them(grown_sweep):
    folder, rows, dense = grown_sweep
    sweep = load_sweep(folder)
    assert sweep.name == "grown" and sweep.verdict.startswith("**DIET") and sweep.methods() == ["diet", "random"]
    got = sweep.vs_dense()["diet@0.25"]
    again = paired_examples(
        {t: v["examples"] for t, v in rows[0]["tasks"].items()}, {t: v["examples"] for t, v in rows[1]["tasks"].items()}, SPECS
    )
    assert got == again
    assert got["average"]["gold_ll_per_char"]["delta"] is not None and got["tasks"]["winogrande"]["acc_norm"]["delta"] is None
    diff = versus_table(sweep).splitlines()[2]
    assert diff.startswith("| 0.25 | diet − random | 48 |")
    ref = row_paired(rows[1], rows[2])["average"]
    assert f"{100 * ref['main']['delta']:+.1f} [{100 * ref['main']['ci_low']:+.1f}, {100 * ref['main']['ci_high']:+.1f}]" in diff
    assert f"{ref['gold_ll_per_char']['delta']:+.3f} [" in diff
    md = markdown_table(sweep)
    assert "agreement [95% CI]" in md and "Δ gold LL/char [95% CI]" in md and md.count("\n| 0.25 |") == 2
    frame = results_frame(sweep)
    avg = frame[(frame["method"] == "diet") & (frame["task"] == "average")].iloc[0]
    assert avg["delta_gold_ll_per_char"] == pytest.approx(got["average"]["gold_ll_per_char"]["delta"])
    assert avg["delta"] == pytest.approx(got["average"]["main"]["delta"]) and avg["ppl"] == 40.0
    curve = curve_frame(sweep, "gold_ll_per_char")
    assert list(curve["method"]) == ["diet", "diet", "random", "random"] and list(curve["sparsity"]) == [0.0, 0.25, 0.0, 0.25]
    assert curve["value"].iloc[0] == 0.0 and math.isnan(curve["ci_low"].iloc[0])  # the dense point has no interval
    assert curve["value"].iloc[1] == pytest.approx(got["average"]["gold_ll_per_char"]["delta"])
    own = curve_frame(sweep, "main")  # the model's own average: Wilson per task, MOVER over tasks (no Wald)
    tasks = list(rows[1]["tasks"].values())
    wilson = [wilson_interval(sum(v["correct"]), len(v["correct"])) for v in tasks]
    share = [np.mean(v["correct"]) for v in tasks]
    low = np.mean(share) - np.sqrt(sum((p - lo) ** 2 for p, (lo, _) in zip(share, wilson))) / len(tasks)
    high = np.mean(share) + np.sqrt(sum((hi - p) ** 2 for p, (_, hi) in zip(share, wilson))) / len(tasks)
    diet = own[(own["method"] == "diet") & (own["sparsity"] == 0.25)].iloc[0]
    assert diet["value"] == pytest.approx(100 * rows[1]["avg"])
    low, high = max(low, np.mean([lo for lo, _ in wilson])), min(high, np.mean([hi for _, hi in wilson]))
    assert (diet["ci_low"], diet["ci_high"]) == pytest.approx((100 * low, 100 * high))
    assert diet["ci_low"] >= 0.0 and diet["ci_high"] <= 100.0
    ppl = curve_frame(sweep, "ppl")
    assert list(ppl["value"]) == [20.0, 40.0, 20.0, 900.0]


def test_diet_minus_a_method_shows_both_kept_counts_when_they_differ(grown_sweep, tmp_path):
    """An app sweep without exact counts: DIET kept 455 and random 461; the table showed random's count
    on DIET's line and the caption said "at the same kept count"."""
    from diet_explore.experiments.reports import Sweep, versus_note, write_reports

    _, rows, _ = grown_sweep
    same = Sweep(list(rows))
    assert versus_cells(same)[1][0][2] == "48" and "at the same kept count" in versus_note(same)
    apart = Sweep([rows[0], dict(rows[1], n_keep=45), rows[2]])
    assert versus_cells(apart)[1][0][2] == "45 vs 48"
    assert "same kept count" not in versus_note(apart) and "differ" in versus_note(apart)
    write_reports(apart.rows, tmp_path)
    md = (tmp_path / "table.md").read_text()
    assert "| diet − random | 45 vs 48 |" in md and "same kept count" not in md.split("DIET minus")[1].split("SliceGPT")[0]


def test_tables_and_legends_name_a_run_by_its_mask_label(grown_sweep):
    """A sweep of a tuned mask: its tables and curve legends said "diet", not "diet τ0.6 boolq×2"."""
    from diet_explore.experiments.reports import Sweep
    from diet_explore.masking.build import MaskConfig

    _, rows, _ = grown_sweep
    tuned = MaskConfig(method="diet", threshold=0.6, weights={"boolq": 2.0})
    sweep = Sweep([rows[0], dict(rows[1], mask_config=tuned.to_dict()), rows[2]])
    assert sweep.labels() == {"dense": "dense", "diet": "diet τ0.6 boolq×2", "random": "random"}
    assert [c[1] for c in paper_cells(sweep)[1]] == ["dense", "diet τ0.6 boolq×2", "random"]
    assert versus_cells(sweep)[1][0][1] == "diet τ0.6 boolq×2 − random"
    assert set(curve_frame(sweep, "main")["method"]) == {"diet τ0.6 boolq×2", "random"}
    names = [t.name for t in curve_figure(sweep, "delta_main").data if t.mode == "lines+markers"]
    assert names == ["diet τ0.6 boolq×2", "random"]


def test_older_rows_without_log_likelihoods_give_the_main_metric_only():
    sweep = load_sweep(DOCS_RESULTS / "compare-smollm2-135m.results.jsonl")
    dense, diet = sweep.dense, next(r for r in sweep.rows if r["key"] == "diet@0.1")
    paired = sweep.vs_dense()["diet@0.1"]
    for t, part in diet["tasks"].items():
        main = paired["tasks"][t]["main"]
        assert (main["delta"], main["ci_low"], main["ci_high"]) == pytest.approx(
            paired_proportion_delta(dense["tasks"][t]["correct"], part["correct"])
        )
        assert paired["tasks"][t]["agreement"]["note"] == NOT_RECORDED
    assert paired["average"]["gold_ll_per_char"]["delta"] is None and not sweep.has_examples()
    assert curve_frame(sweep, "gold_ll_per_char").empty
    assert "agreement" not in markdown_table(sweep)


def test_a_bad_sweep_path_is_one_clear_error(tmp_path):
    with pytest.raises(DietError, match="is not a sweep") as err:
        load_sweep(tmp_path)
    assert "compare --out" in err.value.hint
    (tmp_path / "results.jsonl").write_text('{"cut": \n')
    with pytest.raises(DietError, match="holds no finished result"):
        load_sweep(tmp_path)


def test_task_paired_reads_rows_and_scores_alike(grown_sweep):
    _, rows, dense = grown_sweep
    a = task_paired(rows[0]["tasks"]["rte"]["examples"], rows[1]["tasks"]["rte"]["examples"], SPECS["rte"])
    assert set(a) == {*PAIRED_METRICS, "main"} and a["acc"]["n"] == 30


# ------------------------------------------------------------------- the page
@pytest.mark.parametrize("path", COMMITTED, ids=[sweep_name(p) for p in COMMITTED])
@pytest.mark.slow
def test_the_results_page_renders_the_committed_sweeps(app, path):
    at = run_page(app.run(), "sweep")
    at.selectbox(key="rs_sweep").select(sweep_name(path)).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    sweep = load_sweep(path)
    paper, versus = at.dataframe[0].value, at.dataframe[1].value
    head, cells = paper_cells(sweep)
    assert list(paper.columns) == head and paper.values.tolist() == cells  # the library's cells, as they are
    head, cells = versus_cells(sweep)
    assert list(versus.columns) == head and versus.values.tolist() == cells
    # shown with the summary columns before the seven tasks (at 1400 px they sat off-screen)
    for table in at.dataframe[:2]:
        order, columns = list(table.proto.column_order), list(table.value.columns)
        first_task = next(c for c in order if c.split(" ")[0] in TASK_NAMES)
        assert sorted(order) == sorted(columns) and order[:3] == columns[:3]
        assert all(order.index(c) < order.index(first_task) for c in columns if c.startswith(("avg", "Δ avg", "agreement")))
    m = metrics(at)
    assert m["Model"] == sweep.config["model"] and m["Runs"].startswith(str(len(sweep.pruned)))
    main = chart_by_key(at, "rs_curve_main")
    names = {t.get("name") for t in main["data"] if t.get("mode") == "lines+markers"}
    assert names == {sweep.labels()[m] for m in sweep.methods()}
    assert chart_by_key(at, "rs_curve_ppl")["layout"]["yaxis"]["type"] == "log"
    if sweep.verdict:  # the verdict's own title sits under the page's "Verdict" subheader, not above it in size
        shown = next(m.value for m in at.markdown if m.value.strip().endswith(sweep.verdict.strip()[-40:]))
        assert not re.search(r"^#{1,3}\s", shown, flags=re.M) and shown.count("#") >= sweep.verdict.count("#")
    at.radio(key="rs_main_curve").set_value("the model's own (unpaired CI)").run()
    assert "Average main metric" in chart_by_key(at, "rs_curve_main")["layout"]["title"]["text"]


def test_the_results_page_follows_a_sweep_folder_with_its_verdict(app, grown_sweep, tmp_path):
    folder, rows, _ = grown_sweep
    live = tmp_path / "live"
    shutil.copytree(folder, live)
    at = run_page(app.run(), "sweep")
    at.selectbox(key="rs_sweep").select("Other folder…").run()
    at.text_input(key="rs_sweep_path").input(str(live)).run()
    assert not at.exception and not at.error
    assert any("DIET keeps more" in m.value for m in at.markdown)
    assert any(c.value.startswith("Paired on the same examples at the same kept count") for c in at.caption)
    assert any("2 of 3 runs finished" in i.value for i in at.info)
    assert chart_by_key(at, "rs_curve_gold_ll")
    more = dict(rows[2], key="wiki@0.25", method="wiki")
    with open(live / "results.jsonl", "a") as f:  # the sweep finishes a run: the page shows it on the next rerun
        f.write(json.dumps(more) + "\n")
    at.run()
    assert metrics(at)["Runs"] == "3 / 3" and not at.info
    at.text_input(key="rs_sweep_path").input(str(tmp_path / "nowhere")).run()
    assert not at.exception and at.error and "is not a sweep" in at.error[0].value


def test_the_results_page_opens_on_a_sweep_of_the_model_being_explored(app, monkeypatch):
    """It opened on the first sweep by name (Gemma's) while the SmolLM2 cache was selected."""
    from app_helpers import APP

    monkeypatch.setenv("DIET_EXPLORE_CACHE_DIR", str(APP.parents[1] / "cache"))
    monkeypatch.setenv("DIET_EXPLORE_DEFAULT_CACHE", "smollm2-135m")
    at = run_page(app.run(), "sweep")
    assert not at.exception
    assert metrics(at)["Model"] == "smollm2-135m"
    assert "smollm2-135m" in at.selectbox(key="rs_sweep").value


def test_sweep_curves_draw_each_methods_intervals_beside_the_others():
    """Eight methods' error bars at one sparsity were one vertical smear (with shaded bands between
    sparsities on top): now each method is a few pixels to the side, its hover the exact sparsity."""
    sweep = load_sweep(DOCS_RESULTS / "compare-smollm2-135m-400.results.jsonl")
    frame = curve_frame(sweep, "delta_main")
    fig = curve_figure(sweep, "delta_main")
    assert all(tr.fill in (None, "none") for tr in fig.data) and len(fig.data) == frame["method"].nunique()
    xs = {}
    for tr in fig.data:
        g = frame[frame["method"] == tr.name].sort_values("sparsity")
        assert np.allclose(np.asarray(tr.customdata, dtype=float), g["sparsity"]) and "%{customdata}" in tr.hovertemplate
        assert np.allclose(np.asarray(tr.x, dtype=float) - g["sparsity"].to_numpy(), tr.x[0] - g["sparsity"].iloc[0])
        assert np.allclose(np.asarray(tr.y, dtype=float), g["value"])
        assert np.allclose(np.asarray(tr.error_y.array, dtype=float), (g["ci_high"] - g["value"]).fillna(0))
        assert np.allclose(np.asarray(tr.error_y.arrayminus, dtype=float), (g["value"] - g["ci_low"]).fillna(0))
        xs[tr.name] = float(tr.x[-1])
    spread = sorted(xs.values())
    assert len(set(spread)) == len(spread)  # no two methods at the same x
    assert spread[-1] - spread[0] < 0.1 * float(frame["sparsity"].max() - frame["sparsity"].min())  # yet beside it


@pytest.mark.parametrize("path", COMMITTED, ids=[sweep_name(p) for p in COMMITTED])
@pytest.mark.slow
def test_a_method_keeps_its_colour_in_every_curve_even_where_another_method_has_no_points(path):
    """leave-one-out has no perplexity: slicegpt took its colour in the perplexity figure."""
    sweep = load_sweep(path)
    seen: dict[str, set[str]] = {}
    for curve in ("delta_main", "gold_ll_per_char", "ppl"):
        for trace in curve_figure(sweep, curve).data:
            if trace.mode == "lines+markers":
                seen.setdefault(trace.name, set()).add(trace.line.color)
    assert seen and all(len(colours) == 1 for colours in seen.values()), seen
    assert len({next(iter(c)) for c in seen.values()}) == len(seen)  # and two methods never share one
