"""compare --save: every pruned model of the sweep kept as a folder, with the sweep's own masks;
and a pruned Llama / Gemma-2 folder is a stock config that vLLM reads (checked without vLLM)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from diet_explore.experiments.saved_models import save_sweep_models
from diet_explore.experiments.sweep import CompareConfig
from diet_explore.masking.build import MaskConfig, build_mask
from diet_explore.models.adapters.tiny import save_tiny_folder, tiny_model
from diet_explore.profiling.cache import load_cache, save_cache
from diet_explore.profiling.synthetic import synthetic_cache
from diet_explore.pruning.saving import save_pruned
from diet_explore.pruning.slicing import prune_model

IDS = torch.tensor([[1, 5, 9, 17, 33, 65, 100, 127]])


def test_save_keeps_one_folder_per_run_with_the_sweeps_mask_and_resumes(tmp_path):
    model_dir = save_tiny_folder(tmp_path / "tiny-llama")
    cache = save_cache(
        synthetic_cache(hidden_size=64, num_layers=2, tasks=("rte", "winogrande"), n_samples=8, seed=1), tmp_path / "cache"
    )
    config = CompareConfig(
        model=str(model_dir),
        cache=str(cache),
        sparsities=[0.25],
        methods=["diet", "random", "single-task"],
        tasks="rte,winogrande",
        limit=3,
        perplexity=False,
    )
    logs: list[str] = []
    folders = save_sweep_models(config, tmp_path / "saved", log=logs.append)
    names = sorted(f.name for f in folders)
    assert names == ["diet-0.25", "random-0.25", "single-task-0.25-rte", "single-task-0.25-winogrande"]
    # the random run's mask is the one the sweep prunes with (test_compare: same MaskConfig, multiple of the 4 heads)
    expected = build_mask(load_cache(str(cache)), MaskConfig(sparsity=0.25, method="random", exact=True, multiple_of=4))
    saved = json.loads((tmp_path / "saved" / "random-0.25" / "diet_mask.json").read_text())
    assert saved["kept_indices"] == [int(i) for i in np.flatnonzero(expected.keep)]
    dense = AutoModelForCausalLM.from_pretrained(model_dir)
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "saved" / "random-0.25")
    with torch.no_grad():
        assert torch.equal(back(IDS).logits, prune_model(dense, expected.keep)(IDS).logits)
    logs.clear()
    save_sweep_models(config, tmp_path / "saved", log=logs.append)  # a re-run keeps what is there
    assert len(logs) == 4 and all("already saved with this mask" in line for line in logs)


def test_compare_refuses_a_save_folder_it_could_not_write_before_the_sweep(tmp_path, capsys, monkeypatch):
    from diet_explore import cli

    blocker = tmp_path / "file"
    blocker.write_text("x")

    def no_sweep(*a, **k):
        raise AssertionError("the sweep ran")

    monkeypatch.setattr("diet_explore.experiments.sweep.run_compare", no_sweep)
    args = ["compare", "--cache", str(tmp_path), "--out", str(tmp_path / "out"), "--save", str(blocker / "sub")]
    assert cli.main(args) == 2
    assert "--save" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# vLLM loads a Llama or Gemma-2 folder through its config: these are the fields it reads to size
# every layer (vllm/model_executor/models/llama.py, gemma2.py; vllm/config ModelConfig)
VLLM_FIELDS = (
    "architectures",
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "rms_norm_eps",
    "max_position_embeddings",
    "tie_word_embeddings",
)


@pytest.mark.parametrize("family,tie", [("llama", True), ("llama", False), ("gemma2", True)])
def test_a_pruned_folder_is_a_stock_config_whose_fields_match_the_weight_shapes(family, tie, tmp_path):
    from safetensors import safe_open

    keep = np.zeros(64, dtype=bool)
    keep[np.random.default_rng(0).choice(64, 48, replace=False)] = True
    folder = save_pruned(prune_model(tiny_model(family, tie=tie).to(torch.bfloat16), keep), None, tmp_path / "p")
    raw = json.loads((folder / "config.json").read_text())
    assert not [k for k in raw if k.startswith("diet")], "no custom keys in config.json"
    cfg = AutoConfig.from_pretrained(folder, trust_remote_code=False)  # a stock class reads it
    assert type(cfg).__name__ == {"llama": "LlamaConfig", "gemma2": "Gemma2Config"}[family]
    for field in VLLM_FIELDS:
        assert field in raw, field
    assert raw["architectures"] == [{"llama": "LlamaForCausalLM", "gemma2": "Gemma2ForCausalLM"}[family]]
    assert raw["dtype"] == "bfloat16" and raw["tie_word_embeddings"] is tie
    d, hd, h, kv, i = (
        raw["hidden_size"],
        raw["head_dim"],
        raw["num_attention_heads"],
        raw["num_key_value_heads"],
        raw["intermediate_size"],
    )
    assert d == 48 and hd * h != d  # head_dim must be explicit: vLLM would derive hidden_size / heads otherwise
    with safe_open(folder / "model.safetensors", "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    layer = "model.layers.0."
    assert shapes["model.embed_tokens.weight"] == (raw["vocab_size"], d)
    assert shapes[layer + "self_attn.q_proj.weight"] == (h * hd, d)
    assert shapes[layer + "self_attn.k_proj.weight"] == shapes[layer + "self_attn.v_proj.weight"] == (kv * hd, d)
    assert shapes[layer + "self_attn.o_proj.weight"] == (d, h * hd)
    assert shapes[layer + "mlp.gate_proj.weight"] == shapes[layer + "mlp.up_proj.weight"] == (i, d)
    assert shapes[layer + "mlp.down_proj.weight"] == (d, i)
    assert shapes["model.norm.weight"] == (d,)
    assert ("lm_head.weight" in shapes) is not tie  # tied: vLLM ties it from the config, no tensor saved
    if not tie:
        assert shapes["lm_head.weight"] == (raw["vocab_size"], d)
    assert sum(k.startswith("model.layers.") and k.endswith("input_layernorm.weight") for k in shapes) == raw["num_hidden_layers"]
