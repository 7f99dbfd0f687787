"""Profiling end to end: resume after an interruption, bad input, and the real SmolLM2."""

import copy
import dataclasses
import json
from importlib.resources import files

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from diet_explore.cli import main
from diet_explore.core.errors import DietError
from diet_explore.models.adapters.tiny import tiny_model
from diet_explore.models.builtin import store_path
from diet_explore.models.loading import ModelInfo
from diet_explore.profiling.cache import load_cache
from diet_explore.profiling.runner import ProfileConfig, profile


@pytest.fixture(scope="module")
def tiny_loaded():
    """A tiny random llama with SmolLM2's vocabulary, so real tokenized task text runs through it."""
    tok = AutoTokenizer.from_pretrained(store_path("smollm2-135m"))
    model = tiny_model("llama", hidden_size=32)
    model.resize_token_embeddings(len(tok))
    info = ModelInfo("tiny", "tiny", None, None, None, "llama", 32, 2, sum(p.numel() for p in model.parameters()))
    return model, tok, info


CONFIG = dict(model="tiny", tasks="rte,winogrande,arc_easy", samples=6, generic=True, device="cpu")


@pytest.mark.slow
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


def test_a_second_profile_into_the_same_out_is_refused_while_the_first_runs(tmp_path, tiny_loaded):
    """Two runs into one --out each rewrote the manifest with their own tasks: one run's tasks were lost."""
    import subprocess
    import sys

    out = tmp_path / "c"
    holder = (  # another process inside a profile of `out` (the lock the runner takes), until stdin closes
        "import sys; from diet_explore.core import atomic\n"
        f"with atomic.locked({str(out)!r}, timeout=0):\n    print('held', flush=True); sys.stdin.read()"
    )
    proc = subprocess.Popen([sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(DietError, match=f"--out {out} is being written by another profile run"):
            profile(ProfileConfig(**{**CONFIG, "tasks": "rte"}), out, progress=lambda *a: None, loaded=tiny_loaded)
        assert not out.exists()  # refused before anything was written
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
    done = profile(
        ProfileConfig(**{**CONFIG, "tasks": "rte", "generic": False}), out, progress=lambda *a: None, loaded=tiny_loaded
    )
    assert done.task_names == ["rte"]  # once the other run ended, the folder is free


def test_resume_into_a_cache_made_with_other_settings_is_refused(tmp_path, tiny_loaded):
    from diet_explore.core.errors import DietError

    profile(
        ProfileConfig(**{**CONFIG, "tasks": "rte", "generic": False}),
        tmp_path / "c",
        progress=lambda *a: None,
        loaded=tiny_loaded,
    )
    with pytest.raises(DietError, match="different 'config'"):
        profile(
            ProfileConfig(**{**CONFIG, "tasks": "rte", "samples": 7}),
            tmp_path / "c",
            progress=lambda *a: None,
            loaded=tiny_loaded,
        )


def _no_model_load(monkeypatch):
    """Make any model load fail the test: the checks under test must come before it."""

    def fail(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was refused")

    monkeypatch.setattr("diet_explore.models.loading.load_model", fail)


@pytest.fixture
def named_cache(tmp_path, tiny_loaded):
    """A float32 CPU cache of rte whose model is recorded as the built-in smollm2-135m, so a run
    that names that model is checked against it before any load."""
    model, tok, info = tiny_loaded
    named = (model, tok, dataclasses.replace(info, name="smollm2-135m"))
    config = ProfileConfig(**{**CONFIG, "model": "smollm2-135m", "tasks": "rte", "generic": False})
    profile(config, tmp_path / "c", progress=lambda *a: None, loaded=named)
    return tmp_path / "c", config, named


@pytest.mark.parametrize(
    "change, key, hint",
    [
        ({"dtype": "bfloat16"}, "dtype", "--dtype float32"),
        ({"samples": 7}, "config", "another --out"),
        ({"sites": ["residual"]}, "sites", "another --out"),
        ({"model": "gemma3-270m"}, "model_name", "another --out"),
        ({"skip_first_token": True}, "config", "another --out"),  # scores with and without the first token never mix
    ],
)
def test_resume_mismatch_is_refused_before_the_model_loads(named_cache, monkeypatch, change, key, hint):
    out, config, _ = named_cache
    before = (out / "manifest.json").read_text()
    _no_model_load(monkeypatch)
    with pytest.raises(DietError, match=f"different {key!r}") as err:
        profile(dataclasses.replace(config, tasks="rte,boolq", **change), out, progress=lambda *a: None)
    assert hint in err.value.hint
    assert (out / "manifest.json").read_text() == before  # nothing was profiled or rewritten


def test_resume_with_a_model_loaded_in_another_dtype_is_refused(named_cache):
    """The loaded model's own dtype counts (the app passes a model it already holds): an fp32 cache
    does not get a bf16 task, and its manifest keeps saying float32."""
    out, config, (model, tok, info) = named_cache
    bf16 = (copy.deepcopy(model).to(torch.bfloat16), tok, info)
    with pytest.raises(DietError, match=r"different 'dtype' \('float32'; this run: 'bfloat16'\)"):
        profile(dataclasses.replace(config, tasks="rte,boolq", dtype="bfloat16"), out, progress=lambda *a: None, loaded=bf16)
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["tasks"]) == ["rte"] and manifest["environment"]["dtype"] == "float32"
    assert not (out / "tasks" / "boolq.safetensors").exists()


def test_resume_accepts_the_sites_in_another_order(tmp_path, tiny_loaded):
    out = tmp_path / "c"
    profile(
        ProfileConfig(**{**CONFIG, "tasks": "rte", "generic": False, "sites": ["residual", "normed"]}),
        out,
        progress=lambda *a: None,
        loaded=tiny_loaded,
    )
    cache = profile(
        ProfileConfig(**{**CONFIG, "tasks": "rte,arc_easy", "generic": False, "sites": ["normed", "residual"]}),
        out,
        progress=lambda *a: None,
        loaded=tiny_loaded,
    )
    assert cache.task_names == ["rte", "arc_easy"] and cache.sites == ["residual", "normed"]


@pytest.mark.parametrize("damage", ["delete", "corrupt", "folder"])
def test_a_missing_or_corrupt_baselines_file_is_rebuilt_by_a_rerun(tmp_path, tiny_loaded, damage):
    out = tmp_path / "c"
    config = ProfileConfig(**{**CONFIG, "tasks": "rte", "generic": False})
    original = profile(config, out, progress=lambda *a: None, loaded=tiny_loaded).baselines["weight_magnitude"].copy()
    path = out / "baselines.safetensors"
    if damage == "corrupt":
        path.write_bytes(path.read_bytes()[:-8])
    else:
        path.unlink()
    with pytest.raises(DietError, match="baselines.safetensors") as err:
        load_cache(out)
    if damage == "corrupt":  # the hint says what the re-run below does
        assert "re-run the `diet-explore profile` command" in err.value.hint
    if damage == "folder":  # a folder in its place is named, not an IsADirectoryError
        path.mkdir()
        with pytest.raises(DietError, match="baselines.safetensors is listed in the manifest but is not a file"):
            load_cache(out)
        path.rmdir()
    repaired = profile(config, out, progress=lambda *a: None, loaded=tiny_loaded)  # what the error's hint says to do
    np.testing.assert_array_equal(repaired.baselines["weight_magnitude"], original)
    assert load_cache(out).baselines["weight_magnitude"].shape == original.shape


def test_an_out_that_is_a_file_is_refused_before_any_work(capsys, tmp_path, monkeypatch):
    _no_model_load(monkeypatch)
    afile = tmp_path / "afile"
    afile.write_text("not a cache")
    assert main(["profile", "--tasks", "rte", "--samples", "2", "--out", str(afile)]) == 2
    err = capsys.readouterr().err
    assert f"--out {afile} is not a folder" in err and "Traceback" not in err
    assert afile.read_text() == "not a cache"


@pytest.mark.parametrize("flag, value", [("--max-length", "0"), ("--max-length", "-5"), ("--max-batch-tokens", "0")])
def test_token_limits_below_one_are_refused(capsys, tmp_path, monkeypatch, flag, value):
    _no_model_load(monkeypatch)
    assert main(["profile", "--tasks", "rte", "--samples", "2", flag, value, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert f"{flag} must be a whole number of tokens, at least 1; got {value}" in err and "Traceback" not in err
    with pytest.raises(DietError, match="max_length|--max-length"):
        ProfileConfig(max_length=-5)


def _task_file(tmp_path, name: str, **change) -> str:
    """A registry file holding a copy of the built-in rte entry under ``name``."""
    entry = {**json.loads(files("diet_explore.tasks").joinpath("builtin.json").read_text())["rte"], **change}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({name: entry}))
    return str(path)


def test_profile_reads_a_task_file(tmp_path, tiny_loaded):
    config = ProfileConfig(**{**CONFIG, "tasks": "my_rte", "generic": False, "task_files": [_task_file(tmp_path, "my_rte")]})
    cache = profile(config, tmp_path / "c", progress=lambda *a: None, loaded=tiny_loaded)
    assert cache.task_names == ["my_rte"] and cache.tasks["my_rte"].n_samples == 6
    assert cache.layer_scores("my_rte").shape == (2, 32)


def test_cli_task_file_whose_template_does_not_fit_fails_before_the_model_loads(capsys, tmp_path, monkeypatch):
    _no_model_load(monkeypatch)
    bad = _task_file(tmp_path, "bad_rte", text="{premise} True or False?")  # rte has no 'premise' field
    assert main(["profile", "--tasks", "bad_rte", "--samples", "2", "--out", str(tmp_path / "x")]) == 2
    assert "unknown task(s): bad_rte" in capsys.readouterr().err  # without --task-file it is not registered
    assert main(["profile", "--task-file", bad, "--tasks", "bad_rte", "--samples", "2", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "bad_rte" in err and "premise" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


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
    cache = profile(
        # short prompts (a cheap forward pass) of unequal lengths (arc_challenge: 21 to 80 tokens), so
        # a batch is padded and the scores must leave the padding out
        ProfileConfig(tasks="arc_challenge,winogrande", samples=4, generic=False, device="cpu"),
        tmp_path / "c",
        progress=lambda *a: None,
        loaded=smollm2,
    )
    assert cache.task_names == ["arc_challenge", "winogrande"] and cache.hidden_size == 576 and cache.num_layers == 30
    for task in cache.task_names:
        layer, sample = cache.layer_scores(task), cache.sample_scores(task)
        assert layer.shape == (30, 576) and sample.shape == (4, 576) and (layer > 0).all()
        np.testing.assert_allclose(layer.mean(0), sample.mean(0), rtol=1e-4)
    # SmolLM2 has massive-activation outlier dims: the top dim dwarfs the median one.
    scores = cache.layer_scores("arc_challenge").mean(0)
    assert scores.max() > 10 * np.median(scores)
    assert cache.manifest["model"]["params_per_hidden_dim"] > 0 and cache.baselines["weight_magnitude"].shape == (576,)
    # the committed cache (100 samples, same seed) drew these same samples first: the seeded draws are
    # nested, and each shared sample's scores match whatever it was batched with
    committed = load_cache("cache/smollm2-135m")
    assert committed.manifest["config"]["seed"] == cache.manifest["config"]["seed"]
    for task in cache.task_names:
        small, full = cache.tasks[task].sample_ids, committed.tasks[task].sample_ids
        assert len(small) == 4 and len(full) == 100 and set(small) <= set(full)
        rows = [full.index(i) for i in small]
        np.testing.assert_allclose(cache.sample_scores(task), committed.sample_scores(task)[rows], rtol=1e-3, atol=1e-5)


def test_weight_magnitude_reads_offloaded_weights(tmp_path):
    """device_map="auto" beyond GPU memory leaves offloaded weights on the meta device."""
    from accelerate import dispatch_model

    from diet_explore.models.adapters import get_adapter
    from diet_explore.models.adapters.tiny import tiny_model
    from diet_explore.profiling.runner import weight_magnitude

    expected = weight_magnitude(get_adapter(tiny_model("llama", tie=False)))
    model = tiny_model("llama", tie=False)
    device_map = {
        "model.embed_tokens": "cpu",
        "model.layers.0": "cpu",
        "model.layers.1": "disk",
        "model.norm": "cpu",
        "model.rotary_emb": "cpu",
        "lm_head": "disk",
    }
    dispatch_model(model, device_map=device_map, offload_dir=str(tmp_path))
    assert any(p.device.type == "meta" for p in model.parameters())
    np.testing.assert_allclose(weight_magnitude(get_adapter(model)), expected, rtol=1e-6)


def test_skip_first_token_is_recorded_resumed_and_named_in_the_contexts_command(tmp_path, tiny_loaded):
    from diet_explore.masking.dims import contexts_command, first_token_counts

    # a cache profiled before the option existed (or without it) records nothing new: it resumes as it is
    assert ProfileConfig().science() == {"samples": 100, "seed": 1234, "max_length": 1024, "generic_window": 128}
    config = ProfileConfig(**{**CONFIG, "tasks": "rte", "skip_first_token": True})
    cache = profile(config, tmp_path / "c", progress=lambda *a: None, loaded=tiny_loaded)
    assert cache.manifest["config"]["skip_first_token"] is True
    counts, _ = first_token_counts(cache, "residual")
    assert not counts.any()  # no first token among the recorded top positions
    assert "--skip-first-token" in contexts_command(cache)  # the --add-contexts re-run scores as the cache did
    plain = profile(ProfileConfig(**{**CONFIG, "tasks": "rte"}), tmp_path / "p", progress=lambda *a: None, loaded=tiny_loaded)
    assert "--skip-first-token" not in contexts_command(plain)
    assert not np.allclose(cache.layer_scores("rte", "residual"), plain.layer_scores("rte", "residual"))
    again = profile(
        dataclasses.replace(config, tasks="rte,winogrande"), tmp_path / "c", progress=lambda *a: None, loaded=tiny_loaded
    )
    assert again.manifest["config"]["skip_first_token"] is True and "winogrande" in again.tasks
    # without the flag: refused in flag words ("{'skip_first_token': True}; this run: {'skip_first_token': None}" before)
    with pytest.raises(DietError, match=r"different 'config' \(--skip-first-token on; this run: --skip-first-token off\)") as err:
        profile(dataclasses.replace(config, skip_first_token=False), tmp_path / "c", progress=lambda *a: None, loaded=tiny_loaded)
    assert "resume with the cache's settings" in err.value.hint
    with pytest.raises(DietError, match=r"\(--samples 6; this run: --samples 7\)"):
        profile(dataclasses.replace(config, samples=7), tmp_path / "c", progress=lambda *a: None, loaded=tiny_loaded)
