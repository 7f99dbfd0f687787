"""Per-task dimension scores: layer aggregation, normalisation, keep counts and top-k selection.

A task's score for hidden dimension k is its mean |activation| (see ``diet_explore.cache``). The
paper averages over layers (``layer_agg="mean"``); ``max`` and ``last_k`` (mean of the last k blocks)
are offered for exploration. Normalisation does not change a task's own ranking; it only matters
when scores of different tasks are averaged (``mean_score`` merge, tie-breaks in exact mode).

``ScorePrecompute`` memoises the aggregated (D,) vectors per (task, site, layer_agg, last_k), so
an app that rebuilds masks on every slider move reduces the (L, D) arrays once, not per call.
Every function here that takes ``cache`` accepts a ``ScoreCache`` or a ``ScorePrecompute``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata

from diet_explore.errors import DietError

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
    if int(last_k) < 1:
        raise DietError(f"last_k must be at least 1, got {last_k}", "pass --last-k 1 or more")
    return layer[-int(last_k):].mean(0)  # last_k > L simply means all layers


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


def unwrap(cache):
    """The underlying ``ScoreCache`` of a cache or a ``ScorePrecompute``."""
    return cache.cache if isinstance(cache, ScorePrecompute) else cache


def aggregate_scores(cache, task: str, site: str = "residual", layer_agg: str = "mean", last_k: int = 4,
                     normalize: str = "none") -> np.ndarray:
    """(D,) float64 score of every hidden dim for ``task`` (the paper: mean over layers, no normalisation)."""
    return normalize_scores(as_precompute(cache).task_scores(task, site, layer_agg, last_k), normalize)


def score_matrix(cache, tasks, site: str = "residual", layer_agg: str = "mean", last_k: int = 4,
                 normalize: str = "none") -> np.ndarray:
    """(T, D) float64 scores, one row per task in ``tasks`` order."""
    return normalize_scores(as_precompute(cache).matrix(list(tasks), site, layer_agg, last_k), normalize)


def check_sparsity(sparsity: float) -> float:
    s = float(sparsity)
    if not (0.0 <= s < 1.0) or math.isnan(s):
        raise DietError(f"sparsity must be in [0, 1), got {sparsity}", "e.g. --sparsity 0.2 prunes 20% of hidden dims")
    return s


def keep_count(hidden_size: int, sparsity: float, multiple_of: int = 1) -> int:
    """How many dims a mask at ``sparsity`` keeps.

    Rule: ``n_prune = floor(s * D + 1e-9)`` (the epsilon absorbs float error such as
    0.3 * 10 = 2.9999999999999996), ``n_keep = D - n_prune``: never prune more than asked, at
    least one dim kept. With ``multiple_of = m > 1`` n_keep is then rounded to the nearest multiple
    of m (ties up) and clamped to [m, D]; this rounding may prune slightly more or less than asked,
    and D itself (no pruning) is allowed even when it is not a multiple of m.
    """
    d = int(hidden_size)
    s = check_sparsity(sparsity)
    m = int(multiple_of)
    if m < 1:
        raise DietError(f"multiple_of must be at least 1, got {multiple_of}", "use 1 (no rounding) or e.g. 8")
    if m > d:
        raise DietError(f"multiple_of {m} exceeds the hidden size {d}", f"use a multiple_of of at most {d}")
    return round_keep(max(1, d - math.floor(s * d + 1e-9)), m, d)


def round_keep(n_keep, multiple_of: int, hidden_size: int):
    """Round a kept count (int, or int array for batches) to the nearest multiple of m (ties up),
    clamped to [m, D]. m <= 1 returns it unchanged."""
    m, d = int(multiple_of), int(hidden_size)
    if m <= 1:
        return n_keep
    rounded = np.clip(((np.asarray(n_keep) + m // 2) // m) * m, m, d)
    return int(rounded) if rounded.ndim == 0 else rounded


def rank_dims(scores: np.ndarray) -> np.ndarray:
    """Dim indices from most to least important; ties go to the lower index (stable sort)."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")


def top_k_mask(scores: np.ndarray, n_keep: int) -> np.ndarray:
    """Bool mask keeping the ``n_keep`` highest scores along the last axis (works on (..., D)).

    Ties at the cut go to the lower index, so ``top_k_mask(s, k)`` equals the first k of
    ``rank_dims(s)``. Uses a partition, not a full sort: O(D) per row.
    """
    s = np.asarray(scores, dtype=np.float64)  # (..., D)
    d = s.shape[-1]
    n = int(n_keep)
    if n >= d:
        return np.ones(s.shape, dtype=bool)
    if n <= 0:
        return np.zeros(s.shape, dtype=bool)
    kth = -np.partition(-s, n - 1, axis=-1)[..., n - 1 : n]  # (..., 1) the n-th largest value
    above = s > kth
    tied = s == kth
    need = n - above.sum(-1, keepdims=True)
    if np.all(tied.sum(-1, keepdims=True) <= need):  # no tie straddles the cut (the usual case)
        return above | tied
    return above | (tied & (np.cumsum(tied, axis=-1) <= need))
