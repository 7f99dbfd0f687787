"""A sweep runs the mask you tuned: ``CompareConfig`` holds a whole ``MaskConfig``; ``compare`` takes
the same mask flags as ``mask``; each run's mask and label; config.json files written before still load
and still resume (their fingerprint is unchanged)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from diet_explore.cli import build_parser
from diet_explore.cli.compare import compare_config
from diet_explore.experiments.results import mask_for, sweep_mask_config
from diet_explore.experiments.sweep import FINGERPRINT_FIELDS, CompareConfig
from diet_explore.masking.build import MaskConfig, build_mask

DOCS = Path(__file__).resolve().parents[1] / "docs" / "results"
LEGACY = {
    "batch_tokens": 4096,
    "cache": "cache/smollm2-135m",
    "device": "cpu",
    "dtype": None,
    "exact": False,
    "limit": 100,
    "mask_seed": 3,
    "methods": ["diet", "random"],
    "model": "smollm2-135m",
    "multiple_of": 4,
    "perplexity": True,
    "ppl_windows": 32,
    "seed": 1234,
    "sparsities": [0.1, 0.2],
    "tasks": "all",
    "threshold": 0.6,
}


def _legacy_fingerprint(fields: dict, cache_hash: str, dtype: str) -> str:
    """The fingerprint as compare computed it before CompareConfig held a MaskConfig."""
    keys = {k: fields[k] for k in FINGERPRINT_FIELDS} | {"dtype": dtype, "cache_hash": cache_hash}
    if fields.get("clip_limit"):  # counted only when on
        keys["clip_limit"] = True
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


def test_an_old_config_json_loads_into_the_mask_and_keeps_its_fingerprint():
    config = CompareConfig.from_json(json.dumps(LEGACY))
    assert config.mask == MaskConfig(threshold=0.6, exact=False, multiple_of=4, seed=3)
    assert not config.round_to_model and config.multiple_of == 4 and config.mask_seed == 3
    # a sweep started before still resumes: same fingerprint, and no difference in settings
    assert config.fingerprint("h", "float32") == _legacy_fingerprint(LEGACY, "h", "float32")
    assert "threshold" not in config.to_dict() and config.to_dict()["mask"]["threshold"] == 0.6
    assert CompareConfig.from_json(config.to_json()) == config  # and the new shape round-trips
    unset = CompareConfig.from_dict({**LEGACY, "multiple_of": None})  # None: the model's multiple
    assert unset.round_to_model and unset.multiple_of is None and unset.mask.multiple_of == 1


@pytest.mark.parametrize("path", sorted(DOCS.glob("*.config.json")), ids=lambda p: p.name)
def test_the_committed_sweep_configs_load(path):
    raw = json.loads(path.read_text())
    config = CompareConfig.from_json(path.read_text())
    assert config.threshold == raw["threshold"] and config.exact == raw["exact"] and config.multiple_of == raw["multiple_of"]
    assert config.fingerprint("h", "float32") == _legacy_fingerprint(raw, "h", "float32")


def test_new_mask_settings_change_the_fingerprint_and_are_named_on_resume():
    base = CompareConfig()
    weighted = CompareConfig(mask=MaskConfig(exact=True, weights={"boolq": 2.0}))
    assert base.fingerprint("h", "float32") != weighted.fingerprint("h", "float32")
    assert base.settings()["mask_settings"] == {} and weighted.settings()["mask_settings"] == {"weights": {"boolq": 2.0}}


def test_compare_takes_the_mask_flags_of_mask(tmp_path):
    argv = ["compare", "--cache", "c", "--out", str(tmp_path / "o"), "--threshold", "0.6", "--weights", "boolq=2"]
    argv += ["--site", "normed", "--layer-agg", "last_k", "--last-k", "3", "--no-exact", "--multiple-of", "9"]
    config = compare_config(build_parser().parse_args(argv))
    assert config.mask == MaskConfig(
        threshold=0.6, weights={"boolq": 2.0}, site="normed", layer_agg="last_k", last_k=3, exact=False, multiple_of=9
    )
    assert not config.round_to_model and config.multiple_of == 9
    default = compare_config(build_parser().parse_args(["compare", "--cache", "c", "--out", str(tmp_path / "o")]))
    assert default.mask == MaskConfig(exact=True) and default.round_to_model  # the sweep's defaults, as before


def test_the_kept_multiple_is_the_masks_and_the_models_when_rounding_to_the_model():
    assert CompareConfig().kept_multiple(9) == 9  # compare's default: what the model needs to save
    assert CompareConfig(mask=MaskConfig(multiple_of=8)).kept_multiple(4) == 8  # a multiple of both
    assert CompareConfig(mask=MaskConfig(multiple_of=8)).kept_multiple(9) == 72
    assert CompareConfig(mask=MaskConfig(multiple_of=8), round_to_model=False).kept_multiple(9) == 8


def test_each_run_builds_the_tuned_mask_and_is_labelled_by_what_differs(synthetic_cache_dir):
    from diet_explore.profiling.cache import load_cache

    cache = load_cache(synthetic_cache_dir)
    tuned = MaskConfig(sparsity=0.4, threshold=0.6, weights={"boolq": 2.0}, method="random")  # the app's mask
    config = CompareConfig(cache=str(synthetic_cache_dir), mask=tuned, round_to_model=False)
    diet = sweep_mask_config(config, "diet", 0.2, 1)
    assert diet == MaskConfig(sparsity=0.2, threshold=0.6, weights={"boolq": 2.0})  # the sweep sets method and sparsity
    assert diet.label() == "diet τ0.6 boolq×2"
    np.testing.assert_array_equal(mask_for(cache, "diet", 0.2, config, 1).keep, build_mask(cache, diet).keep)
    random = sweep_mask_config(config, "random", 0.2, 1)
    assert random.label() == "random" and random.weights == {} and random.threshold == 0.5  # settings it ignores: defaults
    loo = sweep_mask_config(config, "leave-one-out", 0.2, 1, held_out_task="rte")
    assert loo.label() == "leave-one-out without rte τ0.6 boolq×2"
    assert CompareConfig().mask.label() == "diet exact"  # compare's default: every method keeps the same count


def test_compare_reads_the_old_method_names():
    config = CompareConfig(methods=["diet", "leave_one_out", "single"])
    assert config.methods == ["diet", "leave-one-out", "single-task"]


def test_a_sweep_of_the_tuned_mask_keeps_the_mask_builders_count_and_records_its_label(tmp_path):
    """A sweep started from the app ran the paper default (459 dims at 0.2), whatever τ and weights were tuned."""
    from test_scoring import WordTokenizer

    from diet_explore.experiments.runs import RunStore
    from diet_explore.experiments.sweep import run_compare
    from diet_explore.models.adapters.tiny import tiny_model
    from diet_explore.profiling.cache import save_cache
    from diet_explore.profiling.synthetic import synthetic_cache

    synthetic = synthetic_cache(hidden_size=64, num_layers=2, tasks=("rte", "winogrande", "boolq"), n_samples=8, seed=1)
    cache = save_cache(synthetic, tmp_path / "cache")
    tuned = MaskConfig(sparsity=0.3, threshold=0.6, weights={"rte": 2.0})  # as the Mask builder has it
    config = CompareConfig(
        model="tiny-llama",
        cache=str(cache),
        sparsities=[0.25],
        methods=["diet", "random"],
        tasks="rte",
        limit=2,
        perplexity=False,
        mask=tuned,
        round_to_model=False,
    )
    rows = run_compare(config, tmp_path / "out", tiny_model("llama"), WordTokenizer(), RunStore(tmp_path / "runs"))
    by = {r["key"]: r for r in rows}
    want = build_mask(synthetic, MaskConfig(sparsity=0.25, threshold=0.6, weights={"rte": 2.0}))
    paper = build_mask(synthetic, MaskConfig(sparsity=0.25))
    assert want.n_keep != paper.n_keep  # the tuned vote keeps another count than the paper's
    assert by["diet@0.25"]["n_keep"] == want.n_keep and by["random@0.25"]["n_keep"] == 48
    assert MaskConfig.from_dict(by["diet@0.25"]["mask_config"]).label() == "diet τ0.6 rte×2"


def test_a_masks_own_multiple_under_the_models_changes_the_fingerprint():
    assert CompareConfig().fingerprint("h", "float32") != CompareConfig(mask=MaskConfig(multiple_of=8)).fingerprint(
        "h", "float32"
    )
