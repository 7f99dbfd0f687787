"""Building one mask: ``MaskConfig`` (everything that determines a mask besides the cache), the
``MaskResult`` it gives, and ``build_mask``, which dispatches to the vote (``vote.py``) or a
baseline (``baselines.py``). Per-task scores come from ``importance.py``, counts and top-k from
``selection.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from diet_explore.core.config import JsonConfig, check_seed, parse_float
from diet_explore.core.errors import DietError
from diet_explore.masking import baselines
from diet_explore.masking.baselines import BASELINE_METHODS, TASKLESS_METHODS
from diet_explore.masking.importance import LAYER_AGGS, NORMALIZATIONS, as_precompute, check_choice
from diet_explore.masking.selection import check_multiple_of, check_sparsity, jaccard, keep_count
from diet_explore.masking.vote import MERGE_METHODS, merge
from diet_explore.profiling.cache import SITES

#: Methods of ``compare`` that are no coordinate mask, each with the reason a mask request is refused.
NOT_MASKS = {
    name: "SliceGPT rotates the residual stream into its principal directions before slicing, so it keeps "
    "directions, not hidden coordinates: there is no mask to build or save"
    for name in ("slicegpt", "slicegpt-wiki")
}
NOT_A_MASK_HINT = "evaluate it in memory with `diet-explore compare --methods slicegpt,slicegpt-wiki`"


def check_mask_method(method: str) -> None:
    """Refuse a method that builds no mask (with the reason), or an unknown one."""
    if method in NOT_MASKS:
        raise DietError(f"{method!r} is not a masking method: {NOT_MASKS[method]}", NOT_A_MASK_HINT)
    check_choice("method", method, MERGE_METHODS + BASELINE_METHODS)


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
        check_mask_method(self.method)
        check_choice("site", self.site, SITES)
        check_choice("layer aggregation", self.layer_agg, LAYER_AGGS)
        check_choice("normalization", self.normalize, NORMALIZATIONS)
        self.last_k, self.multiple_of = int(self.last_k), check_multiple_of(self.multiple_of)
        self.seed = check_seed(self.seed, "--seed")
        if self.last_k < 1:
            raise DietError(f"--last-k must be at least 1, got {self.last_k}", "e.g. --layer-agg last_k --last-k 4")
        self.weights = {str(t): float(w) for t, w in dict(self.weights).items()}
        for t, w in self.weights.items():
            if not math.isfinite(w) or w < 0:
                raise DietError(f"weight of task {t!r} is {w}; weights must be finite and ≥ 0", "use 0 to leave a task out")
        if not math.isfinite(sum(self.weights.values()) + len(self.weights)):  # the vote adds them up
            big = max(self.weights, key=self.weights.get)
            raise DietError(
                f"the task weights are too large to add up (e.g. {big}={self.weights[big]:g})",
                "weights are relative: scale them down, e.g. 1 and 2",
            )
        if self.tasks is not None:
            self.tasks = [str(t) for t in self.tasks]
            if not self.tasks:
                raise DietError(
                    "--tasks names no task", "list voting tasks, e.g. --tasks boolq,rte, or --tasks all for every one"
                )
            dup = sorted({t for t in self.tasks if self.tasks.count(t) > 1})
            if dup:
                raise DietError(f"task(s) listed twice: {', '.join(dup)}", "list each task once")
        self.exact = bool(self.exact)

    def validate(self, cache) -> None:
        """Checks against a cache: tasks, weight names, site, and what the method needs."""
        known = list(cache.tasks)
        hint = f"this cache has {', '.join(known)}"
        for t in self.tasks or []:
            if t not in cache.tasks:
                raise DietError(f"task {t!r} is not in this cache", hint)
            if t in cache.generic_names:  # the same rule as for its weight, below
                raise DietError(
                    f"task {t!r} is generic text, which does not vote (the wiki baseline scores with it)",
                    f"list voting tasks from {', '.join(cache.task_names)}, or use the method 'wiki'",
                )
        candidates = list(self.tasks) if self.tasks is not None else list(cache.task_names)
        for t in self.weights:  # a weight nothing reads would be accepted and silently ignored
            if t not in cache.tasks:  # the hint names what can carry a weight: the voting tasks, not the wiki text
                raise DietError(
                    f"weight given for unknown task {t!r}", f"weights apply to the voting tasks: {', '.join(candidates)}"
                )
            if t not in candidates:
                why = (
                    "generic text, which does not vote (the wiki baseline scores with it)"
                    if t in cache.generic_names
                    else f"not among the voting tasks ({', '.join(candidates)})"
                )
                raise DietError(f"weight given for {t!r}, {why}", f"weights apply to the voting tasks: {', '.join(candidates)}")
        if self.site not in cache.sites:
            raise DietError(f"site {self.site!r} was not profiled in this cache", f"choose one of {', '.join(cache.sites)}")
        check_multiple_of(self.multiple_of, cache.hidden_size)
        tasks, weights = self.voting_tasks(cache)
        if self.method in TASKLESS_METHODS:
            return
        cache.require_tasks()  # a cache of generic text alone: "every voting task () has weight 0" said nothing useful
        if not weights.sum() > 0:
            raise DietError(f"every voting task ({', '.join(tasks)}) has weight 0", "give at least one task a weight above 0")

    def voting_tasks(self, cache) -> tuple[list[str], np.ndarray]:
        """(tasks, weights (T,)) that take part in this method's vote, in config order.
        Weights for cache tasks that are not voting are ignored."""
        tasks = list(self.tasks) if self.tasks is not None else list(cache.task_names)
        if self.method == "single":
            task = self.single_task or (tasks[0] if len(tasks) == 1 else None)
            voting = ", ".join(cache.task_names)
            if task is None:
                raise DietError(
                    "--method single needs --single-task, the task whose top dims are kept",
                    f"e.g. --single-task {cache.task_names[0]} (the voting tasks of this cache: {voting})"
                    if cache.task_names
                    else None,
                )
            if task not in cache.task_names:
                why = "generic text, which does not vote" if task in cache.generic_names else "not a task of this cache"
                raise DietError(f"--single-task {task} is {why}", f"choose a voting task of this cache: {voting}")
            return [task], np.ones(1)
        if self.method == "leave_one_out":
            if self.held_out_task not in tasks:
                raise DietError(
                    "--method leave_one_out needs --held-out-task, the voting task left out of the vote"
                    if self.held_out_task is None
                    else f"--held-out-task {self.held_out_task} is not among the voting tasks",
                    f"e.g. --held-out-task {tasks[0]} (the voting tasks: {', '.join(tasks)})" if tasks else None,
                )
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


def parse_weights(text: str) -> dict[str, float]:
    """``"boolq=2,rte=0.5"`` (``:`` also accepted, as in share links) -> {"boolq": 2.0, "rte": 0.5}.
    A malformed or repeated item is a DietError; the values are checked by ``MaskConfig``."""
    weights: dict[str, float] = {}
    for item in [x.strip() for x in (text or "").split(",") if x.strip()]:
        sep = "=" if "=" in item else ":"
        task, found, value = item.partition(sep)
        task = task.strip()
        if task in weights:
            raise DietError(f"task {task!r} appears twice in --weights", "give each task one weight")
        try:
            weight = parse_float(value)
            if not found or not task or weight is None:
                raise ValueError
            weights[task] = weight
        except ValueError:
            raise DietError(
                f"bad --weights item {item!r}: expected task=weight, the weight written with the digits 0-9",
                "e.g. --weights boolq=2,rte=0.5",
            ) from None
    return weights


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
