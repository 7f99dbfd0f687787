"""Massive-activation dims: the few hidden dims whose activations are far above all the others.

Such dims are known from the literature (Sun et al. 2024, "Massive Activations in Large Language
Models"): a handful of residual-stream dims carry values orders of magnitude above the median,
mostly at a few tokens such as the first one. In a DIET score (mean |activation| over tokens) they
are diluted but still stand out: on SmolLM2-135M, dim 507 scores 42-175x the median dim.

The rule, used everywhere a dim is flagged (Rankings, the dimension inspector, the mask summary,
``diet-explore dim``): for each task, divide every dim's score by the median score over all dims of
that task; a dim's *massive ratio* is the median of those ratios over the tasks; a dim is massive
when its ratio is at least ``MASSIVE_FACTOR`` (10). Medians twice: the outliers cannot move the
reference they are measured against, and one task alone cannot flag a dim.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diet_explore.masking.importance import as_precompute

MASSIVE_FACTOR = 10.0


def massive_ratio(scores: np.ndarray) -> np.ndarray:
    """(T, D) or (D,) scores -> (D,) float64: the median over tasks of score / the task's median
    dim score. A task whose median score is 0 has no scale and is left out (all of them: zeros)."""
    s = np.atleast_2d(np.asarray(scores, dtype=np.float64))  # (T, D)
    med = np.median(s, axis=1)  # (T,)
    ok = med > 0
    if not ok.any():
        return np.zeros(s.shape[1])
    return np.median(s[ok] / med[ok, None], axis=0)


def is_massive(ratio: np.ndarray | float) -> np.ndarray | bool:
    """The flag: a massive ratio of at least ``MASSIVE_FACTOR``."""
    out = np.asarray(ratio) >= MASSIVE_FACTOR
    return bool(out) if out.ndim == 0 else out


@dataclass(frozen=True)
class MassiveDims:
    """The rule applied to one cache at one site and layer aggregation."""

    ratio: np.ndarray  # (D,) massive ratio of every dim
    tasks: list[str]  # the tasks whose scores it used
    site: str

    @property
    def flagged(self) -> np.ndarray:
        """(D,) bool."""
        return is_massive(self.ratio)

    @property
    def dims(self) -> list[int]:
        """The flagged dims, highest ratio first."""
        idx = np.flatnonzero(self.flagged)
        return [int(i) for i in idx[np.argsort(-self.ratio[idx], kind="stable")]]


def massive_dims(cache, site: str = "residual", layer_agg: str = "mean", last_k: int = 4) -> MassiveDims:
    """The massive dims of a cache (a ``ScoreCache`` or ``ScorePrecompute``), judged on its
    evaluation tasks' scores (its generic sets when it has no evaluation task), whatever their
    weights in a mask: a property of the model, not of one mask."""
    pre = as_precompute(cache)
    tasks = pre.cache.task_names or pre.cache.generic_names
    return MassiveDims(massive_ratio(pre.matrix(tasks, site, layer_agg, last_k)), list(tasks), site)
