"""One mask configuration: ``MaskConfig`` (everything that determines a mask besides the cache), the
method vocabulary, the rule of which fields each method reads (``ignored_settings``) and the run
label (``MaskConfig.label``).

One name per method, everywhere (CLI, app, records, reports): the hyphenated names in ``METHODS``.
Older names (``single``, ``leave_one_out``, ``mean_score``) are read as their new names
(``METHOD_ALIASES``), so old mask files, links, sweep configs and records still load.

Which settings a method reads is stated once here: the CLI refuses a flag its method ignores, the
app disables (with the reason) a widget its method ignores, and the Export command and the run
label leave such a setting out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from diet_explore.core.config import JsonConfig, check_seed, parse_float
from diet_explore.core.errors import DietError
from diet_explore.masking.importance import LAYER_AGGS, NORMALIZATIONS, check_choice
from diet_explore.masking.selection import check_multiple_of, check_sparsity
from diet_explore.profiling.cache import SITES

#: The score-based merges of per-task scores (``vote.merge``).
MERGE_METHODS = ("diet", "mean-score", "borda", "union", "intersection", "single-task")
#: Compared against DIET at the same kept count (``baselines.py``, and the vote without one task).
BASELINE_METHODS = ("random", "magnitude", "wiki", "leave-one-out")
METHODS = MERGE_METHODS + BASELINE_METHODS  # every mask method, in the order menus list them
VOTE_METHODS = ("diet", "leave-one-out", "union", "intersection")  # τ / exact / multiple_of act on the vote
THRESHOLD_METHODS = ("diet", "leave-one-out")  # the votes that read τ (union and intersection fix it: 0+ and 1)
TASKLESS_METHODS = ("random", "magnitude", "wiki")  # no task votes: task lists and weights mean nothing to them
#: Older spellings, read as today's names (never written).
METHOD_ALIASES = {"single": "single-task", "leave_one_out": "leave-one-out", "mean_score": "mean-score"}

#: Methods of ``compare`` that are no coordinate mask, each with the reason a mask request is refused.
NOT_MASKS = {
    name: "SliceGPT rotates the residual stream into its principal directions before slicing, so it keeps "
    "directions, not hidden coordinates: there is no mask to build or save"
    for name in ("slicegpt", "slicegpt-wiki")
}
NOT_A_MASK_HINT = "evaluate it in memory with `diet-explore compare --methods slicegpt,slicegpt-wiki`"


def canonical_method(method: str) -> str:
    """``method`` in today's vocabulary (an older name such as ``leave_one_out`` -> ``leave-one-out``)."""
    return METHOD_ALIASES.get(method, method)


def check_mask_method(method: str) -> str:
    """The canonical name of ``method``; refuses a method that builds no mask (with the reason) or an unknown one."""
    method = canonical_method(method)
    if method in NOT_MASKS:
        raise DietError(f"{method!r} is not a masking method: {NOT_MASKS[method]}", NOT_A_MASK_HINT)
    check_choice("method", method, METHODS)
    return method


def ignored_settings(config: MaskConfig | str) -> dict[str, str]:
    """The ``MaskConfig`` fields that ``config`` (or a method name, with default settings) does not
    read, each with the reason: ``{field: reason}``. The CLI refuses such a flag, the app disables
    its widget and shows the reason, Export's command and ``label`` leave it out."""
    cfg = MaskConfig(method=config) if isinstance(config, str) else config
    m = cfg.method
    out: dict[str, str] = {}
    if m not in THRESHOLD_METHODS:
        out["threshold"] = (
            f"{m} keeps a dim any task keeps (τ → 0+)"
            if m == "union"
            else f"{m} keeps a dim every task keeps (τ = 1)"
            if m == "intersection"
            else f"{m} has no vote threshold: it keeps the target count by its own order"
        )
    if m in TASKLESS_METHODS:
        out["weights"] = out["tasks"] = f"{m} has no task vote"
    elif m == "single-task":
        out["weights"] = "single-task keeps the top dims of one task: there is nothing to weigh"
    if m not in VOTE_METHODS:
        out["exact"] = f"{m} always keeps exactly the target count"
    if m in ("random", "magnitude"):
        why = "a seeded random draw" if m == "random" else "the weights' magnitude"
        for name in ("site", "layer_agg", "last_k"):
            out[name] = f"{m} reads no activation scores (it keeps dims by {why})"
    if m not in VOTE_METHODS + ("mean-score",):
        out["normalize"] = f"{m} compares no scores across tasks"
    if "last_k" not in out and cfg.layer_agg != "last_k":
        out["last_k"] = "only the layer aggregation last_k averages the last k layers"
    if m != "random":
        out["seed"] = "only the random baseline draws"
    if m != "single-task":
        out["single_task"] = "only single-task keeps one task's top dims"
    if m != "leave-one-out":
        out["held_out_task"] = "only leave-one-out leaves a task out"
    return out


@dataclass
class MaskConfig(JsonConfig):
    """Everything that determines a mask (besides the cache). Checked on construction; checks
    that need the cache (task names, site present, baselines) are in ``validate``."""

    sparsity: float = 0.2  # target fraction of hidden dims pruned, in [0, 1)
    threshold: float = 0.5  # τ: keep a dim when ≥ τ of the total task weight keeps it
    weights: dict[str, float] = field(default_factory=dict)  # task -> weight ≥ 0; missing task = 1.0
    tasks: list[str] | None = None  # tasks that vote; None = every evaluation task in the cache
    method: str = "diet"  # one of METHODS (an older name is read as its new one)
    site: str = "residual"
    layer_agg: str = "mean"  # mean over layers is the paper's score
    last_k: int = 4  # layers averaged by layer_agg="last_k"
    normalize: str = "none"  # per-task normalisation for mean-score and exact-mode tie-breaks
    exact: bool = False  # keep exactly keep_count(D, s, multiple_of) dims instead of the vote's count
    multiple_of: int = 1  # round the kept count to a multiple of this (e.g. 8 for GPU-friendly shapes)
    seed: int = 0  # random baseline
    single_task: str | None = None  # method "single-task": whose top-k
    held_out_task: str | None = None  # method "leave-one-out": the task left out of the vote

    def __post_init__(self) -> None:
        self.sparsity = check_sparsity(self.sparsity)
        self.threshold = float(self.threshold)
        if not 0.0 <= self.threshold <= 1.0:
            raise DietError(f"threshold must be in [0, 1], got {self.threshold}", "0.5 is the paper's majority vote")
        self.method = check_mask_method(self.method)
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

    def label(self) -> str:
        """What sets this mask apart from the paper's default, in a few words: the method, then each
        setting it reads that differs from the default (never the sparsity, which a run states apart).
        The paper default is ``"diet"``; e.g. ``"diet τ0.6 boolq×2"``, ``"leave-one-out τ0.6 no rte"``,
        ``"diet exact multiple 9"``. Runs with one label were built by one rule."""
        default, ignored = MaskConfig(), ignored_settings(self)
        parts = [self.method]
        if "single_task" not in ignored and self.single_task:
            parts[0] += f" {self.single_task}"
        if "held_out_task" not in ignored and self.held_out_task:
            parts[0] += f" without {self.held_out_task}"
        if "threshold" not in ignored and self.threshold != default.threshold:
            parts.append(f"τ{self.threshold:g}")
        if "tasks" not in ignored and self.tasks is not None:
            parts.append("tasks " + ",".join(self.tasks))
        if "weights" not in ignored:
            parts += [f"{t}×{w:g}" for t, w in self.weights.items() if w != 1.0]
        if "site" not in ignored and self.site != default.site:
            parts.append(self.site)
        if "layer_agg" not in ignored and self.layer_agg != default.layer_agg:
            parts.append(f"last {self.last_k} layers" if self.layer_agg == "last_k" else f"{self.layer_agg} over layers")
        if "normalize" not in ignored and self.normalize != default.normalize:
            parts.append(f"{self.normalize}-normalised")
        if "exact" not in ignored and self.exact:
            parts.append("exact")
        if self.multiple_of != default.multiple_of:
            parts.append(f"multiple {self.multiple_of}")
        if "seed" not in ignored and self.seed != default.seed:
            parts.append(f"seed {self.seed}")
        return " ".join(parts)

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
        if self.method == "single-task":
            task = self.single_task or (tasks[0] if len(tasks) == 1 else None)
            voting = ", ".join(cache.task_names)
            if task is None:
                raise DietError(
                    "--method single-task needs --single-task, the task whose top dims are kept",
                    f"e.g. --single-task {cache.task_names[0]} (the voting tasks of this cache: {voting})"
                    if cache.task_names
                    else None,
                )
            if task not in cache.task_names:
                why = "generic text, which does not vote" if task in cache.generic_names else "not a task of this cache"
                raise DietError(f"--single-task {task} is {why}", f"choose a voting task of this cache: {voting}")
            return [task], np.ones(1)
        if self.method == "leave-one-out":
            if self.held_out_task not in tasks:
                raise DietError(
                    "--method leave-one-out needs --held-out-task, the voting task left out of the vote"
                    if self.held_out_task is None
                    else f"--held-out-task {self.held_out_task} is not among the voting tasks",
                    f"e.g. --held-out-task {tasks[0]} (the voting tasks: {', '.join(tasks)})" if tasks else None,
                )
            tasks = [t for t in tasks if t != self.held_out_task]
            if not tasks:
                raise DietError(f"leaving out {self.held_out_task!r} leaves no task to vote", "select at least two tasks")
        if self.method == "wiki":
            return [generic_task(cache)], np.ones(1)
        if self.method in ("random", "magnitude"):
            return [], np.zeros(0)
        return tasks, np.array([self.weights.get(t, 1.0) for t in tasks], dtype=np.float64)


def generic_task(cache) -> str:
    """The generic calibration set the wiki baseline scores with (``wikitext`` when present)."""
    names = cache.generic_names
    if not names:
        raise DietError(
            f"the cache {cache.path or cache.model_name} has no generic calibration set (e.g. wikitext)",
            "re-run `diet-explore profile` without --no-generic, or choose another method",
        )
    return "wikitext" if "wikitext" in names else names[0]


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
