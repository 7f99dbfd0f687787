"""Building one mask: the ``MaskResult`` a ``MaskConfig`` (``config.py``) gives, and ``build_mask``,
which dispatches to the vote (``vote.py``) or a baseline (``baselines.py``). Per-task scores come from ``importance.py``, counts and top-k from
``selection.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diet_explore.core.errors import DietError
from diet_explore.masking import baselines
from diet_explore.masking.config import (  # noqa: F401  (re-exported: MaskConfig's home was this module)
    NOT_A_MASK_HINT,
    NOT_MASKS,
    MaskConfig,
    check_mask_method,
    parse_weights,
)
from diet_explore.masking.importance import as_precompute
from diet_explore.masking.selection import jaccard, keep_count
from diet_explore.masking.vote import merge


@dataclass(frozen=True)
class MaskResult:
    """A built mask and how it came about. Arrays are read-only."""

    keep: np.ndarray  # (D,) bool, True = kept
    config: MaskConfig
    tasks: list[str]  # voting tasks (the generic set for wiki; empty for random/magnitude)
    weights: np.ndarray  # (T,)
    votes: np.ndarray  # (D,) weighted share of tasks keeping each dim, in [0, 1] (the mask itself when T = 0)
    per_task_keep: np.ndarray  # (T, D) bool

    def __post_init__(self) -> None:
        for arr in (self.keep, self.weights, self.votes, self.per_task_keep):
            arr.setflags(write=False)

    @property
    def n_keep(self) -> int:
        return int(self.keep.sum())

    @property
    def hidden_size(self) -> int:
        return int(self.keep.shape[0])

    @property
    def sparsity(self) -> float:
        """Actual fraction pruned (a vote's may differ from ``config.sparsity``)."""
        return 1.0 - self.n_keep / self.hidden_size

    @property
    def kept_indices(self) -> np.ndarray:
        return np.flatnonzero(self.keep)


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------
def build_mask(cache, config: MaskConfig) -> MaskResult:
    """Build the mask ``config`` describes. ``cache``: a ``ScoreCache`` or a ``ScorePrecompute``
    (reuse one across calls so layer aggregation runs once per (task, site, agg))."""
    pre = as_precompute(cache)
    c = pre.cache
    config.validate(c)
    d = c.hidden_size
    tasks, weights = config.voting_tasks(c)
    if config.method in ("random", "magnitude"):
        n = keep_count(d, config.sparsity, config.multiple_of)
        keep = baselines.random_keep(d, n, config.seed) if config.method == "random" else baselines.magnitude_keep(c, n)
        return MaskResult(keep, config, [], np.zeros(0), keep.astype(np.float64), np.zeros((0, d), dtype=bool))
    scores = pre.matrix(tasks, config.site, config.layer_agg, config.last_k)  # (T, D)
    keep, votes, per_task = merge(scores, weights, config)
    if not keep.any():  # e.g. an intersection of disjoint keep sets: no model can have zero hidden dims
        raise DietError(
            f"the {config.method} mask keeps no dimension (sparsity {config.sparsity:g}, τ {config.threshold:g})",
            "lower the sparsity or τ, or use --exact to keep the target count",
        )
    return MaskResult(keep, config, list(tasks), weights, votes, per_task)


def paper_default(cache, sparsity: float) -> MaskResult:
    """The paper's DIET mask: equal weights, τ = 0.5, mean over layers, residual stream."""
    return build_mask(cache, MaskConfig(sparsity=sparsity))


def mask_overlap(a: np.ndarray, b: np.ndarray) -> dict:
    """Compare two (D,) keep masks: Jaccard of kept sets and of pruned sets (1.0 when both are
    empty), dims that differ, and dims kept only by one side."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise DietError(f"masks have different sizes {a.shape} and {b.shape}", "compare masks of the same model")
    return {
        "jaccard_kept": jaccard(a, b),
        "jaccard_pruned": jaccard(~a, ~b),
        "n_diff": int((a != b).sum()),
        "only_a": int((a & ~b).sum()),
        "only_b": int((b & ~a).sum()),
    }


def baseline_overlaps(cache, config: MaskConfig) -> list[dict]:
    """How the mask ``config`` builds compares with the paper's default mask at the same sparsity
    and with each baseline at the same kept count: one row per comparison (kept count, Jaccard of
    kept and of pruned sets, dims that differ; ``note`` says why a baseline could not be built)."""
    pre = as_precompute(cache)
    result = build_mask(pre, config)
    same_count = 1.0 - result.n_keep / result.hidden_size  # keep_count(d, same_count) == result.n_keep
    # the paper scores the residual stream; a cache profiled without it is compared at its own site
    site = "residual" if "residual" in pre.cache.sites else config.site
    candidates = {"paper default (τ=0.5, equal weights)": MaskConfig(sparsity=config.sparsity, site=site)}
    candidates |= {b: MaskConfig(method=b, sparsity=same_count, seed=config.seed) for b in ("random", "magnitude", "wiki")}
    rows = []
    for name, cfg in candidates.items():
        try:
            other = build_mask(pre, cfg)
        except DietError as exc:
            rows.append(
                {
                    "compared with": name,
                    "kept": None,
                    "jaccard_kept": None,
                    "jaccard_pruned": None,
                    "n_diff": None,
                    "note": exc.message,
                }
            )
            continue
        ov = mask_overlap(result.keep, other.keep)
        rows.append(
            {
                "compared with": name,
                "kept": other.n_keep,
                "jaccard_kept": round(ov["jaccard_kept"], 4),
                "jaccard_pruned": round(ov["jaccard_pruned"], 4),
                "n_diff": ov["n_diff"],
                "note": "",
            }
        )
    return rows
