"""The run store: atomic JSON per run, a table listing, corrupt files skipped."""

from __future__ import annotations

import json

import numpy as np
import pytest

from diet_explore.core.atomic import check_writable
from diet_explore.core.errors import DietError
from diet_explore.experiments.runs import RunStore, new_run_id


def test_save_load_and_list(tmp_path):
    store = RunStore(tmp_path / "runs")
    assert store.list().empty and store.records() == []
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
    frame = store.list()
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
        frame = store.list()
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
