"""Shared fixtures: tiny random models, synthetic caches on disk, and the real SmolLM2 (once)."""

from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Evaluation results are never read from or written to the user's cache (subprocesses inherit this)
os.environ.setdefault("DIET_EXPLORE_EVAL_CACHE", tempfile.mkdtemp(prefix="diet-explore-eval-cache-"))


@pytest.fixture(autouse=True)
def _own_eval_cache(tmp_path, monkeypatch):
    """Each test starts with an empty evaluation cache, so no test sees another's results."""
    monkeypatch.setenv("DIET_EXPLORE_EVAL_CACHE", str(tmp_path / "eval-cache"))


@pytest.fixture(scope="session")
def synthetic_cache_dir(tmp_path_factory):
    """A realistic synthetic cache (7 tasks, 576 dims, 30 layers, 40 samples) saved to disk."""
    from diet_explore.cache import save_cache, synthetic_cache

    return save_cache(synthetic_cache(n_samples=40, seed=3), tmp_path_factory.mktemp("cache") / "synthetic")


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer, info) of the real SmolLM2-135M from the local store; never mutate it."""
    from diet_explore.models import load_model

    return load_model("smollm2-135m", device="cpu")
