"""Selecting dimensions: how many a sparsity keeps, which ones a score keeps, and set overlaps.

These are the rules every mask shares (DIET, its variants and the baselines): ``keep_count``'s
rounding, top-k with ties to the lower index, the vote-then-tiebreak order of exact masks, and the
Jaccard index of kept or pruned sets.
"""

from __future__ import annotations

import math

import numpy as np

from diet_explore.core.errors import DietError

_DIGITS = 12  # ordering keys are rounded so that float summation order cannot reorder ties


def check_sparsity(sparsity: float) -> float:
    s = float(sparsity)
    if not (0.0 <= s < 1.0) or math.isnan(s):
        raise DietError(f"sparsity must be in [0, 1), got {sparsity}", "e.g. --sparsity 0.2 prunes 20% of hidden dims")
    return s + 0.0  # -0.0 + 0.0 is 0.0: "-0" would be printed as "at sparsity -0"


def check_multiple_of(multiple_of, hidden_size: int | None = None) -> int:
    """The kept-count multiple (``--multiple-of``): at least 1 and, with the hidden size known, at most it."""
    m = int(multiple_of)
    if m < 1:
        raise DietError(f"--multiple-of must be at least 1, got {multiple_of}", "use --multiple-of 1 (no rounding) or e.g. 8")
    if hidden_size is not None and m > hidden_size:
        raise DietError(
            f"--multiple-of {m} exceeds the hidden size {hidden_size}", f"use a --multiple-of of at most {hidden_size}"
        )
    return m


def keep_count(hidden_size: int, sparsity: float, multiple_of: int = 1) -> int:
    """How many dims a mask at ``sparsity`` keeps.

    Rule: ``n_prune = floor(s * D + 1e-9)`` (the epsilon absorbs float error such as
    0.57 * 100 = 56.99999999999999), ``n_keep = D - n_prune``: never prune more than asked, at
    least one dim kept. With ``multiple_of = m > 1`` n_keep is then rounded to the nearest multiple
    of m (ties up) and clamped to [m, D]; this rounding may prune slightly more or less than asked,
    and D itself (no pruning) is allowed even when it is not a multiple of m.
    """
    d = int(hidden_size)
    s = check_sparsity(sparsity)
    m = check_multiple_of(multiple_of, d)
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


def ordered_keep(votes: np.ndarray, tiebreak: np.ndarray, n_keep) -> np.ndarray:
    """Keep the first ``n_keep`` dims ordered by votes desc, tiebreak desc, index asc.
    (..., D) inputs; ``n_keep`` an int or a (...,) int array (one per batch row)."""
    v = np.round(votes, _DIGITS)
    tb = np.round(tiebreak, _DIGITS)
    idx = np.broadcast_to(np.arange(v.shape[-1]), v.shape)
    order = np.lexsort((idx, -tb, -v), axis=-1)  # (..., D) dims in keep order
    keep = np.zeros(v.shape, dtype=bool)
    position = np.arange(v.shape[-1]) < np.asarray(n_keep)[..., None]  # (..., D) first n positions
    np.put_along_axis(keep, order, np.broadcast_to(position, v.shape), axis=-1)
    return keep


def jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray | float:
    """|A ∩ B| / |A ∪ B| of bool sets along the last axis (dims), broadcasting over leading axes:
    two (D,) masks give a float, (R, D) vs (D,) one value per row, (T, 1, D) vs (1, T, D) a (T, T)
    matrix. Two empty sets are identical: 1.0."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    inter = (a & b).sum(-1)
    union = (a | b).sum(-1)
    out = np.where(union == 0, 1.0, inter / np.maximum(union, 1))
    return float(out) if out.ndim == 0 else out
