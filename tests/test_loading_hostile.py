"""Damaged model folders and impossible devices: each is one DietError (the CLI: one line, exit 2)
before any evaluation or write, never a traceback and never a model with random weights."""

from __future__ import annotations

import json

import numpy as np
import pytest

from diet_explore.core.errors import DietError
from diet_explore.models import loading
from diet_explore.models.adapters.tiny import save_tiny_folder
from diet_explore.models.loading import load_config, load_model, pick_device


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A loadable tiny llama folder (tied embeddings, hidden 64, 4 heads, 2 kv heads); copy before damaging."""
    return save_tiny_folder(tmp_path_factory.mktemp("tiny") / "tiny")


def _copy(src, dst, config_patch=None):
    import shutil

    shutil.copytree(src, dst)
    if config_patch:
        cfg = json.loads((dst / "config.json").read_text())
        cfg.update(config_patch)
        (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def _drop_tensors(folder, names):
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    tensors = load_file(path)
    for name in names:
        del tensors[name]
    save_file(tensors, path, metadata={"format": "pt"})


def _mask_file(path, hidden=64, keep=32):
    from diet_explore.masking.maskfile import MaskFile, save_mask

    kept = np.arange(hidden)[::2][:keep]
    save_mask(
        MaskFile(
            model_name="tiny",
            model_id="tiny",
            hidden_size=hidden,
            method="diet",
            sparsity=0.5,
            actual_sparsity=0.5,
            threshold=0.5,
            weights={"rte": 1.0},
            tasks=["rte"],
            site="residual",
            layer_agg="mean",
            cache_manifest_hash="x",
            package_version="0",
            created="now",
            kept_indices=[int(i) for i in kept],
        ),
        path,
    )
    return path


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------------------- missing weights
def test_a_checkpoint_missing_a_weight_is_refused_not_randomly_initialised(tiny_folder, tmp_path):
    folder = _copy(tiny_folder, tmp_path / "missing")
    _drop_tensors(folder, ["model.layers.1.mlp.down_proj.weight"])
    with pytest.raises(DietError) as err:
        load_model(str(folder), device="cpu")
    msg = err.value.message
    assert str(folder) in msg and "model.layers.1.mlp.down_proj.weight" in msg and "1 tensor" in msg
    assert "\n" not in msg


def test_many_missing_weights_are_counted_and_a_few_named(tiny_folder, tmp_path):
    folder = _copy(tiny_folder, tmp_path / "many")
    names = [f"model.layers.{i}.{p}.weight" for i in (0, 1) for p in ("mlp.up_proj", "mlp.gate_proj", "self_attn.q_proj")]
    _drop_tensors(folder, names)
    with pytest.raises(DietError) as err:
        load_model(str(folder), device="cpu")
    msg = err.value.message
    assert "6 tensor(s)" in msg and msg.count("model.layers.") == 3 and "..." in msg


def test_tied_lm_head_absent_from_the_checkpoint_is_fine_but_an_untied_one_is_missing(tiny_folder, tmp_path):
    from safetensors.torch import load_file

    assert "lm_head.weight" not in load_file(tiny_folder / "model.safetensors")  # tied: legitimately absent
    model, _, _ = load_model(str(tiny_folder), device="cpu")
    assert model.lm_head.weight is model.model.embed_tokens.weight
    untied = _copy(tiny_folder, tmp_path / "untied", {"tie_word_embeddings": False})
    with pytest.raises(DietError, match=r"lack 1 tensor\(s\).*lm_head\.weight"):
        load_model(str(untied), device="cpu")


def test_an_extra_tensor_in_the_checkpoint_is_a_one_line_warning(tiny_folder, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    folder = _copy(tiny_folder, tmp_path / "extra")
    tensors = load_file(folder / "model.safetensors")
    tensors["model.something_else.weight"] = torch.zeros(3)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.warns(UserWarning, match=r"ignoring 1 tensor\(s\).*model\.something_else\.weight"):
        load_model(str(folder), device="cpu")


def test_prune_refuses_a_folder_with_a_missing_weight_and_writes_nothing(tiny_folder, tmp_path, capsys):
    from diet_explore import cli

    folder = _copy(tiny_folder, tmp_path / "missing")
    _drop_tensors(folder, ["model.layers.0.self_attn.o_proj.weight"])
    out = tmp_path / "out"
    rc = cli.main(["prune", "--model", str(folder), "--mask", str(_mask_file(tmp_path / "m.json")), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "model.layers.0.self_attn.o_proj.weight" in _one_error_line(err)
    assert not out.exists()


# ------------------------------------------------------------------------------- shapes vs config
def test_weights_that_do_not_match_the_config_are_one_clear_error(tiny_folder, tmp_path):
    folder = _copy(tiny_folder, tmp_path / "shape", {"intermediate_size": 100})
    with pytest.raises(DietError) as err:
        load_model(str(folder), device="cpu")
    msg = err.value.message
    assert "do not match its config.json" in msg and "6 tensor(s)" in msg
    assert "model.layers.0.mlp.down_proj.weight is [64, 128] in the checkpoint but [64, 100] by the config" in msg
    assert str(folder) in msg


# ------------------------------------------------------------------------------- devices
def test_mps_without_mps_is_refused_before_weights_load(tiny_folder, monkeypatch):
    import torch

    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(DietError, match="torch sees no MPS"):
        pick_device("mps")
    monkeypatch.setattr(loading, "_load_weights", lambda *a, **k: pytest.fail("weights loaded before the device check"))
    with pytest.raises(DietError, match="torch sees no MPS"):
        load_model(str(tiny_folder), device="mps")


# ------------------------------------------------------------------------------- bad config.json
BAD_CONFIGS = [
    ({"hidden_size": "64"}, "hidden_size is '64'"),
    ({"hidden_size": True}, "hidden_size is True"),
    ({"num_attention_heads": 0}, "num_attention_heads is 0"),
    ({"num_hidden_layers": -1}, "num_hidden_layers is -1"),
    ({"num_key_value_heads": 0}, "num_key_value_heads is 0"),
    ({"num_attention_heads": 7}, "num_attention_heads (7) is not a multiple of num_key_value_heads (2)"),
    # passes the size checks; the config class's own validators refuse it (not OSError / ValueError)
    ({"num_attention_heads": 6, "num_key_value_heads": 6}, "not a valid config: Class validation error"),
    ({"rms_norm_eps": "x"}, "not a valid config: Validation error for field 'rms_norm_eps'"),
]


@pytest.mark.parametrize(("patch", "expected"), BAD_CONFIGS, ids=[json.dumps(p) for p, _ in BAD_CONFIGS])
def test_a_bad_config_value_is_one_error_naming_the_file(patch, expected, tiny_folder, tmp_path):
    folder = _copy(tiny_folder, tmp_path / "bad", patch)
    with pytest.raises(DietError) as err:
        load_config(str(folder))
    msg = err.value.message
    assert expected in msg and str(folder / "config.json") in msg and "\n" not in msg and len(msg) < 400


@pytest.mark.parametrize(
    "command",
    [
        ["prune", "--mask", "MASK", "--out", "OUT"],
        ["eval", "--tasks", "rte", "--limit", "2", "--no-perplexity", "--no-eval-cache"],
        ["eval", "--compare-to", "BAD", "--tasks", "rte", "--limit", "2", "--no-perplexity", "--no-eval-cache"],
    ],
    ids=["prune", "eval", "eval-compare-to"],
)
def test_cli_commands_refuse_a_bad_config_in_one_line(command, tiny_folder, tmp_path, monkeypatch, capsys):
    from diet_explore import cli

    monkeypatch.setattr(loading, "_load_weights", lambda *a, **k: pytest.fail("weights loaded"))
    bad = _copy(tiny_folder, tmp_path / "bad", {"num_attention_heads": 0})
    good = str(tiny_folder)
    model = good if "--compare-to" in command else str(bad)
    subst = {"MASK": str(_mask_file(tmp_path / "m.json")), "OUT": str(tmp_path / "out"), "BAD": str(bad)}
    argv = [command[0], "--model", model] + [subst.get(a, a) for a in command[1:]]
    rc = cli.main(argv)
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2 and "num_attention_heads is 0" in line and str(bad / "config.json") in line
    assert not (tmp_path / "out").exists()
