"""Shared fixtures: tiny random models, synthetic caches on disk, and the real SmolLM2 (once)."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest
from app_helpers import APP, TIMEOUT, build_cache_root

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Evaluation results are never read from or written to the user's cache (subprocesses inherit this)
os.environ.setdefault("DIET_EXPLORE_EVAL_CACHE", tempfile.mkdtemp(prefix="diet-explore-eval-cache-"))
# A job worker the app starts for a test's run store exits after a minute idle, not the default 30
os.environ.setdefault("DIET_EXPLORE_WORKER_IDLE_S", "60")


def _no_forced_gc_after_reruns() -> None:
    """AppTest reruns skip Streamlit's forced gc.collect(2), as `diet-explore app` does (see
    diet_explore/cli/app.py): with torch in this process it cost a Mask builder rerun about 45 ms here (0.45 vs 0.41 s)."""
    from streamlit import config

    config.set_option("runner.postScriptGC", False)


_no_forced_gc_after_reruns()


@pytest.fixture(autouse=True)
def _own_eval_cache(tmp_path, monkeypatch):
    """Each test starts with an empty evaluation cache, so no test sees another's results."""
    monkeypatch.setenv("DIET_EXPLORE_EVAL_CACHE", str(tmp_path / "eval-cache"))


@pytest.fixture(scope="session")
def synthetic_cache_dir(tmp_path_factory):
    """A realistic synthetic cache (7 tasks, 576 dims, 30 layers, 40 samples) saved to disk."""
    from diet_explore.profiling.cache import save_cache
    from diet_explore.profiling.synthetic import synthetic_cache

    return save_cache(synthetic_cache(n_samples=40, seed=3), tmp_path_factory.mktemp("cache") / "synthetic")


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer, info) of the real SmolLM2-135M from the local store; never mutate it."""
    from diet_explore.models.loading import load_model

    return load_model("smollm2-135m", device="cpu")


# ---------------------------------------------------------------- the Streamlit app (tests/test_app_*.py, browser)
@pytest.fixture(scope="session")
def app_cache_root(tmp_path_factory) -> Path:
    return build_cache_root(tmp_path_factory.mktemp("app_caches"))


@pytest.fixture(scope="session")
def alpha(app_cache_root):
    from diet_explore.profiling.cache import load_cache

    return load_cache(app_cache_root / "alpha")


@pytest.fixture
def clear_st_caches():
    import streamlit as st

    st.cache_data.clear()
    st.cache_resource.clear()
    yield
    # a test's own transformers import must not overlap the app's background one. Only where the app
    # ran: importing diet_explore_app here would decide which copy of it AppTest's app.py imports
    loaders = sys.modules.get("diet_explore_app.loaders")
    if loaders is not None:
        loaders.wait_for_warm_up()
    st.cache_data.clear()
    st.cache_resource.clear()


@pytest.fixture
def app_env(monkeypatch, tmp_path, app_cache_root, clear_st_caches) -> dict[str, Path]:
    dirs = {"cache": app_cache_root, "export": tmp_path / "export", "runs": tmp_path / "runs"}
    monkeypatch.setenv("DIET_EXPLORE_CACHE_DIR", str(dirs["cache"]))
    monkeypatch.setenv("DIET_EXPLORE_EXPORT_DIR", str(dirs["export"]))
    monkeypatch.setenv("DIET_EXPLORE_RUNS_DIR", str(dirs["runs"]))
    return dirs


@pytest.fixture
def app(app_env):
    """A fresh AppTest of app.py (not yet run)."""
    from streamlit.testing.v1 import AppTest

    return AppTest.from_file(str(APP), default_timeout=TIMEOUT)


@pytest.fixture(scope="session")
def tiny_cache_root(tmp_path_factory) -> Path:
    """A real (profiled) score cache of a tiny random llama saved as a local model folder, whose
    manifest names that folder, so the Prune & evaluate page can load, prune and evaluate it."""
    from transformers import AutoTokenizer

    from diet_explore.models.adapters.tiny import tiny_model
    from diet_explore.models.builtin import store_path
    from diet_explore.models.loading import ModelInfo
    from diet_explore.profiling.runner import ProfileConfig, profile

    root = tmp_path_factory.mktemp("tiny")
    folder = root / "models" / "tiny-llama"
    tok = AutoTokenizer.from_pretrained(store_path("smollm2-135m"))
    model = tiny_model("llama", hidden_size=64)
    model.resize_token_embeddings(len(tok))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    info = ModelInfo(str(folder), "tiny-llama", None, None, None, "llama", 64, 2, sum(p.numel() for p in model.parameters()))
    config = ProfileConfig(model=str(folder), tasks="rte,arc_easy", samples=6, generic=True, device="cpu")
    profile(config, root / "caches" / "tiny", progress=lambda *a: None, loaded=(model, tok, info))
    return root / "caches"


@pytest.fixture
def tiny_app(monkeypatch, tmp_path, tiny_cache_root, clear_st_caches):
    """(a fresh AppTest of app.py on the tiny llama's cache, {"export", "runs"} folders); its workers
    are stopped afterwards."""
    from job_helpers import stop_workers
    from streamlit.testing.v1 import AppTest

    from diet_explore.experiments.jobs import JobStore

    dirs = {"export": tmp_path / "export", "runs": tmp_path / "runs"}
    monkeypatch.setenv("DIET_EXPLORE_CACHE_DIR", str(tiny_cache_root))
    monkeypatch.setenv("DIET_EXPLORE_EXPORT_DIR", str(dirs["export"]))
    monkeypatch.setenv("DIET_EXPLORE_RUNS_DIR", str(dirs["runs"]))
    yield AppTest.from_file(str(APP), default_timeout=TIMEOUT), dirs
    stop_workers(JobStore(dirs["runs"]))


def pytest_collection_modifyitems(config, items):
    """On xdist workers, the long tests (marked slow or browser) first, each group in pytest-randomly's
    shuffled order: a long test started near the end leaves the other worker idle while it runs. In
    one process (the mutation check's ``-x`` runs) the order stays: there the first test is the one
    expected to fail."""
    if not hasattr(config, "workerinput"):
        return
    items.sort(key=lambda item: 0 if item.get_closest_marker("slow") or item.get_closest_marker("browser") else 1)
