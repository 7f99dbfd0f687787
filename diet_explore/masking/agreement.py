"""How much tasks agree on which dims to prune: Jaccard, Spearman, vote counts, exact overlaps.

All functions take plain arrays, except ``prune_matrix``/``agreement_report`` which read a cache
(a ``ScoreCache`` or a ``ScorePrecompute``). ``prune`` arrays are (T, D) bool, True = pruned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from diet_explore.core.errors import DietError
from diet_explore.masking.importance import as_precompute, normalize_scores
from diet_explore.masking.selection import jaccard
from diet_explore.masking.vote import task_keep


def prune_matrix(
    cache, sparsity: float, tasks=None, site: str = "residual", layer_agg: str = "mean", last_k: int = 4
) -> np.ndarray:
    """(T, D) bool: True where task t prunes dim k at ``sparsity`` (its own top-k kept)."""
    pre = as_precompute(cache)
    tasks = list(pre.cache.task_names if tasks is None else tasks)
    if not tasks or len(set(tasks)) != len(tasks):  # a repeated task would be reported as agreeing with itself
        raise DietError(
            f"agreement needs distinct tasks, got {tasks}", "e.g. --tasks boolq,rte,hellaswag, or leave --tasks out for all"
        )
    return ~task_keep(pre.matrix(tasks, site, layer_agg, last_k), sparsity)  # the vote's own per-task sets


def spearman_matrix(scores: np.ndarray) -> np.ndarray:
    """(T, D) scores -> (T, T) Spearman rank correlation (average ranks for ties): the Pearson
    correlation of the rank rows. A constant row has no ranking, so its entries are NaN."""
    ranks = normalize_scores(scores, "rank")  # (T, D); an affine map of ranks leaves correlation unchanged
    centred = ranks - ranks.mean(1, keepdims=True)
    norm = np.sqrt((centred**2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = (centred @ centred.T) / np.outer(norm, norm)
    corr[norm == 0, :] = np.nan
    corr[:, norm == 0] = np.nan
    return np.clip(corr, -1.0, 1.0)


def vote_counts(prune: np.ndarray) -> np.ndarray:
    """(T, D) bool -> (D,) int: how many tasks vote to prune each dim."""
    return np.asarray(prune, dtype=bool).sum(0).astype(np.int64)


def vote_matrix_sorted(prune: np.ndarray, tasks) -> pd.DataFrame:
    """Dims × tasks (bool, True = pruned) with a ``votes`` column, indexed by ``dim``; sorted by
    votes descending, then dim ascending (the display order of the vote heatmap)."""
    prune = np.asarray(prune, dtype=bool)
    tasks = _check_tasks(prune, tasks)
    votes = vote_counts(prune)
    order = np.lexsort((np.arange(prune.shape[1]), -votes))
    df = pd.DataFrame(prune[:, order].T, columns=tasks)
    df.insert(0, "votes", votes[order])
    df.index = pd.Index(order, name="dim")
    return df


def upset_overlaps(prune: np.ndarray, tasks) -> pd.DataFrame:
    """Exact overlaps of pruned sets: one row per combination of tasks that is *exactly* the set
    voting to prune some dims, with ``combination`` (tuple of task names), ``size`` (dims),
    ``degree`` (tasks in it) and one bool column per task; sorted by size desc, then degree desc.

    Dims that no task prunes (the empty combination) are left out, so ``size`` sums to the number of
    dims with at least one prune vote. Up to 62 tasks (a combination is encoded as a bit mask).
    """
    prune = np.asarray(prune, dtype=bool)
    tasks = _check_tasks(prune, tasks)
    if len(tasks) > 62:
        raise DietError(f"upset overlaps support at most 62 tasks, got {len(tasks)}", "select fewer tasks")
    bits = (prune.astype(np.int64) << np.arange(len(tasks), dtype=np.int64)[:, None]).sum(0)  # (D,)
    codes, sizes = np.unique(bits[bits > 0], return_counts=True)
    member = (codes[:, None] >> np.arange(len(tasks))[None, :]) & 1 == 1  # (C, T)
    df = pd.DataFrame(member, columns=tasks)
    df.insert(0, "degree", member.sum(1).astype(np.int64))
    df.insert(0, "size", sizes.astype(np.int64))
    df.insert(0, "combination", [tuple(t for t, m in zip(tasks, row) if m) for row in member])
    return df.sort_values(["size", "degree"], ascending=[False, False], kind="stable").reset_index(drop=True)


def _check_tasks(prune: np.ndarray, tasks) -> list[str]:
    tasks = list(tasks)
    if prune.ndim != 2 or prune.shape[0] != len(tasks):
        raise DietError(f"prune matrix of shape {prune.shape} does not match {len(tasks)} task names", "pass one row per task")
    return tasks


@dataclass(frozen=True)
class AgreementReport:
    """Task agreement at one sparsity: labelled (T, T) tables, (D,) prune votes, exact overlaps."""

    sparsity: float
    tasks: list[str]
    jaccard: pd.DataFrame
    spearman: pd.DataFrame
    vote_counts: np.ndarray
    upset: pd.DataFrame
    prune: np.ndarray  # (T, D) bool

    def to_json_dict(self) -> dict[str, Any]:
        def table(df: pd.DataFrame) -> dict[str, dict[str, float | None]]:
            return {r: {c: (None if np.isnan(v) else round(float(v), 6)) for c, v in row.items()} for r, row in df.iterrows()}

        return {
            "sparsity": self.sparsity,
            "tasks": self.tasks,
            "jaccard": table(self.jaccard),
            "spearman": table(self.spearman),
            "vote_histogram": np.bincount(self.vote_counts, minlength=len(self.tasks) + 1).tolist(),
            "upset": [{"tasks": list(r.combination), "size": int(r.size)} for r in self.upset.itertuples()],
        }


def agreement_report(
    cache, sparsity: float, tasks=None, site: str = "residual", layer_agg: str = "mean", last_k: int = 4
) -> AgreementReport:
    pre = as_precompute(cache)
    tasks = list(pre.cache.task_names if tasks is None else tasks)
    if not tasks or len(set(tasks)) != len(tasks):  # a repeated task would be reported as agreeing with itself
        raise DietError(
            f"agreement needs distinct tasks, got {tasks}", "e.g. --tasks boolq,rte,hellaswag, or leave --tasks out for all"
        )
    scores = pre.matrix(tasks, site, layer_agg, last_k)  # (T, D), memoised: prune_matrix reuses it
    prune = prune_matrix(pre, sparsity, tasks, site, layer_agg, last_k)
    label = lambda m: pd.DataFrame(m, index=tasks, columns=tasks)
    return AgreementReport(
        float(sparsity),
        tasks,
        label(jaccard(prune[:, None, :], prune[None, :, :])),
        label(spearman_matrix(scores)),
        vote_counts(prune),
        upset_overlaps(prune, tasks),
        prune,
    )
