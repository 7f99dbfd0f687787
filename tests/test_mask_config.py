"""MaskConfig's own rules: one method vocabulary (old names read), which fields a method reads, the label."""

from __future__ import annotations

import json

import numpy as np
import pytest

from diet_explore.masking.build import MaskConfig, build_mask
from diet_explore.masking.config import METHODS, ignored_settings
from diet_explore.masking.maskfile import load_mask, mask_file_from_result, save_mask


@pytest.mark.parametrize(
    "old, new", [("single", "single-task"), ("leave_one_out", "leave-one-out"), ("mean_score", "mean-score")]
)
def test_an_old_method_name_is_read_as_the_new_one(old, new):
    cfg = MaskConfig.from_json(json.dumps({"method": old, "held_out_task": "rte", "single_task": "rte"}))
    assert cfg.method == new and cfg.to_dict()["method"] == new  # written in today's name


def test_an_old_mask_file_with_an_old_method_name_loads(synthetic_cache_dir, tmp_path):
    from diet_explore.profiling.cache import load_cache

    cache = load_cache(synthetic_cache_dir)
    result = build_mask(cache, MaskConfig(method="leave-one-out", held_out_task="rte"))
    path = save_mask(mask_file_from_result(result, cache), tmp_path / "m.json")
    raw = json.loads(path.read_text())
    raw["config"]["method"] = "leave_one_out"  # as a mask saved before the rename says it
    path.write_text(json.dumps(raw))
    back = MaskConfig.from_dict(load_mask(path).config)
    assert back.method == "leave-one-out"
    np.testing.assert_array_equal(build_mask(cache, back).keep, result.keep)


def test_every_method_has_one_name_in_the_menus():
    assert len(set(METHODS)) == len(METHODS) and all("_" not in m for m in METHODS)


@pytest.mark.parametrize(
    "method, ignored, read",
    [
        ("diet", {"seed", "single_task", "held_out_task", "last_k"}, {"threshold", "weights", "exact", "normalize"}),
        ("union", {"threshold"}, {"weights", "exact"}),
        ("random", {"threshold", "weights", "tasks", "exact", "site", "layer_agg", "normalize"}, {"seed", "multiple_of"}),
        ("wiki", {"threshold", "weights", "tasks", "exact"}, {"site", "layer_agg"}),
        ("single-task", {"weights", "threshold", "exact"}, {"single_task", "site"}),
        ("mean-score", {"threshold", "exact"}, {"normalize", "weights"}),
    ],
)
def test_which_settings_a_method_reads(method, ignored, read):
    got = ignored_settings(method)
    assert ignored <= set(got) and not read & set(got)
    assert all(isinstance(v, str) and v for v in got.values())  # each with its reason


def test_the_label_says_what_differs_from_the_paper_default():
    assert MaskConfig().label() == "diet"
    assert MaskConfig(sparsity=0.4).label() == "diet"  # a run states its sparsity apart
    assert MaskConfig(threshold=0.6, weights={"boolq": 2.0}).label() == "diet τ0.6 boolq×2"
    assert MaskConfig(weights={"boolq": 1.0}).label() == "diet"  # weight 1 is every task's default
    assert MaskConfig(method="random", threshold=0.6, weights={"boolq": 2.0}).label() == "random"  # settings it ignores
    assert MaskConfig(exact=True, multiple_of=9).label() == "diet exact multiple 9"
    assert MaskConfig(method="union", threshold=0.7).label() == "union"
    assert MaskConfig(site="normed", layer_agg="last_k", last_k=3).label() == "diet normed last 3 layers"
