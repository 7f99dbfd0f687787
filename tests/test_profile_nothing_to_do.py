"""profile on a complete cache: says "nothing to do", loads no model, writes nothing, leaves no lock file."""

from __future__ import annotations

import dataclasses

import pytest
from transformers import AutoTokenizer

from diet_explore.cli import main
from diet_explore.models.adapters.tiny import tiny_model
from diet_explore.models.builtin import store_path
from diet_explore.models.loading import ModelInfo
from diet_explore.profiling.runner import ProfileConfig, pending_work, profile


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A float32 CPU cache of rte + the generic text, recorded as the built-in smollm2-135m (so the CLI's
    `--model smollm2-135m` run is checked against it without loading anything)."""
    tok = AutoTokenizer.from_pretrained(store_path("smollm2-135m"))
    model = tiny_model("llama", hidden_size=32)
    model.resize_token_embeddings(len(tok))
    info = ModelInfo("smollm2-135m", "x", None, None, None, "llama", 32, 2, sum(p.numel() for p in model.parameters()))
    config = ProfileConfig(model="smollm2-135m", tasks="rte", samples=6, generic=True, device="cpu", dtype="float32")
    out = tmp_path_factory.mktemp("c") / "cache"
    profile(config, out, progress=lambda *a: None, loaded=(model, tok, info))
    return out, config, (model, tok, info)


def _snapshot(folder):
    files = {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}
    return files, sorted(p.name for p in folder.parent.iterdir())  # a lock file would sit beside the folder


def test_pending_work_names_what_a_run_would_compute(cache):
    out, config, _ = cache
    assert pending_work(config, out) == []
    assert pending_work(dataclasses.replace(config, tasks="rte,boolq"), out) == ["boolq"]
    assert pending_work(config, out.parent / "new") == ["rte", "wikitext", "baselines"]


def test_profile_on_a_complete_cache_says_nothing_to_do_and_writes_nothing(cache, monkeypatch, capsys):
    out, _, _ = cache
    before = _snapshot(out)

    def fail(*args, **kwargs):
        raise AssertionError("a model was loaded for nothing")

    monkeypatch.setattr("diet_explore.models.loading.load_model", fail)
    argv = ["profile", "--model", "smollm2-135m", "--tasks", "rte", "--samples", "6", "--device", "cpu"]
    assert main([*argv, "--dtype", "float32", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert said.startswith(f"nothing to do: {out} already holds rte, wikitext") and "nothing was written" in said
    assert _snapshot(out) == before  # no manifest date rewritten, no lock file beside the folder


def test_the_library_run_on_a_complete_cache_rewrites_no_manifest(cache):
    out, config, loaded = cache
    before = (out / "manifest.json").read_bytes()
    profile(config, out, progress=lambda *a: None, loaded=loaded)
    assert (out / "manifest.json").read_bytes() == before
