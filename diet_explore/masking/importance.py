"""Per-task dimension importance: layer aggregation and normalisation of the cached scores.

A task's score for hidden dimension k is its mean |activation| (see ``diet_explore.profiling.cache``). The
paper averages over layers (``layer_agg="mean"``); ``max`` and ``last_k`` (mean of the last k blocks)
are offered for exploration. Normalisation does not change a task's own ranking; it only matters
when scores of different tasks are averaged (``mean-score`` merge, tie-breaks in exact mode).

``ScorePrecompute`` memoises the aggregated (D,) vectors per (task, site, layer_agg, last_k), so
an app that rebuilds masks on every slider move reduces the (L, D) arrays once, not per call.
Every function here that takes ``cache`` accepts a ``ScoreCache`` or a ``ScorePrecompute``.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from diet_explore.core.errors import DietError

LAYER_AGGS = ("mean", "max", "last_k")
NORMALIZATIONS = ("none", "zscore", "rank", "sum")


def check_choice(kind: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise DietError(f"unknown {kind} {value!r}", f"choose one of {', '.join(options)}")


def aggregate_layers(layer: np.ndarray, layer_agg: str = "mean", last_k: int = 4) -> np.ndarray:
    """(L, D) per-layer scores -> (D,) float64."""
    check_choice("layer aggregation", layer_agg, LAYER_AGGS)
    layer = np.asarray(layer, dtype=np.float64)  # (L, D)
    if layer_agg == "mean":
        return layer.mean(0)
    if layer_agg == "max":
        return layer.max(0)
    n_layers = layer.shape[0]
    if not 1 <= int(last_k) <= n_layers:  # more than L would be reported as "the last 999 layers"
        raise DietError(
            f"--last-k must be 1 to the {n_layers} layers this cache has, got {last_k}",
            f"pass --last-k between 1 and {n_layers}",
        )
    return layer[-int(last_k) :].mean(0)


def normalize_scores(scores: np.ndarray, normalize: str = "none") -> np.ndarray:
    """Normalise along the last axis (dims), so tasks become comparable; float64 out.

    ``sum``: divide by the sum (dims sum to 1); ``rank``: average rank / (D - 1) in [0, 1], the
    highest score gets 1; ``zscore``: (x - mean) / std (a constant row gives 0).
    """
    check_choice("normalization", normalize, NORMALIZATIONS)
    s = np.asarray(scores, dtype=np.float64)  # (..., D)
    if normalize == "none":
        return s.copy()
    if normalize == "sum":
        total = s.sum(-1, keepdims=True)
        return s / np.where(total == 0, 1.0, total)
    if normalize == "rank":
        d = s.shape[-1]
        return (rankdata(s, axis=-1) - 1.0) / max(d - 1, 1)
    std = s.std(-1, keepdims=True)
    return (s - s.mean(-1, keepdims=True)) / np.where(std == 0, 1.0, std)


class ScorePrecompute:
    """A cache plus memoised aggregated scores. Hold one per loaded cache (e.g. in the app's
    ``st.cache_resource``); it never mutates the cache. Returned arrays are read-only."""

    def __init__(self, cache):
        self.cache = cache
        self._memo: dict[tuple, np.ndarray] = {}

    def task_scores(self, task: str, site: str = "residual", layer_agg: str = "mean", last_k: int = 4) -> np.ndarray:
        """(D,) float64 aggregated raw scores of one task."""
        key = ("task", task, site, layer_agg, int(last_k) if layer_agg == "last_k" else 0)
        if key not in self._memo:
            arr = aggregate_layers(self.cache.layer_scores(task, site), layer_agg, last_k)
            arr.setflags(write=False)
            self._memo[key] = arr
        return self._memo[key]

    def matrix(self, tasks, site: str = "residual", layer_agg: str = "mean", last_k: int = 4) -> np.ndarray:
        """(T, D) float64 raw scores of ``tasks`` in the given order."""
        key = ("matrix", tuple(tasks), site, layer_agg, int(last_k) if layer_agg == "last_k" else 0)
        if key not in self._memo:
            d = self.cache.hidden_size
            arr = np.stack([self.task_scores(t, site, layer_agg, last_k) for t in tasks]) if tasks else np.zeros((0, d))
            arr.setflags(write=False)
            self._memo[key] = arr
        return self._memo[key]


def as_precompute(cache) -> ScorePrecompute:
    return cache if isinstance(cache, ScorePrecompute) else ScorePrecompute(cache)


def aggregate_scores(
    cache, task: str, site: str = "residual", layer_agg: str = "mean", last_k: int = 4, normalize: str = "none"
) -> np.ndarray:
    """(D,) float64 score of every hidden dim for ``task`` (the paper: mean over layers, no normalisation)."""
    return normalize_scores(as_precompute(cache).task_scores(task, site, layer_agg, last_k), normalize)


def score_matrix(
    cache, tasks, site: str = "residual", layer_agg: str = "mean", last_k: int = 4, normalize: str = "none"
) -> np.ndarray:
    """(T, D) float64 scores, one row per task in ``tasks`` order."""
    return normalize_scores(as_precompute(cache).matrix(list(tasks), site, layer_agg, last_k), normalize)
