"""The run store: atomic JSON per run, a table listing, corrupt files skipped."""

from __future__ import annotations

import json

import numpy as np
import pytest

from diet_explore.core.atomic import check_writable
from diet_explore.core.errors import DietError
from diet_explore.experiments.history import runs_frame
from diet_explore.experiments.runs import RunStore, new_run_id


def test_save_load_and_list(tmp_path):
    store = RunStore(tmp_path / "runs")
    assert runs_frame(store.records()).empty and store.records() == []
    a = store.save(
        {
            "model": "m",
            "method": "diet",
            "sparsity": np.float64(0.2),
            "tasks": ["rte", "boolq"],
            "delta_avg": -0.01,
            "per_task": {"rte": {"acc": 0.5}},
        }
    )
    b = store.save({"model": "m", "method": "random", "sparsity": 0.2, "n_keep": np.int64(459), "kind": "mine", "source": "cli"})
    assert a != b and (tmp_path / "runs" / f"{a}.json").is_file()
    rec = store.load(a)
    assert rec["run_id"] == a and rec["sparsity"] == 0.2 and rec["per_task"] == {"rte": {"acc": 0.5}}
    frame = runs_frame(store.records())
    # newest first, ties (two saves in one second) broken by run id: the same order whatever the clock did
    newest_first = sorted([a, b], key=lambda i: (store.load(i)["created"], i), reverse=True)
    assert list(frame["run_id"]) == newest_first and set(frame["method"]) == {"diet", "random"}
    assert frame.set_index("run_id").loc[a, "tasks"] == "rte,boolq"
    assert frame.set_index("run_id").loc[b, "n_keep"] == 459
    assert store.load(b)["kind"] == "diet-explore-run" and store.load(b)["source"] == "cli"  # the store's keys win
    assert [p.name for p in (tmp_path / "runs").glob(".*")] == []  # no temporary files left, nor the lock's file


def test_corrupt_and_foreign_files_are_skipped_with_a_warning(tmp_path):
    store = RunStore(tmp_path)
    good = store.save({"model": "m"})
    (tmp_path / "20990101T000000-deadbeef.json").write_text('{"kind": "diet-explore-run", "run_')  # cut short
    (tmp_path / "other.json").write_text(json.dumps({"hello": 1}))
    with pytest.warns(UserWarning, match="skipping unreadable run file"):
        frame = runs_frame(store.records())
    assert list(frame["run_id"]) == [good]
    with pytest.raises(DietError, match="corrupt"):
        store.load("20990101T000000-deadbeef")
    with pytest.raises(DietError, match="is not in"):
        store.load("nope")


def test_unserialisable_records_are_refused(tmp_path):
    with pytest.raises(DietError, match="not JSON-serialisable"):
        RunStore(tmp_path).save({"model": object()})
    assert list(tmp_path.iterdir()) == []


def test_saving_under_a_chosen_id_replaces_that_run(tmp_path):
    store = RunStore(tmp_path)
    run_id = new_run_id("random@0.25")
    assert not store.has(run_id)
    assert store.save({"model": "m", "delta_avg": -0.1}, run_id=run_id) == run_id
    store.save({"model": "m", "delta_avg": -0.2}, run_id=run_id)  # a retry: the same run, not a second one
    assert store.has(run_id) and [r["delta_avg"] for r in store.records()] == [-0.2]
    with pytest.raises(DietError, match="is not a run id"):
        store.save({"model": "m"}, run_id="../escape")
    assert not store.has("../escape") and sorted(p.name for p in tmp_path.iterdir()) == [f"{run_id}.json"]


def test_an_unwritable_store_is_a_diet_error_naming_the_folder(tmp_path):
    (tmp_path / "afile").write_text("")
    store = RunStore(tmp_path / "afile" / "runs")
    with pytest.raises(DietError, match=r"cannot write run record .*afile/runs/") as err:
        store.save({"model": "m"})
    assert str(tmp_path / "afile" / "runs") in err.value.hint
    with pytest.raises(DietError, match=r"--runs .*afile/runs cannot be created: .*afile is not a folder"):
        store.check("--runs")
    with pytest.raises(DietError, match=r"--out .*afile is not a folder"):
        check_writable(tmp_path / "afile", "--out", folder=True)
    check_writable(tmp_path / "new" / "deeper", "--out", folder=True)  # not there yet, but creatable: fine
    assert not (tmp_path / "new").exists()  # and checking creates nothing


def test_nan_and_inf_are_stored_as_null_strict_json(tmp_path):
    store = RunStore(tmp_path)
    run_id = store.save(
        {
            "model": "m",
            "pruned_ppl": float("inf"),
            "per_task": {"boolq": {"stderr": float("nan")}},
            "kept": np.array([1, 2]),
            "delta": np.float32(-0.5),
        }
    )

    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    record = json.loads((tmp_path / f"{run_id}.json").read_text(), parse_constant=refuse)  # strict: as JSON.parse
    assert record["pruned_ppl"] is None and record["per_task"]["boolq"]["stderr"] is None
    assert record["kept"] == [1, 2] and record["delta"] == -0.5


def test_records_made_before_target_and_actual_sparsity_were_kept_still_read(tmp_path):
    """Old records stored one ``sparsity`` (the actual one for app runs, the target for compare)
    and their deltas flat; ``run_view`` reads both, the new writer stores neither."""
    from diet_explore.experiments.history import run_view, runs_frame, task_rows

    store = RunStore(tmp_path)
    row = {"task": "rte", "n": 4, "metric": "acc", "dense_main": 0.5, "pruned_main": 0.25, "delta_main": -0.25}
    app = store.save(
        {"source": "app", "method": "diet", "sparsity": 0.2483, "n_keep": 433, "delta_avg": -0.25, "delta_avg_ci": [-0.6, 0.1]}
        | {"mask_config": {"method": "diet", "sparsity": 0.25, "threshold": 0.6}, "task_results": [row]}
    )
    old_compare = {"source": "compare", "method": "random", "sparsity": 0.25, "n_keep": 432, "delta_avg": -0.1}
    compare = store.save(old_compare | {"delta_avg_ci": [-0.2, 0.0], "hidden_size": 576})
    a, c = run_view(store.load(app)), run_view(store.load(compare))
    assert (a["target_sparsity"], a["actual_sparsity"], a["sparsity"]) == (0.25, 0.2483, 0.2483)
    assert (c["target_sparsity"], c["actual_sparsity"]) == (0.25, pytest.approx(1 - 432 / 576))
    assert (a["delta_avg"], a["ci_low"], a["ci_high"]) == (-0.25, -0.6, 0.1) and a["label"] == "diet τ0.6"
    assert task_rows(store.load(app))[0]["delta_main"] == -0.25
    frame = runs_frame(store.records()).set_index("run_id")
    assert frame.loc[compare, "label"] == "random" and frame.loc[app, "threshold"] == 0.6


def test_the_one_writer_refuses_to_store_what_is_derived_on_read():
    from diet_explore.experiments.runs import run_record

    base = dict(source="app", model="m", method="diet", mask_config=None, target_sparsity=0.2, actual_sparsity=0.2)
    base |= dict(n_keep=1, tasks=["rte"], limit=1, eval_config=None, dense_avg=1.0, pruned_avg=1.0, paired=None)
    base |= dict(dense_ppl=None, pruned_ppl=None, wall_time_s=1.0)
    row = {"task": "rte", "n": 1, "metric": "acc", "dense_main": 1.0, "pruned_main": 1.0}
    assert "delta_avg" not in run_record(**base, task_results=[row])
    with pytest.raises(ValueError, match="derived on read"):
        run_record(**base, task_results=[row | {"delta_main": 0.0}])
    with pytest.raises(ValueError, match="derives it on read"):
        run_record(**base, task_results=[row], delta_avg=0.0)
