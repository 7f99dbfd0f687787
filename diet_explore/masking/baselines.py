"""Baseline masks that DIET is compared against, at the same kept count.

``random``: a seeded uniform draw; ``magnitude``: the cache's task-agnostic ``weight_magnitude``
array; ``wiki``: the top-k of the generic calibration text (e.g. ``wikitext``), i.e. the same
scoring as DIET without any task data. (``leave-one-out`` is a DIET vote without one task, so it
lives in ``vote.py`` with the vote.)
"""

from __future__ import annotations

import numpy as np

from diet_explore.core.errors import DietError
from diet_explore.masking.config import BASELINE_METHODS, TASKLESS_METHODS, generic_task  # noqa: F401  (re-exported)
from diet_explore.masking.selection import top_k_mask


def random_keep(hidden_size: int, n_keep: int, seed: int = 0) -> np.ndarray:
    """(D,) bool with exactly ``n_keep`` dims drawn uniformly without replacement; same seed, same mask."""
    keep = np.zeros(int(hidden_size), dtype=bool)
    keep[np.random.default_rng(int(seed)).choice(int(hidden_size), size=int(n_keep), replace=False)] = True
    return keep


def magnitude_keep(cache, n_keep: int) -> np.ndarray:
    """(D,) bool keeping the dims with the largest weight magnitude (cache baseline array)."""
    if "weight_magnitude" not in cache.baselines:
        raise DietError(
            f"the cache {cache.path or cache.model_name} has no 'weight_magnitude' baseline array",
            "re-run `diet-explore profile` (it writes baselines.safetensors), or choose another method",
        )
    return top_k_mask(cache.baselines["weight_magnitude"], n_keep)
