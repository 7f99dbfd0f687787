"""Cached loaders and computations: everything a page shows is computed once per input.

The cache is loaded with ``st.cache_data`` keyed on (path, sha256 of manifest.json); the manifest
lists every data file's sha256, so a re-profiled cache gets a new key. The ``ScorePrecompute``
wrapping it (memoised layer aggregation, read-only arrays) is a ``st.cache_resource`` on the same
key, so a slider move does not unpickle the arrays again. Derived results (masks, agreement,
bootstrap) are ``st.cache_data`` on that key plus the settings. Every function body is one library call.

Figures are ``st.cache_resource`` on the same keys (shared, never mutated: ``st.plotly_chart`` only
reads them): building a plotly figure costs a few milliseconds of validation each, and every
rerun of a page used to build all of them again, whatever changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from diet_explore import plots
from diet_explore.core import atomic
from diet_explore.core.errors import DietError
from diet_explore.experiments.proxy import ProxyValidation, describe, sweep_sources, validate_proxies
from diet_explore.experiments.reports import Sweep, load_sweep
from diet_explore.experiments.runs import RunStore
from diet_explore.masking.agreement import AgreementReport, agreement_report, spearman_matrix
from diet_explore.masking.build import MaskConfig, MaskResult, baseline_overlaps, build_mask
from diet_explore.masking.dims import DimCard, dim_card, split_votes
from diet_explore.masking.importance import ScorePrecompute
from diet_explore.masking.massive import MassiveDims, massive_dims
from diet_explore.masking.proxy import mask_proxies
from diet_explore.masking.stability import StabilityResult, bootstrap_masks
from diet_explore.masking.voteview import VoteView, vote_view
from diet_explore.profiling.cache import MANIFEST, MANIFEST_MAX_BYTES, ScoreCache, load_cache


def manifest_sha(path: str) -> str:
    """The cache's key: the hash of its manifest, read as ``read_manifest`` reads it (a FIFO, a link to
    a device or an oversized file is not read at all, a NUL byte in the path not looked up)."""
    try:
        data = atomic.read_regular(Path(path) / MANIFEST, MANIFEST_MAX_BYTES, "manifest")
    except DietError:
        return "unreadable"  # load_cache then raises the DietError that explains it
    return hashlib.sha256(data).hexdigest()[:16]


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


@st.cache_data(show_spinner=False, max_entries=256)
def proxies_for(path: str, sha: str, config_json: str) -> pd.DataFrame:
    """The live proxy of the mask ``config_json`` builds: per task, the share of its activation mass kept (``masking.proxy``)."""
    return pd.DataFrame(mask_proxies(precompute(path, sha), mask_for(path, sha, config_json).keep))


@st.cache_data(show_spinner="Checking the proxy against the committed sweeps…", max_entries=4)
def _proxy_validation(sources: tuple[tuple[str, float], ...]) -> ProxyValidation:
    """``experiments.proxy.validate_proxies`` over docs/results (and DIET_EXPLORE_SWEEP_DIRS), again when a results file changes."""
    return validate_proxies([p for p, _ in sources])


@st.cache_data(show_spinner=False, max_entries=16)
def _proxy_checks(sources: tuple[tuple[str, float], ...], model: str | None) -> dict[str, tuple[bool | None, str]]:
    validation = _proxy_validation(sources)
    return {p: describe(validation, f"{p}@residual", model) for p in ("kept_energy", "kept_mass")}


def proxy_checks(model: str | None) -> dict[str, tuple[bool | None, str]]:
    """Per proxy shown on the Mask builder, ``experiments.proxy.describe``'s (verdict, text) for ``model``."""
    return _proxy_checks(_sources_key(), model)


def _sources_key() -> tuple[tuple[str, float], ...]:
    return tuple((str(p), _mtime(p)) for p in sweep_sources())


def _mtime(path: Path) -> float:
    target = path / "results.jsonl" if path.is_dir() else path
    try:
        return target.stat().st_mtime
    except OSError:
        return 0.0


@st.cache_data(show_spinner="Reading the sweep…", max_entries=16)
def _sweep(path: str, mtime: float) -> Sweep:
    sweep = load_sweep(path)
    sweep.vs_dense(), sweep.versus("diet")  # the paired results, computed once per file version
    return sweep


def sweep_for(path: str | Path) -> Sweep:
    """``experiments.reports.load_sweep`` with its paired results, recomputed when the results file changes
    (a running sweep's folder shows each run as it finishes)."""
    return _sweep(str(path), _mtime(Path(path)))


@st.cache_data(show_spinner=False, max_entries=32)
def massive_for(path: str, sha: str, site: str, layer_agg: str, last_k: int) -> MassiveDims:
    return massive_dims(precompute(path, sha), site, layer_agg, last_k)


@st.cache_data(show_spinner=False, max_entries=64)
def split_votes_for(path: str, sha: str, config_json: str, n: int) -> pd.DataFrame:
    return split_votes(precompute(path, sha), MaskConfig.from_json(config_json), n)


@st.cache_data(show_spinner=False, max_entries=128)
def dim_card_for(path: str, sha: str, config_json: str, dim: int, n_resamples: int) -> DimCard:
    """The dim's card; ``n_resamples`` 0 leaves the bootstrap keep frequency out."""
    config = MaskConfig.from_json(config_json)
    stability = None
    if n_resamples and config.method not in ("random", "magnitude"):
        stability = bootstrap_for(path, sha, config_json, n_resamples)
    return dim_card(precompute(path, sha), config, dim, stability, mask_for(path, sha, config_json))


@st.cache_resource(show_spinner="Loading the dense model…", max_entries=1)
def dense_model(name: str, device: str):
    """(model, tokenizer, info), shared by every session: never mutate it (prune_model copies)."""
    from diet_explore.models.loading import load_model

    return load_model(name, device=device)


def _import_model_libraries(model_type: str | None) -> None:
    # imports only: reading a built-in model's config could convert its weights, which only a page
    # that needs the model may start. A missing library is the page's to report, not this thread's.
    with contextlib.suppress(ImportError):
        from transformers import CONFIG_MAPPING

        import diet_explore.models.loading
        import diet_explore.pruning.saving  # noqa: F401  (torch)

        with contextlib.suppress(KeyError):
            CONFIG_MAPPING[model_type or ""]  # the config class's own module (rope utils, activations, ...)


_WARMING: list[threading.Thread] = []  # every warm-up started in this process (one per model type)


@st.cache_resource(show_spinner=False)
def warm_up(model_type: str | None) -> threading.Thread:
    """Once per server process and model type, import torch, transformers and the model's config
    class in a background thread. The pages in ``settings.MODEL_PAGES`` need them, and importing them
    takes seconds on a small machine: a visitor who reads another page first no longer waits for them there."""
    thread = threading.Thread(target=_import_model_libraries, args=(model_type,), name="diet-explore-warm-up", daemon=True)
    _WARMING.append(thread)
    thread.start()
    return thread


def wait_for_warm_up() -> None:
    """Block until the background imports are done. A page that imports torch or transformers calls
    this first: two threads importing transformers at once can each see the other's half-imported
    module and fail with an ImportError."""
    for thread in list(_WARMING):
        thread.join()


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


# ---------------------------------------------------------------------------------------------- figures
# the Agreement page's figures and its overlap table, one per tab (only the open tab's is built)
@st.cache_data(show_spinner=False, max_entries=64)
def jaccard_table(
    path: str, sha: str, sparsity: float, tasks: tuple[str, ...], site: str, layer_agg: str, last_k: int, fit: bool
) -> plots.HeatTable:
    rep = agreement_for(path, sha, sparsity, tasks, site, layer_agg, last_k)
    return plots.jaccard_table(rep.jaccard.to_numpy(), list(tasks), rep.sparsity, auto_range=fit)


@st.cache_resource(show_spinner=False, max_entries=64)
def vote_matrix_figure(path: str, sha: str, sparsity: float, tasks: tuple[str, ...], site: str, layer_agg: str, last_k: int):
    return plots.vote_matrix(agreement_for(path, sha, sparsity, tasks, site, layer_agg, last_k).prune, list(tasks))


@st.cache_resource(show_spinner=False, max_entries=64)
def upset_figure(path: str, sha: str, sparsity: float, tasks: tuple[str, ...], site: str, layer_agg: str, last_k: int):
    """None when no dim is pruned."""
    rep = agreement_for(path, sha, sparsity, tasks, site, layer_agg, last_k)
    return None if rep.upset.empty else plots.upset_bars(rep.upset, list(tasks))


@st.cache_data(show_spinner=False, max_entries=64)
def vote_view_for(path: str, sha: str, config_json: str) -> VoteView:
    """The vote behind the current mask (``masking.voteview``): what every page shows of the vote."""
    return vote_view(precompute(path, sha), MaskConfig.from_json(config_json), mask_for(path, sha, config_json))


@st.cache_resource(show_spinner=False, max_entries=128)
def vote_histogram_figure(path: str, sha: str, config_json: str):
    view = vote_view_for(path, sha, config_json)
    return plots.vote_histogram(view.prune_votes, view.keep, len(view.tasks), view.config.label())


@st.cache_resource(show_spinner=False, max_entries=64)
def score_curves_figure(path: str, sha: str, site: str, layer_agg: str, last_k: int, n_keep: int):
    return plots.sorted_score_curves(task_scores(path, sha, site, layer_agg, last_k), cutoff_rank=n_keep)


@st.cache_resource(show_spinner=False, max_entries=64)
def layer_heatmap_figure(path: str, sha: str, task: str, site: str, dims: tuple[int, ...], per_dim: bool):
    """Rankings' score-by-layer heatmap of ``dims`` (built once per choice, not on every rerun)."""
    return plots.layer_dim_heatmap(precompute(path, sha).cache.layer_scores(task, site), list(dims), task, per_dim)


@st.cache_resource(show_spinner=False, max_entries=16)
def score_distributions_figure(path: str, sha: str, site: str, layer_agg: str, last_k: int):
    return plots.score_distributions(task_scores(path, sha, site, layer_agg, last_k))


@st.cache_data(show_spinner=False, max_entries=32)
def correlation_table(
    path: str, sha: str, tasks: tuple[str, ...], site: str, layer_agg: str, last_k: int, fit: bool
) -> plots.HeatTable:
    return plots.correlation_table(spearman_for(path, sha, tasks, site, layer_agg, last_k), list(tasks), auto_range=fit)


@st.cache_resource(show_spinner=False, max_entries=64)
def stability_figure(path: str, sha: str, config_json: str, n_resamples: int):
    return plots.stability_histogram(bootstrap_for(path, sha, config_json, n_resamples).keep_frequency)


def task_scores(path: str, sha: str, site: str, layer_agg: str, last_k: int) -> dict[str, np.ndarray]:
    """(D,) aggregated scores of every task and generic set (memoised by ``ScorePrecompute``)."""
    from diet_explore.masking.importance import aggregate_scores

    pre = precompute(path, sha)
    return {t: aggregate_scores(pre, t, site, layer_agg, last_k) for t in pre.cache.tasks}
