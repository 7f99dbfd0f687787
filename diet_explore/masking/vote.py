"""The DIET vote: per-task keep sets merged into one global mask (and the other score-based merges).

Per task t, keep the top ``keep_count(D, s)`` dims by score (``keep_t``). The DIET merge keeps dim
k iff the weighted share of tasks keeping it reaches the threshold τ:

    Σ_t w_t keep_t[k] ≥ τ · Σ_t w_t        (a 1e-12 tolerance on the share absorbs float summation error)

τ = 0.5 with equal weights is the paper's majority vote (a dim kept by at least half the tasks
survives; an exact half counts). τ = 1 is the intersection of the keep sets. τ = 0 exactly keeps
every dim (0 ≥ 0), so the union is the limit τ → 0+ (any positive τ below the smallest weight
share, e.g. 1e-9). A task with weight 0 is the same as leaving it out.

The vote's kept count depends on how much tasks agree, so its sparsity can differ from the target.
``exact=True`` instead orders dims by vote share (desc), then by the weighted mean of per-task
normalised scores (``normalize``, or ``rank`` when that is ``none``, since raw scores of different
tasks are not comparable), then by index, and keeps exactly ``keep_count(D, s, multiple_of)``; τ is
then unused. ``multiple_of > 1`` without ``exact`` rounds the vote's own kept count to the nearest
multiple (ties up) along that same order.

``merge`` works on (..., T, D) score arrays, so the bootstrap (``stability.py``) runs all resamples
through the same code as ``build_mask`` in one batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from diet_explore.core.errors import DietError
from diet_explore.masking.config import MERGE_METHODS, THRESHOLD_METHODS, VOTE_METHODS  # noqa: F401  (re-exported)
from diet_explore.masking.importance import normalize_scores
from diet_explore.masking.selection import keep_count, ordered_keep, round_keep, top_k_mask

if TYPE_CHECKING:
    from diet_explore.masking.config import MaskConfig

_TOL = 1e-12  # tolerance on vote shares (in [0, 1]) for float summation error


def vote_share(keep: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(..., T, D) bool, (T,) weights -> (..., D) float64 weighted share of tasks keeping each dim."""
    w = np.asarray(weights, dtype=np.float64)
    total = w.sum()
    if not total > 0:
        raise DietError("the task weights sum to 0, so nothing votes", "give at least one task a weight above 0")
    out = np.zeros(keep.shape[:-2] + keep.shape[-1:], dtype=np.float64)
    for t in range(w.shape[0]):  # T is small; avoids a (..., T, D) float copy
        if w[t]:
            out += w[t] * keep[..., t, :]
    return out / total


def task_keep(scores: np.ndarray, sparsity: float) -> np.ndarray:
    """(..., T, D) scores -> (..., T, D) bool: each task keeps its own top ``keep_count(D, s)`` dims
    (the per-task keep sets the vote merges, and what Agreement compares)."""
    return top_k_mask(scores, keep_count(scores.shape[-1], sparsity))


def _weighted_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(..., T, D) -> (..., D) weighted mean over tasks (weights sum > 0)."""
    w = np.asarray(weights, dtype=np.float64)
    return np.tensordot(values, w / w.sum(), axes=([-2], [0]))


def passes_vote(votes: np.ndarray, threshold: float) -> np.ndarray:
    """The vote's rule: keep a dim whose weighted share reaches τ (an exact half counts at τ = 0.5)."""
    return votes >= float(threshold) - _TOL


def merge(scores: np.ndarray, weights: np.ndarray, config: MaskConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The merge core for the score-based methods: (..., T, D) raw scores and (T,) weights ->
    (keep (..., D), votes (..., D), per_task_keep (..., T, D))."""
    d = scores.shape[-1]
    method = config.method
    per_task = task_keep(scores, config.sparsity)  # (..., T, D)
    votes = vote_share(per_task, weights)  # (..., D)
    n_final = keep_count(d, config.sparsity, config.multiple_of)
    if method in VOTE_METHODS:
        active = np.asarray(weights) > 0
        if config.exact or config.multiple_of > 1:
            tb = _weighted_mean(normalize_scores(scores[..., active, :], _tiebreak_norm(config)), np.asarray(weights)[active])
        if config.exact:
            return ordered_keep(votes, tb, n_final), votes, per_task
        if method == "union":  # τ → 0+: any positive weighted share
            keep = votes > _TOL
        else:
            keep = passes_vote(votes, 1.0 if method == "intersection" else config.threshold)
        if config.multiple_of > 1:
            keep = ordered_keep(votes, tb, round_keep(keep.sum(-1), config.multiple_of, d))
        return keep, votes, per_task
    if method == "mean-score":
        return top_k_mask(_weighted_mean(normalize_scores(scores, config.normalize), weights), n_final), votes, per_task
    if method == "borda":
        return top_k_mask(_weighted_mean(normalize_scores(scores, "rank"), weights), n_final), votes, per_task
    if method in ("single-task", "wiki"):
        return top_k_mask(scores[..., 0, :], n_final), votes, per_task
    raise DietError(
        f"method {method!r} is not score-based", f"score-based methods: {', '.join(MERGE_METHODS)}, wiki, leave-one-out"
    )


def _tiebreak_norm(config: MaskConfig) -> str:
    return "rank" if config.normalize == "none" else config.normalize
