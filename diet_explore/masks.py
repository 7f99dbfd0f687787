"""Merging per-task keep sets into one global mask: the DIET vote, its variants and baselines.

Per task t, keep the top ``keep_count(D, s)`` dims by score (``keep_t``). The DIET merge keeps dim
k iff the weighted share of tasks keeping it reaches the threshold τ:

    Σ_t w_t keep_t[k] ≥ τ · Σ_t w_t        (a 1e-12 tolerance on the share absorbs float summation error)

τ = 0.5 with equal weights is the paper's majority vote (a dim kept by at least half the tasks
survives; an exact half counts). τ = 1 is the intersection of the keep sets. τ = 0 exactly keeps
every dim (0 ≥ 0), so the union is the limit τ → 0+ (any positive τ below the smallest weight
share, e.g. 1e-9). A task with weight 0 is the same as leaving it out.

The vote's kept count depends on how much tasks agree, so its sparsity can differ from the target;
``MaskResult.sparsity`` reports the real one. ``exact=True`` instead orders dims by vote share
(desc), then by the weighted mean of per-task normalised scores (``normalize``, or ``rank`` when
that is ``none``, since raw scores of different tasks are not comparable), then by index, and
keeps exactly ``keep_count(D, s, multiple_of)``; τ is then unused. ``multiple_of > 1`` without
``exact`` rounds the vote's own kept count to the nearest multiple (ties up) along that same order.

The merge core works on (..., T, D) score arrays, so the bootstrap (``stability.py``) runs all
resamples through the same code in one batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from diet_explore import baselines
from diet_explore.cache import SITES
from diet_explore.config import JsonConfig
from diet_explore.errors import DietError
from diet_explore.scores import (
    LAYER_AGGS,
    NORMALIZATIONS,
    as_precompute,
    check_choice,
    check_sparsity,
    keep_count,
    normalize_scores,
    round_keep,
    top_k_mask,
)

MERGE_METHODS = ("diet", "mean_score", "borda", "union", "intersection", "single")
BASELINE_METHODS = ("random", "magnitude", "wiki", "leave_one_out")
VOTE_METHODS = ("diet", "leave_one_out", "union", "intersection")  # τ / exact / multiple_of act on the vote
_TOL = 1e-12  # tolerance on vote shares (in [0, 1]) for float summation error
_DIGITS = 12  # ordering keys are rounded so that float summation order cannot reorder ties


@dataclass
class MaskConfig(JsonConfig):
    """Everything that determines a mask (besides the cache). Checked on construction; checks
    that need the cache (task names, site present, baselines) are in ``validate``."""

    sparsity: float = 0.2  # target fraction of hidden dims pruned, in [0, 1)
    threshold: float = 0.5  # τ: keep a dim when ≥ τ of the total task weight keeps it
    weights: dict[str, float] = field(default_factory=dict)  # task -> weight ≥ 0; missing task = 1.0
    tasks: list[str] | None = None  # tasks that vote; None = every evaluation task in the cache
    method: str = "diet"  # one of MERGE_METHODS + BASELINE_METHODS
    site: str = "residual"
    layer_agg: str = "mean"  # mean over layers is the paper's score
    last_k: int = 4  # layers averaged by layer_agg="last_k"
    normalize: str = "none"  # per-task normalisation for mean_score and exact-mode tie-breaks
    exact: bool = False  # keep exactly keep_count(D, s, multiple_of) dims instead of the vote's count
    multiple_of: int = 1  # round the kept count to a multiple of this (e.g. 8 for GPU-friendly shapes)
    seed: int = 0  # random baseline
    single_task: str | None = None  # method "single": whose top-k
    held_out_task: str | None = None  # method "leave_one_out": the task left out of the vote

    def __post_init__(self) -> None:
        self.sparsity = check_sparsity(self.sparsity)
        self.threshold = float(self.threshold)
        if not 0.0 <= self.threshold <= 1.0:
            raise DietError(f"threshold must be in [0, 1], got {self.threshold}", "0.5 is the paper's majority vote")
        check_choice("method", self.method, MERGE_METHODS + BASELINE_METHODS)
        check_choice("site", self.site, SITES)
        check_choice("layer aggregation", self.layer_agg, LAYER_AGGS)
        check_choice("normalization", self.normalize, NORMALIZATIONS)
        self.last_k, self.multiple_of, self.seed = int(self.last_k), int(self.multiple_of), int(self.seed)
        if self.last_k < 1:
            raise DietError(f"last_k must be at least 1, got {self.last_k}", "e.g. last_k=4")
        if self.multiple_of < 1:
            raise DietError(f"multiple_of must be at least 1, got {self.multiple_of}", "use 1 (no rounding) or e.g. 8")
        self.weights = {str(t): float(w) for t, w in dict(self.weights).items()}
        for t, w in self.weights.items():
            if not math.isfinite(w) or w < 0:
                raise DietError(f"weight of task {t!r} is {w}; weights must be finite and ≥ 0", "use 0 to leave a task out")
        if self.tasks is not None:
            self.tasks = [str(t) for t in self.tasks]
            if not self.tasks:
                raise DietError("tasks is an empty list", "list at least one task, or None for all tasks")
            dup = sorted({t for t in self.tasks if self.tasks.count(t) > 1})
            if dup:
                raise DietError(f"task(s) listed twice: {', '.join(dup)}", "list each task once")
        self.exact = bool(self.exact)

    def validate(self, cache) -> None:
        """Checks against a cache: tasks, weight names, site, and what the method needs."""
        known = list(cache.tasks)
        hint = f"this cache has {', '.join(known)}"
        for t in (self.tasks or []):
            if t not in cache.tasks:
                raise DietError(f"task {t!r} is not in this cache", hint)
        for t in self.weights:
            if t not in cache.tasks:
                raise DietError(f"weight given for unknown task {t!r}", hint)
        if self.site not in cache.sites:
            raise DietError(f"site {self.site!r} was not profiled in this cache", f"choose one of {', '.join(cache.sites)}")
        if self.multiple_of > cache.hidden_size:
            raise DietError(f"multiple_of {self.multiple_of} exceeds the hidden size {cache.hidden_size}", "use a smaller multiple")
        tasks, weights = self.voting_tasks(cache)
        if self.method in ("random", "magnitude", "wiki"):
            return
        if not weights.sum() > 0:
            raise DietError(f"every voting task ({', '.join(tasks)}) has weight 0", "give at least one task a weight above 0")

    def voting_tasks(self, cache) -> tuple[list[str], np.ndarray]:
        """(tasks, weights (T,)) that take part in this method's vote, in config order.
        Weights for cache tasks that are not voting are ignored."""
        tasks = list(self.tasks) if self.tasks is not None else list(cache.task_names)
        if self.method == "single":
            task = self.single_task or (tasks[0] if len(tasks) == 1 else None)
            if task is None or task not in cache.tasks:
                raise DietError(f"method 'single' needs single_task, one of the cache's tasks (got {self.single_task!r})",
                                f"set single_task to one of {', '.join(cache.tasks)}")
            return [task], np.ones(1)
        if self.method == "leave_one_out":
            if self.held_out_task not in tasks:
                raise DietError(f"method 'leave_one_out' needs held_out_task among the voting tasks (got {self.held_out_task!r})",
                                f"set held_out_task to one of {', '.join(tasks)}")
            tasks = [t for t in tasks if t != self.held_out_task]
            if not tasks:
                raise DietError(f"leaving out {self.held_out_task!r} leaves no task to vote", "select at least two tasks")
        if self.method == "wiki":
            return [baselines.generic_task(cache)], np.ones(1)
        if self.method in ("random", "magnitude"):
            return [], np.zeros(0)
        return tasks, np.array([self.weights.get(t, 1.0) for t in tasks], dtype=np.float64)


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
# Vote primitives (work on (..., T, D))
# --------------------------------------------------------------------------------------------
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


def weighted_vote(keep: np.ndarray, weights: np.ndarray, threshold: float) -> np.ndarray:
    """Keep k iff Σ_t w_t keep_t[k] ≥ τ Σ_t w_t (tolerance 1e-12 on the share). (T, D) -> (D,) bool.

    τ = 0.5 with equal weights: majority (count ≥ T/2). τ = 1: intersection. τ → 0+: union
    (τ = 0 exactly keeps every dim)."""
    return vote_share(np.asarray(keep, dtype=bool), weights) >= float(threshold) - _TOL


def _weighted_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(..., T, D) -> (..., D) weighted mean over tasks (weights sum > 0)."""
    w = np.asarray(weights, dtype=np.float64)
    return np.tensordot(values, w / w.sum(), axes=([-2], [0]))


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


def merge(scores: np.ndarray, weights: np.ndarray, config: MaskConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The merge core for the score-based methods: (..., T, D) raw scores and (T,) weights ->
    (keep (..., D), votes (..., D), per_task_keep (..., T, D))."""
    d = scores.shape[-1]
    method = config.method
    per_task = top_k_mask(scores, keep_count(d, config.sparsity))  # (..., T, D)
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
            keep = votes >= (1.0 if method == "intersection" else config.threshold) - _TOL
        if config.multiple_of > 1:
            keep = ordered_keep(votes, tb, round_keep(keep.sum(-1), config.multiple_of, d))
        return keep, votes, per_task
    if method == "mean_score":
        return top_k_mask(_weighted_mean(normalize_scores(scores, config.normalize), weights), n_final), votes, per_task
    if method == "borda":
        return top_k_mask(_weighted_mean(normalize_scores(scores, "rank"), weights), n_final), votes, per_task
    if method in ("single", "wiki"):
        return top_k_mask(scores[..., 0, :], n_final), votes, per_task
    raise DietError(f"method {method!r} is not score-based", f"score-based methods: {', '.join(MERGE_METHODS)}, wiki, leave_one_out")


def _tiebreak_norm(config: MaskConfig) -> str:
    return "rank" if config.normalize == "none" else config.normalize


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
        raise DietError(f"the {config.method} mask keeps no dimension (sparsity {config.sparsity:g}, τ {config.threshold:g})",
                        "lower the sparsity or τ, or use --exact to keep the target count")
    return MaskResult(keep, config, list(tasks), weights, votes, per_task)


def paper_default(cache, sparsity: float) -> MaskResult:
    """The paper's DIET mask: equal weights, τ = 0.5, mean over layers, residual stream."""
    return build_mask(cache, MaskConfig(sparsity=sparsity))


def _jaccard(a: np.ndarray, b: np.ndarray) -> float:
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


def mask_overlap(a: np.ndarray, b: np.ndarray) -> dict:
    """Compare two (D,) keep masks: Jaccard of kept sets and of pruned sets (1.0 when both are
    empty), dims that differ, and dims kept only by one side."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise DietError(f"masks have different sizes {a.shape} and {b.shape}", "compare masks of the same model")
    return {
        "jaccard_kept": _jaccard(a, b),
        "jaccard_pruned": _jaccard(~a, ~b),
        "n_diff": int((a != b).sum()),
        "only_a": int((a & ~b).sum()),
        "only_b": int((b & ~a).sum()),
    }
