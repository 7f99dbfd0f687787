"""One view of the vote behind a mask: each voting task's keep set, the weighted share of tasks
keeping each dim, and the kept set, all as ``build_mask`` builds them (``vote.merge``). Every screen
that shows the vote (Rankings, Agreement, Mask builder, Dimension, the vote histogram, ``diet-explore
agreement`` and ``dim``) reads this, so none restates the rule.

A method whose mask is no vote (random, magnitude, wiki, single-task) still has the tasks' vote to
show: its per-task sets and shares are those of the DIET vote with the same tasks, weights and
scores, while ``keep`` stays the method's own mask.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from diet_explore.masking.build import MaskConfig, MaskResult, build_mask
from diet_explore.masking.config import THRESHOLD_METHODS, VOTE_METHODS
from diet_explore.masking.importance import as_precompute
from diet_explore.masking.vote import passes_vote, task_keep, vote_share


@dataclass(frozen=True)
class VoteView:
    """The vote of ``config`` on one cache. Arrays are read-only."""

    config: MaskConfig
    tasks: list[str]  # the voting tasks with weight > 0, in config order
    weights: np.ndarray  # (T,) their weights (> 0)
    per_task_keep: np.ndarray  # (T, D) bool: task t keeps dim k among its own top keep_count(D, s)
    share: np.ndarray  # (D,) weighted share of the tasks keeping each dim, in [0, 1]
    keep: np.ndarray  # (D,) bool: the mask ``config`` builds (what is evaluated, saved and exported)

    def __post_init__(self) -> None:
        for arr in (self.weights, self.per_task_keep, self.share, self.keep):
            arr.setflags(write=False)

    @property
    def hidden_size(self) -> int:
        return int(self.keep.shape[0])

    @property
    def n_keep(self) -> int:
        return int(self.keep.sum())

    @property
    def n_pruned(self) -> int:
        return self.hidden_size - self.n_keep

    @property
    def prune_votes(self) -> np.ndarray:
        """(D,) int: how many voting tasks prune each dim (not weighted)."""
        return (~self.per_task_keep).sum(0).astype(np.int64)

    @property
    def reads_threshold(self) -> bool:
        """Whether the mask is the share ≥ τ rule (then ``why`` explains every exception to it)."""
        return self.config.method in THRESHOLD_METHODS

    def passes(self) -> np.ndarray:
        """(D,) bool: the dims whose share reaches τ (``vote.passes_vote``, the vote's own rule)."""
        return passes_vote(self.share, self.config.threshold)

    def why(self, dim: int) -> str | None:
        """Why the mask's decision on ``dim`` is not what its share and τ say (None: it is, or the
        method reads no τ): the exact count, or the kept count rounded to a multiple."""
        if not self.reads_threshold:
            return None
        passes, kept = bool(self.passes()[dim]), bool(self.keep[dim])
        if passes == kept:
            return None
        c = self.config
        n_vote = int(self.passes().sum())
        verb = "pruned although its share reaches" if passes else "kept although its share is below"
        if c.exact:
            cause = f"--exact keeps exactly the target count, {self.n_keep}, in vote order, not the {n_vote} that pass τ"
        else:
            cause = f"the kept count is rounded from the vote's {n_vote} to {self.n_keep}, a multiple of {c.multiple_of}"
        return f"{verb} τ {c.threshold:g} (share {self.share[dim]:.3f}): {cause}"


def vote_view(cache, config: MaskConfig, mask: MaskResult | None = None) -> VoteView:
    """The vote of ``config`` (``cache``: a ``ScoreCache`` or ``ScorePrecompute``); ``mask``: the
    already built mask of ``config`` (else built here)."""
    pre = as_precompute(cache)
    result = mask if mask is not None else build_mask(pre, config)
    if config.method in VOTE_METHODS + ("mean-score", "borda"):
        tasks, weights, per_task, share = result.tasks, result.weights, result.per_task_keep, result.votes
    else:  # the DIET vote of the same tasks and weights: what the tasks say, beside the method's mask
        vote = dataclasses.replace(config, method="diet", single_task=None, held_out_task=None)
        tasks, weights = vote.voting_tasks(pre.cache)
        per_task = task_keep(pre.matrix(tasks, config.site, config.layer_agg, config.last_k), config.sparsity)
        share = vote_share(per_task, weights)
    active = np.asarray(weights) > 0  # a weight-0 task is the same as leaving it out
    return VoteView(
        config,
        [t for t, a in zip(tasks, active, strict=True) if a],
        np.array(weights, dtype=np.float64)[active],
        np.array(per_task, dtype=bool)[active],
        np.array(share, dtype=np.float64),
        np.array(result.keep, dtype=bool),
    )
