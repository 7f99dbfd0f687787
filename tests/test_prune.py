"""Structural pruning: per family on tiny random models (nothing downloaded) + the real SmolLM2."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from diet_explore.core.errors import DietError
from diet_explore.models.adapters import get_adapter
from diet_explore.models.adapters.tiny import TINY_FAMILIES, save_tiny_folder, tiny_model
from diet_explore.pruning.saving import MASK_FILE, PRUNE_INFO_FILE, required_multiple, save_pruned, size_on_disk
from diet_explore.pruning.slicing import count_parameters, prune_model

IDS = torch.tensor([[1, 5, 9, 33, 70, 100, 3, 4, 17, 88], [1, 6, 6, 2, 90, 11, 12, 13, 14, 15]])


def keep_mask(d: int = 64, n: int = 48, seed: int = 0) -> np.ndarray:
    keep = np.zeros(d, dtype=bool)
    keep[np.random.default_rng(seed).permutation(d)[:n]] = True
    return keep


def logits(model, ids=IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def reload(folder):
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_saved_folder_reloads_with_plain_from_pretrained_and_gives_the_in_memory_logits(family, tie, tmp_path):
    model = tiny_model(family, tie=tie)
    pruned = prune_model(model, keep_mask())
    folder = save_pruned(pruned, None, tmp_path / "pruned", source_model="tiny")
    back = reload(folder)
    assert back.config.hidden_size == 48 and back.config.head_dim == 16
    assert back.config.num_attention_heads == 4
    torch.testing.assert_close(logits(back), logits(pruned), rtol=0, atol=1e-5)
    assert get_adapter(back).ties_embeddings() is tie and get_adapter(pruned).ties_embeddings() is tie
    # the pruned model is really different from the dense one (the test would notice a no-op)
    assert (logits(pruned) - logits(model)).abs().max() > 1e-2


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_keeping_every_dim_gives_the_dense_logits_and_never_mutates_the_input(family):
    model = tiny_model(family)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = [id(p) for p in model.parameters()]
    dense = logits(model)
    full = prune_model(model, np.ones(64, dtype=bool))
    torch.testing.assert_close(logits(full), dense, rtol=0, atol=1e-6)
    prune_model(model, keep_mask())
    assert model.config.hidden_size == 64 and get_adapter(model).ties_embeddings()
    assert [id(p) for p in model.parameters()] == params
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    torch.testing.assert_close(logits(model), dense, rtol=0, atol=0)
    if family.startswith("gemma"):
        assert float(model.model.embed_tokens.embed_scale) == pytest.approx(8.0)


def test_parameter_count_drops_by_the_hand_counted_params_per_hidden_dim():
    # tiny llama, per hidden dim: embedding row entry 128 (tied: counted once) + final norm 1 + per layer
    # (2 norms + q 64 + k 32 + v 32 inputs + o 64 outputs + gate/up 2*128 + down 128) = 578, two layers
    model = tiny_model("llama")
    per_dim = 128 + 1 + 2 * (2 + 64 + 32 + 32 + 64 + 256 + 128)
    assert count_parameters(model) - count_parameters(prune_model(model, keep_mask())) == 16 * per_dim
    untied = tiny_model("llama", tie=False)  # the lm_head's 128 per dim counts separately
    assert count_parameters(untied) - count_parameters(prune_model(untied, keep_mask())) == 16 * (per_dim + 128)


@pytest.mark.parametrize("family", ["gemma2", "gemma3_text"])
@pytest.mark.parametrize("tie", [True, False])
def test_gemma_embedding_scale_trap_is_folded_so_the_reloaded_model_sees_the_dense_residual_stream(family, tie, tmp_path):
    """A reloaded D'-model computes sqrt(D') from its config. Without the fold its embeddings would be
    scaled by sqrt(48) instead of the dense sqrt(64): this test fails then."""
    model = tiny_model(family, tie=tie)
    keep = keep_mask()
    back = reload(save_pruned(prune_model(model, keep), None, tmp_path / "g"))
    assert float(back.model.embed_tokens.embed_scale) == pytest.approx(math.sqrt(48))  # the reload's own factor
    with torch.no_grad():
        dense_embed = model.model.embed_tokens(IDS)[..., torch.as_tensor(np.flatnonzero(keep))]
        torch.testing.assert_close(back.model.embed_tokens(IDS), dense_embed, rtol=1e-6, atol=1e-6)
        naive = model.model.embed_tokens.weight[IDS][..., torch.as_tensor(np.flatnonzero(keep))] * math.sqrt(48)
        # what an unfolded slice would give: 1 - sqrt(48/64) = 13% smaller embeddings
        assert float((naive - dense_embed).norm() / dense_embed.norm()) == pytest.approx(1 - math.sqrt(48 / 64), rel=1e-5)


@pytest.mark.parametrize("family", ["gemma2", "gemma3_text"])
def test_gemma_tied_head_logits_match_an_independent_reference_from_the_dense_weights(family, tmp_path):
    """Folding r into the tied embedding scales the head too; the final norm undoes it. Reference:
    the dense final norm's weights over the kept dims and the dense (unscaled) embedding matrix."""
    model = tiny_model(family, tie=True)
    keep = keep_mask()
    idx = torch.as_tensor(np.flatnonzero(keep))
    back = reload(save_pruned(prune_model(model, keep), None, tmp_path / "g"))
    seen = {}
    handle = back.model.norm.register_forward_hook(lambda m, a, o: seen.update(x=a[0]))
    out = logits(back)
    handle.remove()
    x = seen["x"]  # (B, T, D') final norm input
    eps = back.model.norm.eps
    normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * (1.0 + model.model.norm.weight[idx])
    ref = normed @ model.model.embed_tokens.weight[:, idx].T
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        ref = torch.tanh(ref / cap) * cap
        assert out.abs().max() < cap  # soft-capping still applies after pruning
    torch.testing.assert_close(out, ref.detach(), rtol=1e-4, atol=1e-4)


def test_gemma2_softcapping_bounds_pruned_logits(tmp_path):
    model = tiny_model("gemma2")
    model.config.final_logit_softcapping = 0.5  # tight cap: every logit saturates towards ±0.5
    pruned = prune_model(model, keep_mask())
    out = logits(pruned)
    assert out.abs().max() <= 0.5 and out.abs().max() > 0.3


def test_bad_masks_are_refused_with_a_hint():
    model = tiny_model("qwen2")
    with pytest.raises(DietError, match="63 entries but the model's hidden size is 64"):
        prune_model(model, np.ones(63, dtype=bool))
    with pytest.raises(DietError, match="keeps 0 hidden dimensions"):
        prune_model(model, np.zeros(64, dtype=bool))
    with pytest.raises(DietError, match="bool array"):
        prune_model(model, np.ones(64, dtype=np.int64))


def test_kept_counts_the_config_class_rejects_are_refused_unless_in_memory_only(tmp_path):
    # transformers 5 Llama/Gemma configs demand hidden_size % num_attention_heads == 0 (save and load)
    llama, qwen = tiny_model("llama"), tiny_model("qwen2")
    assert required_multiple(llama) == 4 and required_multiple(qwen) == 1
    with pytest.raises(DietError) as err:
        prune_model(llama, keep_mask(n=45))
    assert "--multiple-of 4" in err.value.hint
    in_memory = prune_model(llama, keep_mask(n=45), saveable=False)
    assert logits(in_memory).shape == (2, 10, 128)
    with pytest.raises(DietError, match="would not load"):
        save_pruned(in_memory, None, tmp_path / "x")
    assert not (tmp_path / "x").exists()
    assert prune_model(qwen, keep_mask(n=45)).config.hidden_size == 45  # qwen2's config has no such rule


def test_unsupported_architecture_is_refused():
    model = tiny_model("llama")
    model.config.model_type = "gpt2"
    with pytest.raises(DietError, match="'gpt2' is not supported"):
        prune_model(model, keep_mask())


def test_existing_output_folder_is_refused_unless_overwrite(tmp_path):
    pruned = prune_model(tiny_model("qwen3"), keep_mask())
    out = tmp_path / "p"
    out.mkdir()
    (out / "marker").write_text("x")
    with pytest.raises(DietError, match="already exists"):
        save_pruned(pruned, None, out)
    with pytest.raises(DietError, match="did not write"):  # not a folder a prune wrote: never replaced
        save_pruned(pruned, None, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["marker"]
    (out / "marker").unlink()
    save_pruned(pruned, None, out, overwrite=True)  # empty: nothing to lose
    (out / "extra").write_text("x")
    save_pruned(pruned, None, out, overwrite=True)  # its own folder: replaced whole
    assert not (out / "extra").exists() and (out / "config.json").exists()


def test_interrupted_save_leaves_no_half_written_folder(tmp_path):
    pruned = prune_model(tiny_model("llama"), keep_mask())

    class Boom:
        def save_pretrained(self, folder):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        save_pruned(pruned, Boom(), tmp_path / "p")
    assert list(tmp_path.iterdir()) == []


def test_folder_holds_card_mask_and_summary(tmp_path):
    from diet_explore.masking.maskfile import MaskFile, load_mask

    model = tiny_model("llama")
    keep = keep_mask()
    mask = MaskFile(
        model_name="tiny",
        model_id="tiny/llama",
        hidden_size=64,
        method="diet",
        sparsity=0.25,
        actual_sparsity=0.25,
        threshold=0.5,
        weights={"rte": 1.0},
        tasks=["rte"],
        site="residual",
        layer_agg="mean",
        cache_manifest_hash=None,
        package_version="0",
        created="now",
        kept_indices=[int(i) for i in np.flatnonzero(keep)],
    )
    folder = save_pruned(prune_model(model, keep), None, tmp_path / "p", mask_file=mask)
    info = json.loads((folder / PRUNE_INFO_FILE).read_text())
    assert info["hidden_size_before"] == 64 and info["hidden_size_after"] == 48 and info["n_kept"] == 48
    assert info["parameters_before"] == count_parameters(model) and info["method"] == "diet"
    assert info["source_model"] == "tiny/llama"
    assert np.array_equal(load_mask(folder / MASK_FILE, expected_hidden_size=64).keep, keep)
    card = (folder / "README.md").read_text()
    assert "tiny/llama" in card and "64 → 48" in card and "from_pretrained" in card
    assert size_on_disk(folder) > 4 * info["parameters_after"]  # fp32 weights + the rest


@pytest.mark.slow
def test_real_smollm2_prunes_20_percent_saves_reloads_and_evaluates(smollm2, tmp_path):
    from diet_explore.evaluation.evaluate import EvalConfig, evaluate_pair

    model, tok, info = smollm2
    d = model.config.hidden_size
    assert required_multiple(model) == 9  # 9 heads: SmolLM2's Llama config wants multiples of 9
    n_keep = 459  # 20.3% pruned, a multiple of 9
    keep = np.zeros(d, dtype=bool)
    keep[np.argsort(-model.model.norm.weight.detach().abs().numpy(), kind="stable")[:n_keep]] = True
    pruned = prune_model(model, keep)
    assert count_parameters(model) - count_parameters(pruned) == (d - n_keep) * 233533  # params per hidden dim
    folder = save_pruned(pruned, tok, tmp_path / "smol", source_model=info.id)
    back = reload(folder)
    ids = tok("The capital of France is Paris, and", return_tensors="pt")["input_ids"]
    torch.testing.assert_close(logits(back, ids), logits(pruned, ids), rtol=0, atol=1e-4)
    pair = evaluate_pair(model, pruned, tok, EvalConfig(tasks="arc_easy,rte", limit=4, perplexity=False))
    frame = pair.to_frame()
    assert list(frame.index) == ["arc_easy", "rte", "average"]
    for t in ("arc_easy", "rte"):
        assert 0.0 <= frame.loc[t, "pruned_acc"] <= 1.0 and frame.loc[t, "n"] == 4
        assert frame.loc[t, "delta_acc"] == pytest.approx(frame.loc[t, "pruned_acc"] - frame.loc[t, "dense_acc"])


def test_prune_command_refuses_a_kept_count_the_config_rejects_before_loading_weights(tmp_path, monkeypatch, capsys):
    from diet_explore import cli
    from diet_explore.masking.maskfile import MaskFile, save_mask
    from diet_explore.models import loading as models

    folder = tmp_path / "tiny-llama"
    tiny_model("llama").save_pretrained(folder)  # 4 heads: kept counts must be multiples of 4
    mask = MaskFile(
        model_name="tiny",
        model_id="tiny",
        hidden_size=64,
        method="diet",
        sparsity=0.3,
        actual_sparsity=0.3,
        threshold=0.5,
        weights={"boolq": 1.0},
        tasks=["boolq"],
        site="residual",
        layer_agg="mean",
        cache_manifest_hash="x",
        package_version="0",
        created="now",
        kept_indices=[int(i) for i in np.flatnonzero(keep_mask(n=45))],
    )
    save_mask(mask, tmp_path / "mask.json")

    def no_load(*a, **k):
        raise AssertionError("weights were loaded before the kept count was checked")

    monkeypatch.setattr(models, "load_model", no_load)
    rc = cli.main(["prune", "--model", str(folder), "--mask", str(tmp_path / "mask.json"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "keeps 45 dims" in err and "--multiple-of 4" in err
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("family", ["llama", "gemma2", "gemma3_text"])
def test_keeping_every_dim_saves_and_reloads_as_the_dense_model(family, tie, tmp_path):
    """Identity through the disk too: the Gemma scale bookkeeping and config rewrite survive a reload."""
    model = tiny_model(family, tie=tie)
    back = reload(save_pruned(prune_model(model, np.ones(64, dtype=bool)), None, tmp_path / "full"))
    assert back.config.hidden_size == 64 and get_adapter(back).ties_embeddings() is tie
    torch.testing.assert_close(logits(back), logits(model), rtol=0, atol=1e-5)


def test_a_model_spread_over_several_devices_is_sliced_where_each_tensor_lives():
    """device_map="auto" models are pruned: each tensor is sliced on its own device (a second
    device is played by "meta", which holds shapes but no values); rotate-and-slice still refuses."""
    from diet_explore.pruning.slicing import check_single_device

    model = tiny_model("llama", tie=False)
    model.model.layers[1].to("meta")
    model.lm_head.to("meta")
    model.hf_device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": 0, "lm_head": 0}
    pruned = prune_model(model, keep_mask())
    assert pruned.config.hidden_size == 48
    assert pruned.model.layers[1].mlp.down_proj.weight.device.type == "meta"
    assert tuple(pruned.model.layers[1].mlp.down_proj.weight.shape) == (48, 128)
    assert tuple(pruned.lm_head.weight.shape) == (128, 48) and pruned.lm_head.weight.device.type == "meta"
    dense_q = model.model.layers[0].self_attn.q_proj.weight
    torch.testing.assert_close(
        pruned.model.layers[0].self_attn.q_proj.weight, dense_q[:, torch.as_tensor(np.flatnonzero(keep_mask()))]
    )
    with pytest.raises(DietError, match=r"spread over 2 devices \(cpu, cuda:0\)"):
        check_single_device(model)
    model.hf_device_map = {"model.embed_tokens": 0, "model.layers.0": "cuda:0", "lm_head": 0}  # one GPU, two spellings
    check_single_device(model)


# --------------------------------------------------------------------------------------------
# `diet-explore prune` end to end on tiny folders
def write_mask(path, hidden_size: int = 64, n_keep: int = 48) -> str:
    from diet_explore.masking.maskfile import MaskFile, save_mask

    mask = MaskFile(
        model_name="tiny",
        model_id="tiny",
        hidden_size=hidden_size,
        method="diet",
        sparsity=0.25,
        actual_sparsity=1 - n_keep / hidden_size,
        threshold=0.5,
        weights={"rte": 1.0},
        tasks=["rte"],
        site="residual",
        layer_agg="mean",
        cache_manifest_hash=None,
        package_version="0",
        created="now",
        kept_indices=[int(i) for i in np.flatnonzero(keep_mask(hidden_size, n_keep))],
    )
    save_mask(mask, path)
    return str(path)


def no_weights(*a, **k):
    raise AssertionError("weights were loaded before the arguments were checked")


@pytest.mark.parametrize("model_type, n_keep", [("mamba", 48), ("gpt_neox", 45)])
def test_prune_command_refuses_an_unsupported_architecture_before_any_mask_advice(
    model_type, n_keep, tmp_path, monkeypatch, capsys
):
    """Mamba has no attention heads (the saveability check crashed with AttributeError); gpt_neox was
    told to rebuild its mask with --multiple-of before being told it cannot be pruned at all."""
    from transformers import CONFIG_MAPPING

    from diet_explore import cli
    from diet_explore.models import loading as models

    folder = tmp_path / model_type
    CONFIG_MAPPING[model_type](hidden_size=64, num_hidden_layers=1, num_attention_heads=4, vocab_size=128).save_pretrained(folder)
    monkeypatch.setattr(models, "load_model", no_weights)
    rc = cli.main(
        [
            "prune",
            "--model",
            str(folder),
            "--mask",
            write_mask(tmp_path / "m.json", 64, n_keep),
            "--out",
            str(tmp_path / "out"),
            "--device",
            "cpu",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and f"model family '{model_type}' is not supported" in err
    assert "multiple-of" not in err and "Traceback" not in err and not (tmp_path / "out").exists()


def test_prune_command_refuses_a_mask_of_another_hidden_size_without_loading_weights(tmp_path, monkeypatch, capsys):
    from diet_explore import cli
    from diet_explore.models import loading as models

    folder = tmp_path / "tiny-llama"
    tiny_model("llama").save_pretrained(folder)
    monkeypatch.setattr(models, "load_model", no_weights)
    rc = cli.main(
        [
            "prune",
            "--model",
            str(folder),
            "--mask",
            write_mask(tmp_path / "m.json", 32, 24),
            "--out",
            str(tmp_path / "out"),
            "--device",
            "cpu",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "is for hidden size 32" in err and "64" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "out, overwrite, message",
    [
        ("taken", False, "output folder taken already exists"),
        ("a-file", True, "output a-file exists and is not a folder"),
        (".", True, "is the filesystem root, the current folder or one above it"),
        ("", False, "--out is empty"),
    ],
)
def test_prune_command_refuses_a_bad_output_before_loading_anything(out, overwrite, message, tmp_path, monkeypatch, capsys):
    from diet_explore import cli
    from diet_explore.models import loading as models

    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "marker").write_text("x")
    (tmp_path / "a-file").write_text("keep me")
    write_mask(tmp_path / "m.json")
    before = sorted(p.name for p in tmp_path.iterdir())
    monkeypatch.setattr(models, "load_config", no_weights)  # refused before even the config is read
    monkeypatch.setattr(models, "load_model", no_weights)
    rc = cli.main(["prune", "--model", "smollm2-135m", "--mask", "m.json", "--out", out] + (["--overwrite"] if overwrite else []))
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no stray .NAME.old or .partial
    assert (tmp_path / "a-file").read_text() == "keep me" and (tmp_path / "taken" / "marker").exists()


def test_prune_command_writes_a_folder_that_reloads_with_plain_transformers(tmp_path, capsys):
    from transformers import AutoTokenizer

    from diet_explore import cli
    from diet_explore.masking.maskfile import load_mask

    source = save_tiny_folder(tmp_path / "tiny-llama")
    mask_path = write_mask(tmp_path / "m.json")
    rc = cli.main(["prune", "--model", str(source), "--mask", mask_path, "--out", str(tmp_path / "out"), "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 0
    dense = reload(source)
    expected = prune_model(dense, load_mask(mask_path).keep)
    assert "tiny-llama: hidden size 64 -> 48 (diet mask, sparsity 0.2500)" in out
    assert f"parameters {count_parameters(dense) / 1e6:.2f} M -> {count_parameters(expected) / 1e6:.2f} M" in out
    assert f"wrote {tmp_path / 'out'} (" in out and "MiB on disk" in out
    back = reload(tmp_path / "out")
    assert back.config.hidden_size == 48
    torch.testing.assert_close(logits(back), logits(expected), rtol=0, atol=1e-5)
    assert len(AutoTokenizer.from_pretrained(tmp_path / "out")) == 128
    assert load_mask(tmp_path / "out" / MASK_FILE, expected_hidden_size=64).n_keep == 48


def test_prune_command_keeps_the_checkpoints_dtype(tmp_path, capsys):
    """A bf16 checkpoint is pruned and saved in bf16 (not inflated to fp32), and the card says so;
    an fp32 one stays fp32 whatever device a GPU machine would default to."""
    from transformers import AutoModelForCausalLM

    from diet_explore import cli

    source = save_tiny_folder(tmp_path / "tiny-bf16")
    AutoModelForCausalLM.from_pretrained(source).to(torch.bfloat16).save_pretrained(source)
    mask_path = write_mask(tmp_path / "m.json")
    assert cli.main(["prune", "--model", str(source), "--mask", mask_path, "--out", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert back.config.dtype == torch.bfloat16 and next(back.parameters()).dtype == torch.bfloat16
    card = (tmp_path / "out" / "README.md").read_text()
    assert "dtype=bfloat16" in card and "| weights saved in | bfloat16 |" in card
    assert (
        cli.main(
            [
                "prune",
                "--model",
                str(save_tiny_folder(tmp_path / "tiny-fp32")),
                "--mask",
                mask_path,
                "--out",
                str(tmp_path / "out32"),
            ]
        )
        == 0
    )
    assert "dtype=float32" in (tmp_path / "out32" / "README.md").read_text()
