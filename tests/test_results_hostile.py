"""Damaged results rows and run records: a wrong-typed or impossible field drops that row (or run)
with a warning naming the file, the line (or run file) and the field, never a traceback, in the
reports, the sweep's resume, the Sweeps page and the History page."""

from __future__ import annotations

import json
import math
import shutil
import warnings

import pytest
from app_helpers import DOCS_RESULTS, run_page

from diet_explore.core.errors import DietError
from diet_explore.experiments.history import runs_frame
from diet_explore.experiments.reports import (
    curve_frame,
    load_sweep,
    markdown_table,
    paper_cells,
    results_frame,
    versus_cells,
)
from diet_explore.experiments.results import RESULTS, read_results, read_results_file, repair_results
from diet_explore.experiments.runs import RunStore, run_record

SOURCE = DOCS_RESULTS / "compare-gemma3-270m.results.jsonl"  # small: 9 rows, main metric only


def _rows() -> list[dict]:
    return [json.loads(line) for line in SOURCE.read_text().splitlines()]


def _sweep_folder(tmp_path, rows) -> object:
    out = tmp_path / "sweep"
    out.mkdir()
    (out / RESULTS).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def _set(i: int, field: str, value):
    return lambda rows: rows[i].__setitem__(field, value)


DAMAGE = {  # what the hostile run did -> (damage, the line it hit, the field the warning names)
    "avg a string": (_set(1, "avg", "x"), 2, "'avg'"),
    "a task not an object": (_set(1, "tasks", {"rte": "bad"}), 2, "'tasks.rte'"),
    "method a list": (_set(0, "method", ["dense"]), 1, "'method'"),
    "n_keep negative": (_set(1, "n_keep", -1), 2, "'n_keep'"),
    "sparsity NaN": (_set(1, "sparsity", math.nan), 2, "'sparsity'"),
    "main a string": (lambda rows: rows[2]["tasks"]["rte"].__setitem__("main", "0.5"), 3, "'tasks.rte.main'"),
    "correct too short": (lambda rows: rows[2]["tasks"]["rte"].__setitem__("correct", [1]), 3, "'tasks.rte.correct'"),
    "key missing": (lambda rows: rows[3].pop("key"), 4, "'key'"),
    "rotation a number": (_set(1, "rotation", 5), 2, "'rotation'"),
    "a task more": (lambda rows: rows[1]["tasks"].__setitem__("zzz", rows[1]["tasks"]["rte"]), 2, "it has zzz"),
    "a task less": (lambda rows: rows[1]["tasks"].pop("rte"), 2, "it lacks rte"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_damaged_row_is_dropped_with_a_warning_and_the_reports_still_work(tmp_path, case):
    damage, line, field = DAMAGE[case]
    rows = _rows()
    damage(rows)
    out = _sweep_folder(tmp_path, rows)
    sweep = load_sweep(out)
    assert len(sweep.rows) == len(rows) - 1
    (problem,) = sweep.problems
    assert f"line {line} of {out / RESULTS}" in problem and field in problem
    # everything the CLI and the Results page draw from the rows
    paper_cells(sweep), markdown_table(sweep), results_frame(sweep), versus_cells(sweep)
    for curve in ("main", "delta_main", "ppl"):
        curve_frame(sweep, curve)
    # the plain reader (the sweep's resume, the CLI) warns the same line
    with pytest.warns(UserWarning, match=rf"line {line} of .*{RESULTS}.*{field}"):
        assert len(read_results(out)) == len(rows) - 1


def test_the_committed_sweeps_have_no_damaged_row():
    for path in sorted(DOCS_RESULTS.glob("*.results.jsonl")):
        problems: list[str] = []
        rows = read_results_file(path, problems)
        assert problems == [] and len(rows) == len(path.read_text().splitlines())


def test_a_resume_drops_the_damaged_row_so_compare_runs_it_again(tmp_path):
    rows = _rows()
    rows[1]["avg"] = "x"
    out = _sweep_folder(tmp_path, rows)
    with pytest.warns(UserWarning, match="line 2"):
        done = read_results(out)  # what run_compare reads first: the damaged run is not done
    assert rows[1]["key"] not in {r["key"] for r in done}
    assert repair_results(out) == 1  # and the file is rewritten without it, so the run is redone
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [r["key"] for r in read_results(out)] == [r["key"] for r in done]


def test_a_results_file_of_damaged_rows_only_is_a_diet_error(tmp_path):
    rows = _rows()[:1]
    rows[0]["n_keep"] = "576"
    with pytest.raises(DietError, match="holds no finished result.*'n_keep'"):
        load_sweep(_sweep_folder(tmp_path, rows))


def test_the_results_page_shows_a_damaged_sweep_and_says_what_was_left_out(app, tmp_path):
    rows = _rows()
    rows[1]["avg"] = "x"
    rows[0]["method"] = ["dense"]
    out = _sweep_folder(tmp_path, rows)
    at = run_page(app.run(), "sweep")
    at.selectbox(key="rs_sweep").select("Other folder…").run()
    at.text_input(key="rs_sweep_path").input(str(out)).run()
    assert not at.exception, [e.value for e in at.exception]
    shown = [w.value for w in at.warning]
    assert any("line 1" in w and "'method'" in w for w in shown), shown
    assert any("line 2" in w and "'avg'" in w for w in shown), shown
    assert at.dataframe[0].value.shape[0] == len(rows) - 2  # the paper table: the other rows


# --------------------------------------------------------------------------------------------
# Run store records
# --------------------------------------------------------------------------------------------
def _record(method: str, sparsity: float) -> dict:
    return run_record(
        source="compare",
        model="m",
        method=method,
        mask_config=None,
        target_sparsity=sparsity,
        actual_sparsity=sparsity,
        n_keep=500,
        tasks=["rte"],
        limit=2,
        eval_config=None,
        dense_avg=1.0,
        pruned_avg=0.5,
        paired=None,
        dense_ppl=None,
        pruned_ppl=None,
        wall_time_s=2.0,
        task_results=[
            {
                "task": "rte",
                "n": 2,
                "metric": "acc",
                "dense_main": 1.0,
                "pruned_main": 0.5,
            }
        ],
    )


RECORD_DAMAGE = {
    "created": 5,
    "delta_avg_ci": 7,
    "sparsity": "0.1",
    "target_sparsity": "0.1",
    "tasks": "rte",
    "method": ["random"],
    "paired": [1],
    "task_results": [{"task": "rte", "n": "2"}],
    "mask_config": {"weights": {"rte": "x"}},
}


def _damaged_store(tmp_path, field: str):
    store = RunStore(tmp_path / "runs")
    good = store.save(_record("random", 0.1))
    bad = store.save(_record("diet", 0.2))
    path = store.root / f"{bad}.json"
    record = json.loads(path.read_text())
    record[field] = RECORD_DAMAGE[field]
    path.write_text(json.dumps(record))
    return store, good, bad


@pytest.mark.parametrize("field", list(RECORD_DAMAGE))
def test_a_wrong_typed_run_record_is_skipped_with_a_warning_naming_it(tmp_path, field):
    store, good, bad = _damaged_store(tmp_path, field)
    with pytest.warns(UserWarning, match=rf"skipping run file .*{bad}\.json: .*'{field}"):
        records = store.records()
    assert [r["run_id"] for r in records] == [good]
    assert list(runs_frame(records)["run_id"]) == [good]
    with pytest.raises(DietError, match=rf"{bad}\.json is corrupt .*'{field}"):
        store.load(bad)


def test_an_empty_history_names_the_run_store_and_how_to_fill_it(app, app_env):
    shutil.rmtree(app_env["runs"], ignore_errors=True)
    at = run_page(app.run(), "history")
    said = [c.value for c in at.caption if c.value.startswith("No runs yet")]
    assert said and "run store (`" in said[0] and "Prune & evaluate" in said[0] and not at.dataframe, said


@pytest.mark.parametrize("field", ["created", "delta_avg_ci"])
def test_the_history_page_skips_a_wrong_typed_record_and_says_so(app, app_env, field):
    shutil.rmtree(app_env["runs"], ignore_errors=True)
    _store, good, bad = _damaged_store(app_env["runs"].parent, field)
    at = run_page(app.run(), "history")
    shown = [w.value for w in at.warning]
    assert any(bad in w and f"'{field}'" in w for w in shown), shown
    assert list(at.dataframe[0].value["Run"]) == [good.rsplit("-", 1)[1]]
