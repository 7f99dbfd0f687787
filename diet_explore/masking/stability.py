"""How stable is a mask under a different draw of calibration samples? (The paper has no error bars.)

Each resample draws, per task, calibration samples (with replacement for the bootstrap, without for
the sample-count curve), scores dims by the mean of those samples' scores, and rebuilds the mask
with the same merge code as ``build_mask``, all resamples at once: the resampled means are a
(R, N) sample-weight matrix @ the task's (N, D) per-sample scores, and per-task top-k is a
partition over (R, T, D).

Per-sample scores are averaged over layers (``cache.sample_scores``), so only ``layer_agg="mean"``
is resampled exactly. For ``max``/``last_k`` each dim's resampled mean is rescaled by
(full-sample aggregated score / full-sample mean): an approximation that is exact for the full
sample and carries the sampling noise multiplicatively. Resampled masks are compared with the
full-sample mask (``build_mask(cache, config)``) by the Jaccard index of their pruned sets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from diet_explore.core.errors import DietError
from diet_explore.masking.build import MaskConfig, build_mask
from diet_explore.masking.importance import as_precompute
from diet_explore.masking.selection import jaccard
from diet_explore.masking.vote import merge

UNSTABLE_LOW, UNSTABLE_HIGH = 0.05, 0.95  # keep frequency strictly between these: an unstable dim
WeightFn = Callable[[np.random.Generator, int], np.ndarray]  # (rng, N) -> (R, N) row-stochastic


@dataclass(frozen=True)
class StabilityResult:
    keep_frequency: np.ndarray  # (D,) fraction of resamples that keep each dim
    jaccard_to_full: np.ndarray  # (R,) Jaccard of each resample's pruned set vs the full-sample mask's
    mean_jaccard: float
    n_resamples: int
    n_samples: int  # samples drawn per task per resample (the smallest task's N when not given)
    notes: list[str] = field(default_factory=list)

    @property
    def std_jaccard(self) -> float:
        return float(self.jaccard_to_full.std())

    @property
    def unstable(self) -> np.ndarray:
        """(D,) bool: dims kept in more than 5% and fewer than 95% of the resamples."""
        return (self.keep_frequency > UNSTABLE_LOW) & (self.keep_frequency < UNSTABLE_HIGH)

    @property
    def n_stable(self) -> int:
        """Dims kept in every resample or in none."""
        return int(((self.keep_frequency == 0) | (self.keep_frequency == 1)).sum())


def _check_method(config: MaskConfig) -> None:
    if config.method in ("random", "magnitude"):
        raise DietError(
            f"method {config.method!r} uses no calibration samples, so there is nothing to resample",
            "bootstrap a score-based method such as diet",
        )


def _resamples(n_resamples: int, cache, tasks: list[str]) -> int:
    """``n_resamples`` as an int, refused when below 1 or when the resampled arrays would not fit in
    the free memory (refused before anything is allocated, not by numpy's MemoryError half-way)."""
    r = int(n_resamples)
    if r < 1:
        raise DietError(
            f"the number of resamples must be at least 1, got {n_resamples}", "e.g. 200 (--resamples, --curve-resamples)"
        )
    need_one = resample_bytes(cache, tasks)
    free = _free_memory()
    if r * need_one > free * MEMORY_SHARE:
        fits = max(int(free * MEMORY_SHARE // need_one), 0)
        raise DietError(
            f"{r:,} resamples of {len(tasks)} task(s) × {cache.hidden_size} dims need about "
            f"{r * need_one / 2**30:,.1f} GiB of memory, but {free / 2**30:.1f} GiB is free",
            f"use at most {fits:,} resamples (--resamples, --curve-resamples); 200 is plenty for a mean Jaccard",
        )
    return r


MEMORY_SHARE = 0.5  # the resampled arrays may take at most this share of the free memory


def resample_bytes(cache, tasks: list[str]) -> int:
    """Bytes one resample needs at the peak of ``_resampled_keep``: per task the sample weights and
    their index draw (N), then the (T, D) scores, the top-k partition of them and a normalised copy."""
    n = max(cache.tasks[t].n_samples for t in tasks) if tasks else 1
    return 8 * (3 * n * max(len(tasks), 1) + 4 * max(len(tasks), 1) * cache.hidden_size + cache.hidden_size)


def _free_memory() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


def _voters(c, config: MaskConfig) -> tuple[list[str], np.ndarray]:
    """The voting tasks with a weight above 0, and their weights. A weight-0 task does not vote, so
    it is not resampled either: otherwise it would draw from the shared random stream and shift
    every later task's resamples, and weight 0 would give other numbers than leaving the task out."""
    tasks, weights = config.voting_tasks(c)
    voting = weights > 0
    return [t for t, v in zip(tasks, voting, strict=True) if v], weights[voting]


def _resampled_keep(pre, config: MaskConfig, weight_fn: WeightFn, seed: int) -> np.ndarray:
    """(R, D) keep masks, one per row of the per-task sample-weight matrices."""
    c = pre.cache
    tasks, weights = _voters(c, config)
    rng = np.random.default_rng(int(seed))
    rows = []
    for t in tasks:
        x = np.asarray(c.sample_scores(t, config.site), dtype=np.float32)  # (N, D)
        w = weight_fn(rng, x.shape[0]).astype(np.float32)  # (R, N)
        means = (w @ x).astype(np.float64)  # (R, D)
        if config.layer_agg != "mean":
            full_mean = x.astype(np.float64).mean(0)
            agg = pre.task_scores(t, config.site, config.layer_agg, config.last_k)
            means *= agg / np.where(full_mean == 0, 1.0, full_mean)
        rows.append(means)
    scores = np.stack(rows, axis=1)  # (R, T, D)
    keep, _, _ = merge(scores, weights, config)
    return keep


def _sample_sizes(c, tasks: list[str]) -> int:
    return min(c.tasks[t].n_samples for t in tasks)


def bootstrap_masks(
    cache, config: MaskConfig, n_resamples: int = 200, seed: int = 0, n_samples: int | None = None
) -> StabilityResult:
    """Resample each task's calibration samples with replacement (``n_samples`` per task, default
    each task's own N) ``n_resamples`` times and rebuild the mask; same seed, same result."""
    pre = as_precompute(cache)
    config.validate(pre.cache)
    _check_method(config)
    tasks, _ = _voters(pre.cache, config)
    r = _resamples(n_resamples, pre.cache, tasks)
    if n_samples is not None and int(n_samples) < 1:
        raise DietError(f"n_samples must be at least 1, got {n_samples}", "leave it unset to use every sample")

    def draw(rng: np.random.Generator, n_total: int) -> np.ndarray:
        n = n_total if n_samples is None else int(n_samples)
        idx = rng.integers(0, n_total, size=(r, n)) + n_total * np.arange(r)[:, None]  # (R, n) flat indices
        return np.bincount(idx.ravel(), minlength=r * n_total).reshape(r, n_total) / n  # (R, N) counts / n

    keep = _resampled_keep(pre, config, draw, seed)  # (R, D)
    full = build_mask(pre, config).keep
    jac = jaccard(~keep, ~full)
    n_used = int(n_samples) if n_samples is not None else _sample_sizes(pre.cache, tasks)
    notes = (
        [] if config.layer_agg == "mean" else [f"layer_agg {config.layer_agg!r} is resampled approximately (see stability.py)"]
    )
    if full.all():  # two empty pruned sets have Jaccard 1 (selection.jaccard): a perfect score that says nothing
        notes.append(
            f"sparsity {config.sparsity:g} prunes no dim, so every pruned set is empty and the Jaccard of 1.0 means nothing"
        )
    return StabilityResult(keep.mean(0), jac, float(jac.mean()), r, n_used, notes)


def sample_count_curve(cache, config: MaskConfig, counts=(10, 25, 50, 100), n_resamples: int = 50, seed: int = 0) -> pd.DataFrame:
    """Jaccard of masks from ``n`` calibration samples per task (drawn without replacement) vs the
    full-sample mask: columns ``n``, ``mean_jaccard``, ``std_jaccard``. Counts above the smallest
    task's sample count are skipped, with a note in ``df.attrs["notes"]``."""
    pre = as_precompute(cache)
    config.validate(pre.cache)
    _check_method(config)
    tasks, _ = _voters(pre.cache, config)
    available = _sample_sizes(pre.cache, tasks)
    r = _resamples(n_resamples, pre.cache, tasks)
    full = build_mask(pre, config).keep
    rows, notes = [], []
    for n in sorted({int(k) for k in counts}):
        if n < 1 or n > available:
            notes.append(f"skipped n={n}: the tasks have {available} samples (the smallest task)")
            continue

        def draw(rng: np.random.Generator, n_total: int, n=n) -> np.ndarray:
            chosen = np.argsort(rng.random((r, n_total)), axis=1)[:, :n]  # (R, n) without replacement
            w = np.zeros((r, n_total))
            np.put_along_axis(w, chosen, 1.0 / n, axis=1)
            return w

        jac = jaccard(~_resampled_keep(pre, config, draw, seed), ~full)
        rows.append({"n": n, "mean_jaccard": float(jac.mean()), "std_jaccard": float(jac.std())})
    df = pd.DataFrame(rows, columns=["n", "mean_jaccard", "std_jaccard"])
    df.attrs["notes"] = notes
    return df
