"""Profiling end to end: resume after an interruption, bad input, and the real SmolLM2."""

import json

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from diet_explore.adapters.tiny import tiny_model
from diet_explore.cache import load_cache
from diet_explore.cli import main
from diet_explore.models import ModelInfo, store_path
from diet_explore.profile import ProfileConfig, profile


@pytest.fixture(scope="module")
def tiny_loaded():
    """A tiny random llama with SmolLM2's vocabulary, so real tokenized task text runs through it."""
    tok = AutoTokenizer.from_pretrained(store_path("smollm2-135m"))
    model = tiny_model("llama", hidden_size=32)
    model.resize_token_embeddings(len(tok))
    info = ModelInfo("tiny", "tiny", None, None, None, "llama", 32, 2, sum(p.numel() for p in model.parameters()))
    return model, tok, info


CONFIG = dict(model="tiny", tasks="rte,winogrande,arc_easy", samples=6, generic=True, device="cpu")


def test_resume_after_interruption_reuses_finished_tasks(tmp_path, tiny_loaded):
    out = tmp_path / "c"
    calls = []

    def interrupt_on_second_task(task, done, total):
        calls.append(task)
        if task == "winogrande":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        profile(ProfileConfig(**CONFIG), out, progress=interrupt_on_second_task, loaded=tiny_loaded)
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["tasks"]) == ["rte"]  # the finished task survived, the broken one is absent
    first_finish = manifest["tasks"]["rte"]["finished"]

    seen = []
    resumed = profile(ProfileConfig(**CONFIG), out, progress=lambda t, d, n: seen.append(t), loaded=tiny_loaded)
    assert "rte" not in seen and {"winogrande", "arc_easy", "wikitext"} <= set(seen)
    assert resumed.manifest["tasks"]["rte"]["finished"] == first_finish

    fresh = profile(ProfileConfig(**CONFIG), tmp_path / "fresh", progress=lambda *a: None, loaded=tiny_loaded)
    for task in fresh.tasks:
        np.testing.assert_allclose(resumed.layer_scores(task), fresh.layer_scores(task), rtol=1e-5)
        assert resumed.tasks[task].sample_ids == fresh.tasks[task].sample_ids


def test_resume_into_a_cache_made_with_other_settings_is_refused(tmp_path, tiny_loaded):
    from diet_explore.errors import DietError

    profile(ProfileConfig(**{**CONFIG, "tasks": "rte", "generic": False}), tmp_path / "c", progress=lambda *a: None, loaded=tiny_loaded)
    with pytest.raises(DietError, match="different 'config'"):
        profile(ProfileConfig(**{**CONFIG, "tasks": "rte", "samples": 7}), tmp_path / "c", progress=lambda *a: None, loaded=tiny_loaded)


def test_cli_bad_input_is_one_clear_line_not_a_traceback(capsys, tmp_path):
    assert main(["profile", "--tasks", "boolq,nope", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "unknown task(s): nope" in err and "Traceback" not in err
    assert main(["profile", "--tasks", "rte", "--samples", "1000", "--out", str(tmp_path / "x")]) == 2
    assert "rte has 277 examples" in capsys.readouterr().err
    assert main(["profile", "--model", "./no/such/folder", "--out", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_real_smollm2_two_tasks_four_samples(tmp_path, smollm2):
    cache = profile(ProfileConfig(tasks="boolq,hellaswag", samples=4, generic=False, device="cpu"), tmp_path / "c",
                    progress=lambda *a: None, loaded=smollm2)
    assert cache.task_names == ["boolq", "hellaswag"] and cache.hidden_size == 576 and cache.num_layers == 30
    for task in cache.task_names:
        layer, sample = cache.layer_scores(task), cache.sample_scores(task)
        assert layer.shape == (30, 576) and sample.shape == (4, 576) and (layer > 0).all()
        np.testing.assert_allclose(layer.mean(0), sample.mean(0), rtol=1e-4)
    # SmolLM2 has massive-activation outlier dims: the top dim dwarfs the median one.
    scores = cache.layer_scores("boolq").mean(0)
    assert scores.max() > 10 * np.median(scores)
    assert cache.manifest["model"]["params_per_hidden_dim"] > 0 and cache.baselines["weight_magnitude"].shape == (576,)
    # matches the committed cache for the same samples (same seed draws the same first ids)
    committed = load_cache("cache/smollm2-135m")
    ids = committed.tasks["boolq"].sample_ids
    assert set(cache.tasks["boolq"].sample_ids) <= set(range(3270)) and len(ids) == 100
