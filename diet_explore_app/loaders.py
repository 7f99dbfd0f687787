"""Cached loaders and computations: everything a page shows is computed once per input.

The cache is loaded with ``st.cache_data`` keyed on (path, sha256 of manifest.json); the manifest
lists every data file's sha256, so a re-profiled cache gets a new key. The ``ScorePrecompute``
wrapping it (memoised layer aggregation, read-only arrays) is a ``st.cache_resource`` on the same
key, so a slider move does not unpickle the arrays again. Derived results (masks, agreement,
bootstrap) are ``st.cache_data`` on that key plus the settings. Every function body is one library call.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from diet_explore.core.errors import DietError
from diet_explore.experiments.runs import RunStore
from diet_explore.masking.agreement import AgreementReport, agreement_report, spearman_matrix
from diet_explore.masking.build import MaskConfig, MaskResult, baseline_overlaps, build_mask
from diet_explore.masking.importance import ScorePrecompute
from diet_explore.masking.stability import StabilityResult, bootstrap_masks
from diet_explore.profiling.cache import MANIFEST, ScoreCache, load_cache


def manifest_sha(path: str) -> str:
    p = Path(path) / MANIFEST
    try:
        return hashlib.sha256(p.read_bytes()).hexdigest()[:16]
    except OSError:
        return "missing"  # load_cache then raises the DietError that explains it


@st.cache_data(show_spinner="Loading score cache…", max_entries=6)
def load_cache_cached(path: str, sha: str) -> ScoreCache:
    return load_cache(path)


@st.cache_resource(show_spinner=False, max_entries=6)
def precompute(path: str, sha: str) -> ScorePrecompute:
    return ScorePrecompute(load_cache_cached(path, sha))


@dataclass(frozen=True)
class Loaded:
    path: str
    sha: str

    @property
    def pre(self) -> ScorePrecompute:
        return precompute(self.path, self.sha)

    @property
    def cache(self) -> ScoreCache:
        return self.pre.cache


@st.cache_data(show_spinner=False, max_entries=256)
def mask_for(path: str, sha: str, config_json: str) -> MaskResult:
    return build_mask(precompute(path, sha), MaskConfig.from_json(config_json))


@st.cache_data(show_spinner=False, max_entries=64)
def agreement_for(
    path: str, sha: str, sparsity: float, tasks: tuple[str, ...], site: str, layer_agg: str, last_k: int
) -> AgreementReport:
    return agreement_report(precompute(path, sha), sparsity, list(tasks), site, layer_agg, last_k)


@st.cache_data(show_spinner=False, max_entries=32)
def spearman_for(path: str, sha: str, tasks: tuple[str, ...], site: str, layer_agg: str, last_k: int) -> np.ndarray:
    return spearman_matrix(precompute(path, sha).matrix(list(tasks), site, layer_agg, last_k))


@st.cache_data(show_spinner="Bootstrapping calibration samples…", max_entries=64)
def bootstrap_for(path: str, sha: str, config_json: str, n_resamples: int) -> StabilityResult:
    config = MaskConfig.from_json(config_json)
    return bootstrap_masks(precompute(path, sha), config, n_resamples=n_resamples, seed=config.seed)


@st.cache_data(show_spinner=False, max_entries=64)
def overlaps_for(path: str, sha: str, config_json: str) -> pd.DataFrame:
    """Overlap of the mask with the paper default and each baseline (``masking.build.baseline_overlaps``)."""
    return pd.DataFrame(baseline_overlaps(precompute(path, sha), MaskConfig.from_json(config_json)))


@st.cache_resource(show_spinner="Loading the dense model…", max_entries=1)
def dense_model(name: str, device: str):
    """(model, tokenizer, info), shared by every session: never mutate it (prune_model copies)."""
    from diet_explore.models.loading import load_model

    return load_model(name, device=device)


@st.cache_data(show_spinner=False)
def saveable_multiple(name: str) -> int | None:
    """The kept-count multiple ``name``'s config needs to save a pruned folder (None: unknown without
    loading or downloading anything)."""
    from diet_explore.pruning.saving import required_multiple_for_model

    try:
        return required_multiple_for_model(name)
    except DietError:
        return None


@st.cache_data(show_spinner=False, ttl=600)
def model_config_problem(name: str) -> tuple[str, str] | None:
    """(message, hint) when ``name``'s config cannot be read, else None. Cached: a hub lookup can
    take seconds, and every rerun of the page asks."""
    from diet_explore.models.loading import load_config

    try:
        load_config(name)
    except DietError as exc:
        return exc.message, exc.hint
    return None


def run_store() -> RunStore:
    """The run store (``DIET_EXPLORE_RUNS_DIR``, else the library's default)."""
    return RunStore()
