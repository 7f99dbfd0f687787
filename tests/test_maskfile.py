import json

import numpy as np
import pytest

from diet_explore.core.errors import DietError
from diet_explore.masking.build import MaskConfig, build_mask
from diet_explore.masking.maskfile import MASK_SCHEMA_VERSION, load_mask, mask_file_from_result, save_mask
from diet_explore.profiling.synthetic import synthetic_cache


@pytest.fixture(scope="module")
def built():
    cache = synthetic_cache(hidden_size=64, num_layers=3, tasks=("a", "b", "c"), n_samples=5, seed=9)
    result = build_mask(cache, MaskConfig(sparsity=0.25, weights={"b": 2.0}, exact=True, multiple_of=8))
    return cache, result, mask_file_from_result(result, cache)


def test_round_trip_with_npy(tmp_path, built):
    cache, result, mf = built
    path = save_mask(mf, tmp_path / "m.json", npy=True)
    back = load_mask(path, expected_hidden_size=64, expected_model="synthetic-64x3")
    assert back == mf
    np.testing.assert_array_equal(back.keep, result.keep)
    assert back.n_keep == 48 and back.actual_sparsity == 0.25 and back.weights == {"a": 1.0, "b": 2.0, "c": 1.0}
    assert MaskConfig.from_dict(back.config) == result.config
    assert back.cache_manifest_hash == cache.manifest_hash and back.model_id == "synthetic"
    npy = np.load(tmp_path / "m.npy", allow_pickle=False)
    assert npy.dtype == bool and npy.sum() == 48
    np.testing.assert_array_equal(npy, result.keep)
    assert json.loads(path.read_text())["schema_version"] == MASK_SCHEMA_VERSION


def _write(tmp_path, mf, **changes):
    data = json.loads(save_mask(mf, tmp_path / "m.json").read_text())
    data.update(changes)
    (tmp_path / "m.json").write_text(json.dumps(data))
    return tmp_path / "m.json"


@pytest.mark.parametrize(
    "changes, pattern",
    [
        ({"kept_indices": [3, 1, 2]}, "not sorted and unique"),
        ({"kept_indices": [1, 1, 2]}, "not sorted and unique"),
        ({"kept_indices": [0, 64]}, "kept index 64 is outside"),
        ({"kept_indices": [-1, 3]}, "kept index -1 is outside"),
        ({"kept_indices": []}, "empty"),
        ({"kept_indices": [1.5]}, "list of integers"),
        ({"schema_version": 7}, "schema_version 7"),
        ({"schema_version": True}, "schema_version True"),  # bool is no int, though True == 1
        ({"tasks": 5}, "field tasks is 5, not a list of task names"),  # crashed save_pruned (not iterable)
        ({"tasks": [[1]]}, r"field tasks is \[\[1\]\], not a list"),  # crashed model_card (unhashable)
        ({"method": {"a": 1}}, "field method is .*, not a string"),
        ({"model_name": ["x"]}, "field model_name is .*, not a string"),
        ({"model_id": 3}, "field model_id is 3, not a string or null"),
        ({"weights": {"a": "x"}}, "field weights is .*, not an object mapping task names to finite numbers"),
        ({"weights": [1]}, "field weights"),
        ({"config": [1]}, "field config is .*, not an object"),
        ({"sparsity": "half"}, "field sparsity"),
        ({"threshold": float("nan")}, "field threshold is nan, not a finite number"),  # json writes and reads NaN
        ({"kind": "other"}, "not a diet-explore mask"),
    ],
)
def test_invalid_files_are_rejected_naming_the_problem(tmp_path, built, changes, pattern):
    with pytest.raises(DietError, match=pattern):
        load_mask(_write(tmp_path, built[2], **changes))


def test_expected_model_and_hidden_size(tmp_path, built):
    path = save_mask(built[2], tmp_path / "m.json")
    with pytest.raises(DietError, match="hidden size 64 .*hidden size 576"):
        load_mask(path, expected_hidden_size=576)
    with pytest.raises(DietError, match="'synthetic-64x3', not 'smollm2-135m'"):
        load_mask(path, expected_model="smollm2-135m")


def test_missing_and_corrupt_files(tmp_path, built):
    with pytest.raises(DietError, match="does not exist"):
        load_mask(tmp_path / "nope.json")
    path = save_mask(built[2], tmp_path / "m.json")
    path.write_text(path.read_text()[:40])
    with pytest.raises(DietError, match="not valid JSON"):
        load_mask(path)
    data = json.loads(save_mask(built[2], path).read_text())
    del data["hidden_size"]
    path.write_text(json.dumps(data))
    with pytest.raises(DietError, match="lacks field.*hidden_size"):
        load_mask(path)


def test_calibration_ids_come_from_the_cache_and_older_files_load_without_them(tmp_path, built):
    cache, _, mf = built
    assert mf.calibration_ids == {t: list(cache.tasks[t].sample_ids) for t in ("a", "b", "c")}
    data = json.loads(save_mask(mf, tmp_path / "m.json").read_text())
    del data["calibration_ids"]  # a file written before the field existed
    (tmp_path / "old.json").write_text(json.dumps(data))
    assert load_mask(tmp_path / "old.json").calibration_ids is None
    with pytest.raises(DietError, match="calibration_ids must map task names to lists of example ids"):
        load_mask(_write(tmp_path, mf, calibration_ids={"a": ["x"]}))
