"""Pruning that fits: a checkpoint pruned tensor by tensor (never loaded) gives the folder, the
tensors and the logits that slicing the loaded model gives; in-place slicing; the real-peak pre-check."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from diet_explore.core.errors import DietError
from diet_explore.masking.maskfile import MaskFile
from diet_explore.models.adapters.tiny import save_tiny_folder, tiny_model
from diet_explore.models.loading import load_config, model_source
from diet_explore.pruning import streaming
from diet_explore.pruning.saving import save_pruned
from diet_explore.pruning.slicing import hidden_dim_rules, prune_model

IDS = torch.tensor([[1, 5, 9, 17, 33, 65, 100, 127, 3, 4]])


def keep_mask(d: int = 64, n: int = 48, seed: int = 1) -> np.ndarray:
    keep = np.zeros(d, dtype=bool)
    keep[np.random.default_rng(seed).choice(d, n, replace=False)] = True
    return keep


def mask_file(keep: np.ndarray) -> MaskFile:
    return MaskFile(
        model_name="tiny",
        model_id="tiny",
        hidden_size=len(keep),
        method="diet",
        sparsity=0.25,
        actual_sparsity=1 - keep.sum() / len(keep),
        threshold=0.5,
        weights={"rte": 1.0},
        tasks=["rte"],
        site="residual",
        layer_agg="mean",
        cache_manifest_hash=None,
        package_version="test",
        created="2026-12-07",
        kept_indices=[int(i) for i in np.flatnonzero(keep)],
    )


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits.float()


def tensors(folder) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def source_folder(tmp_path, family: str, tie: bool, dtype: torch.dtype, shard: str | None = None):
    folder = tmp_path / f"src-{family}-{tie}"
    save_tiny_folder(folder, family)  # tokenizer + a tied model; replaced below by the variant asked for
    for f in folder.glob("*.safetensors"):
        f.unlink()
    tiny_model(family, tie=tie).to(dtype).save_pretrained(folder, **({"max_shard_size": shard} if shard else {}))
    return folder


@pytest.mark.parametrize(
    "family,tie,dtype",
    [
        ("llama", True, torch.float32),
        ("llama", False, torch.bfloat16),
        ("gemma2", True, torch.bfloat16),
        ("gemma2", False, torch.float32),
    ],
)
def test_streamed_folder_holds_exactly_what_slicing_the_loaded_model_saves(family, tie, dtype, tmp_path, monkeypatch):
    monkeypatch.setattr(streaming, "BLOCK_BYTES", 1000)  # many row blocks per tensor, as the 256k embedding has
    src = source_folder(tmp_path, family, tie, dtype)
    keep = keep_mask()
    dense = AutoModelForCausalLM.from_pretrained(src, dtype=dtype)  # today's way: load, slice a copy, save
    expected = prune_model(dense, keep)
    old = save_pruned(expected, None, tmp_path / "old", source_model="tiny")
    result = streaming.prune_to_folder(model_source(str(src)), mask_file(keep), tmp_path / "new")
    assert result.streamed and result.why_loaded is None
    a, b = tensors(old), tensors(tmp_path / "new")
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype == dtype and torch.equal(a[k], b[k]), k
    for name in ("config.json", "generation_config.json"):
        assert json.loads((old / name).read_text()) == json.loads((tmp_path / "new" / name).read_text()), name
    summary = json.loads((tmp_path / "new" / "diet_explore_pruned.json").read_text())
    assert summary["parameters_after"] == expected.diet_prune_info["parameters_after"]
    assert summary["parameters_before"] == expected.diet_prune_info["parameters_before"]
    assert summary["n_kept"] == 48 and summary["dtype"] == str(dtype).removeprefix("torch.")
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "new")
    assert next(back.parameters()).dtype == dtype
    assert torch.equal(logits(back), logits(expected))  # identical, not close


def test_a_sharded_checkpoint_is_streamed_shard_by_shard_with_its_index(tmp_path):
    src = source_folder(tmp_path, "llama", False, torch.float32, shard="40KB")
    assert (src / streaming.INDEX_FILE).is_file() and len(list(src.glob("*.safetensors"))) > 2
    keep = keep_mask()
    result = streaming.prune_to_folder(model_source(str(src)), mask_file(keep), tmp_path / "new")
    assert result.streamed
    index = json.loads((tmp_path / "new" / streaming.INDEX_FILE).read_text())
    assert set(index["weight_map"].values()) == {f.name for f in (tmp_path / "new").glob("*.safetensors")}
    assert index["metadata"]["total_size"] == sum(t.numel() * 4 for t in tensors(tmp_path / "new").values())
    expected = prune_model(AutoModelForCausalLM.from_pretrained(src), keep)
    assert torch.equal(logits(AutoModelForCausalLM.from_pretrained(tmp_path / "new")), logits(expected))


def test_the_prune_command_never_loads_a_safetensors_model(tmp_path, monkeypatch, capsys):
    from diet_explore import cli
    from diet_explore.masking.maskfile import save_mask

    src = save_tiny_folder(tmp_path / "tiny-llama")

    def no_load(*a, **k):
        raise AssertionError("the dense model was loaded")

    monkeypatch.setattr("diet_explore.models.loading.load_model", no_load)
    save_mask(mask_file(keep_mask()), tmp_path / "m.json")
    assert cli.main(["prune", "--model", str(src), "--mask", str(tmp_path / "m.json"), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr()
    assert "hidden size 64 -> 48" in out.out and "note: loaded" not in out.err
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "out").config.hidden_size == 48


def test_a_checkpoint_that_cannot_be_streamed_is_loaded_and_sliced_in_place_with_the_same_result(tmp_path):
    """An unknown tensor name (here an extra tensor) is not streamed: the model is loaded instead,
    sliced in place (the returned model is the loaded one), and the folder is the same."""
    from safetensors.torch import save_file

    src = source_folder(tmp_path, "gemma2", True, torch.float32)
    weights = load_file(src / "model.safetensors")
    save_file(weights | {"model.extra_thing": torch.zeros(3)}, src / "model.safetensors", metadata={"format": "pt"})
    keep = keep_mask()
    with pytest.warns(UserWarning, match="ignoring 1 tensor"):
        result = streaming.prune_to_folder(model_source(str(src)), mask_file(keep), tmp_path / "new")
    assert not result.streamed and "model.extra_thing" in result.why_loaded
    expected = prune_model(AutoModelForCausalLM.from_pretrained(src), keep)
    assert torch.equal(logits(AutoModelForCausalLM.from_pretrained(tmp_path / "new")), logits(expected))


def test_in_place_slicing_returns_the_model_itself_with_the_copys_logits():
    keep = keep_mask()
    model = tiny_model("gemma2", tie=True)
    expected = logits(prune_model(model, keep))
    sliced = prune_model(model, keep, inplace=True)
    assert sliced is model and model.config.hidden_size == 48
    assert torch.equal(logits(sliced), expected)


@pytest.mark.parametrize("family,tie", [("llama", False), ("gemma2", True), ("qwen2", False)])
def test_hidden_dim_rules_name_exactly_the_tensors_prune_model_slices(family, tie):
    model = tiny_model(family, tie=tie)
    pruned = prune_model(model, keep_mask())
    rules = hidden_dim_rules(model)
    after = dict(pruned.named_parameters(remove_duplicate=False))
    for name, p in model.named_parameters(remove_duplicate=False):
        changed = [i for i, (a, b) in enumerate(zip(p.shape, after[name].shape)) if a != b]
        assert changed == ([rules[name].dim] if name in rules else []), name


def test_the_pre_check_counts_the_peak_not_just_the_weights(monkeypatch):
    from types import SimpleNamespace

    from diet_explore.models import loading

    monkeypatch.setattr("psutil.virtual_memory", lambda: SimpleNamespace(available=10 * 2**30))
    loading.check_fits_in_memory(2 * 2**30, 4, "cpu", "m")  # 8 GiB of weights in 10 GiB: fits
    with pytest.raises(DietError, match=r"m needs about 16.0 GiB to prune a copy, but only 10.0 GiB is free of RAM"):
        loading.check_fits_in_memory(2 * 2**30, 4, "cpu", "m", copies=2.0, what="to prune a copy")


def test_streaming_refuses_pickle_checkpoints_and_foreign_names_with_a_reason(tmp_path):
    src = source_folder(tmp_path, "llama", True, torch.float32)
    config = load_config(str(src))
    plan = streaming.plan_stream(src, config, keep_mask(), torch.float32)
    assert plan.info["hidden_size_after"] == 48 and plan.config.hidden_size == 48
    (src / "model.safetensors").rename(src / "pytorch_model.bin")
    with pytest.raises(streaming.NotStreamable, match="pickle"):
        streaming.plan_stream(src, config, keep_mask(), torch.float32)


def test_a_tied_head_saved_beside_its_embedding_is_loaded_not_streamed(tmp_path):
    """Which of the two tensors from_pretrained keeps is its business (they may differ), so the
    folder must be what loading gives: the same logits as slicing the loaded model."""
    from safetensors.torch import save_file

    src = source_folder(tmp_path, "gemma2", True, torch.float32)
    weights = load_file(src / "model.safetensors")
    head = torch.randn_like(weights["model.embed_tokens.weight"])
    save_file(weights | {"lm_head.weight": head}, src / "model.safetensors", metadata={"format": "pt"})
    keep = keep_mask()
    result = streaming.prune_to_folder(model_source(str(src)), mask_file(keep), tmp_path / "new")
    assert not result.streamed and "lm_head.weight" in result.why_loaded
    expected = prune_model(AutoModelForCausalLM.from_pretrained(src), keep)
    assert torch.equal(logits(AutoModelForCausalLM.from_pretrained(tmp_path / "new")), logits(expected))


@pytest.mark.slow
@pytest.mark.parametrize("fit", [False, True])
def test_a_prune_and_evaluate_job_holds_one_pruned_model_at_a_time_unless_all_fit(tmp_path, tiny_cache_root, monkeypatch, fit):
    """With comparison masks, each pruned model is built, scored and freed before the next is built,
    unless every copy fits in memory: then they are built together and scored with blocks interleaved."""
    import gc
    import weakref

    from job_helpers import prune_eval_config, stop_workers

    from diet_explore.experiments import tuning
    from diet_explore.experiments.jobs import JobStore, run_worker
    from diet_explore.masking.build import MaskConfig

    live: weakref.WeakSet = weakref.WeakSet()
    alive_at_build: list[int] = []

    def tracked(model, keep, **kw):
        gc.collect()
        alive_at_build.append(len(live))
        pruned = prune_model(model, keep, **kw)
        live.add(pruned)
        return pruned

    monkeypatch.setattr(tuning, "prune_model", tracked)
    monkeypatch.setattr(tuning, "pruned_copies_fit", lambda model, copies: fit)
    store = JobStore(tmp_path / "runs")
    try:
        config = prune_eval_config(tiny_cache_root, limit=3, tasks=("rte",))
        other = MaskConfig(method="random", sparsity=1 - config["n_keep"] / 64)
        magnitude = MaskConfig(method="magnitude", sparsity=1 - config["n_keep"] / 64)
        config["others"] = {
            "random": {"mask": other.to_dict(), "n_keep": config["n_keep"]},
            "magnitude": {"mask": magnitude.to_dict(), "n_keep": config["n_keep"]},
        }
        job_id, _ = store.submit("prune_eval", config, "diet vs random vs magnitude")
        assert run_worker(store, until_empty=True) == 1
        job = store.get(job_id)
        assert job["status"] == "done", job.get("error")
        assert set(job["result"]["others"]) == {"random", "magnitude"}
    finally:
        stop_workers(store)
    assert alive_at_build == ([0, 1, 2] if fit else [0, 0, 0])


def test_a_sweep_pre_checks_memory_for_the_dense_model_and_one_pruned_copy(tmp_path, monkeypatch):
    from diet_explore.experiments.runs import RunStore
    from diet_explore.experiments.sweep import CompareConfig, run_compare
    from diet_explore.profiling.cache import save_cache
    from diet_explore.profiling.synthetic import synthetic_cache
    from diet_explore.pruning.slicing import PRUNED_COPY_PEAK

    cache = save_cache(synthetic_cache(hidden_size=64, num_layers=2, tasks=("rte",), n_samples=8, seed=1), tmp_path / "c")
    config = CompareConfig(
        model="tiny", cache=str(cache), sparsities=[0.25], methods=["random"], tasks="rte", limit=3, perplexity=False
    )
    seen = {}

    class Loaded(Exception):
        pass

    def fake_load(name, device, dtype, copies=1.0):
        seen["copies"] = copies
        raise Loaded

    monkeypatch.setattr("diet_explore.models.loading.load_model", fake_load)
    with pytest.raises(Loaded):
        run_compare(config, tmp_path / "out", store=RunStore(tmp_path / "runs"))
    assert seen["copies"] == PRUNED_COPY_PEAK == 2.0


def test_prune_dtype_flag_converts_each_tensor_and_the_card_names_the_dtype_as_lm_eval_does(tmp_path, capsys):
    from diet_explore import cli
    from diet_explore.masking.maskfile import save_mask

    src = save_tiny_folder(tmp_path / "tiny-llama")  # fp32
    save_mask(mask_file(keep_mask()), tmp_path / "m.json")
    args = ["prune", "--model", str(src), "--mask", str(tmp_path / "m.json"), "--out", str(tmp_path / "out"), "--dtype", "bf16"]
    assert cli.main(args) == 0
    capsys.readouterr()
    summary = json.loads((tmp_path / "out" / "diet_explore_pruned.json").read_text())
    assert summary["dtype"] == "bfloat16" and "dtype=bfloat16" in (tmp_path / "out" / "README.md").read_text()
    expected = prune_model(AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16), keep_mask())
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert next(back.parameters()).dtype == torch.bfloat16
    assert torch.equal(logits(back), logits(expected))
