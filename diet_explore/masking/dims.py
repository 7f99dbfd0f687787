"""One hidden dimension, explained: why the current mask keeps or prunes it, and the text that drives it.

``dim_card`` gathers what the dimension inspector (the app's Dimension page) and
``diet-explore dim`` show, so the two always agree: each task's score, rank, keep threshold at the
sparsity and vote; the mask's decision and the dim's bootstrap keep frequency; its score by layer;
its weight-magnitude and wiki ranks; the massive-activation flag (``massive.py``); and its
top-activating contexts per task (``profiling.contexts``; a cache profiled before schema 2 has
none, and the card says so).

``split_votes`` lists the dims the tasks disagree on most: those kept by about half of the voting
weight, the most divided first.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from diet_explore.core.config import parse_int
from diet_explore.core.errors import DietError
from diet_explore.masking.build import MaskConfig, MaskResult, build_mask
from diet_explore.masking.importance import as_precompute
from diet_explore.masking.massive import MASSIVE_FACTOR, is_massive, massive_ratio
from diet_explore.masking.selection import keep_count, rank_dims
from diet_explore.masking.vote import THRESHOLD_METHODS, task_keep
from diet_explore.masking.voteview import vote_view

NO_CONTEXTS = "this cache was profiled without top-activating contexts: re-profile to see contexts"
# A dim whose recorded top contexts are at least this share the first token of their sequence fires
# on position, not on text. In the committed caches: SmolLM2-135M (no BOS token) 477 of 576 dims at
# the residual site, whatever the first token is, and 1 at the normed site (the norm divides the
# first token's size out); Gemma-3-270M (which adds <bos>) 6 of 640 at the residual site, 0 normed.
FIRST_TOKEN_SHARE = 0.5
_CONTROL = {"\n": "↵", "\t": "⇥", "\r": "␍"}


def contexts_command(cache) -> str:
    """The ``diet-explore profile --add-contexts`` command that adds contexts to ``cache`` (a
    ``ScoreCache``) and keeps its scores: the settings its manifest records."""
    m = cache.manifest
    cfg = m.get("config", {})
    parts = [f"diet-explore profile --model {cache.model_name} --tasks {','.join(cache.task_names) or 'all'}"]
    for flag, key in (("--samples", "samples"), ("--seed", "seed"), ("--max-length", "max_length")):
        if key in cfg:
            parts.append(f"{flag} {cfg[key]}")
    parts.append(f"--sites {','.join(cache.sites)}")
    if cfg.get("skip_first_token"):  # the re-run must score as the cache did, or its scores are refused
        parts.append("--skip-first-token")
    if not cache.generic_names:
        parts.append("--no-generic")
    dtype = (m.get("environment") or {}).get("dtype")
    device = str((m.get("environment") or {}).get("device", "")).split(":")[0]
    if device:
        parts.append(f"--device {device}")
    if dtype:
        parts.append(f"--dtype {dtype}")
    parts.append(f"--out {cache.path or '<this cache folder>'} --add-contexts")
    return " ".join(parts)


def check_dim(dim: Any, hidden_size: int) -> int:
    """``dim`` as an index into the hidden dims, or a ``DietError`` that names the valid range."""
    if isinstance(dim, bool):
        value = None
    elif isinstance(dim, int | np.integer):
        value = int(dim)
    else:
        value = parse_int(dim)  # ASCII digits only: int() takes "٥" for 5
    if value is None or not 0 <= value < hidden_size:
        raise DietError(
            f"dimension {dim!r} is not an index in 0..{hidden_size - 1}",
            f"give a whole number from 0 to {hidden_size - 1} in the digits 0-9, e.g. {min(507, hidden_size - 1)}",
        )
    return value


def ranks(scores: np.ndarray) -> np.ndarray:
    """(D,) 1-based rank of every dim by score, highest first (ties to the lower index, as ``rank_dims``)."""
    order = rank_dims(scores)
    out = np.empty(order.size, dtype=np.int64)
    out[order] = np.arange(1, order.size + 1)
    return out


def display_token(text: str) -> str:
    """A token as shown in a context: newlines, tabs and carriage returns as visible symbols."""
    for ch, sym in _CONTROL.items():
        text = text.replace(ch, sym)
    return text


@dataclass(frozen=True)
class ContextRow:
    """A top-activating position of the dim in one task."""

    sample_id: int  # the example's id in the task's calibration draw (wiki: the window index)
    position: int  # token index in the profiled sequence
    value: float  # layer-averaged |activation| of the dim at that token
    tokens: list[str]  # the decoded tokens around it
    marked: int  # index in ``tokens`` of the activating token

    def text(self, left: str = "[[", right: str = "]]") -> str:
        """The context on one line, the activating token between ``left`` and ``right``."""
        shown = [display_token(t) for t in self.tokens]
        if 0 <= self.marked < len(shown):
            shown[self.marked] = f"{left}{shown[self.marked]}{right}"
        return "".join(shown)


@dataclass(frozen=True)
class TaskRow:
    """The dim as one task (or generic set) sees it."""

    task: str
    kind: str  # "task" (votes) or "generic" (the wiki baseline's text)
    weight: float | None  # voting weight in the current mask; None: not voting
    score: float  # the dim's score (site, layer aggregation as set)
    rank: int  # 1 = this task's highest-scoring dim
    threshold: float  # the lowest score this task keeps at the sparsity
    kept: bool  # within this task's own top keep_count(D, sparsity)
    ratio: float | None  # score / this task's median dim score (None: the median is 0)
    layers: list[float]  # score at each layer (L,)
    contexts: list[ContextRow] | None  # None: no contexts in this cache for the task


@dataclass(frozen=True)
class DimCard:
    dim: int
    hidden_size: int
    model: str
    config: MaskConfig
    n_keep_per_task: int  # what each task keeps at the sparsity
    tasks: list[TaskRow]
    mask_kept: bool
    mask_n_keep: int
    vote_share: float | None  # weighted share of the voting tasks keeping it (None: the method has no vote)
    voting: list[str]
    massive_ratio: float
    weight_magnitude_rank: int | None
    wiki_rank: int | None
    wiki_task: str | None
    contexts_command: str | None = None  # the profile command that adds contexts (when some are missing)
    why: str | None = None  # why the mask's decision is not what share ≥ τ says (exact count, multiple-of)
    keep_frequency: float | None = None  # bootstrap keep frequency (None: not computed)
    n_resamples: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def massive(self) -> bool:
        return bool(is_massive(self.massive_ratio))

    @property
    def has_contexts(self) -> bool:
        return any(t.contexts is not None for t in self.tasks)

    def to_json_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["config"] = self.config.to_dict()
        out["massive"] = self.massive
        out["massive_rule"] = f"median over tasks of score / the task's median dim score >= {MASSIVE_FACTOR:g}"
        if not self.has_contexts:
            out["notes"] = [*self.notes, NO_CONTEXTS]
        return out

    def to_text(self, contexts_per_task: int = 5) -> str:
        """The card as plain text (what ``diet-explore dim`` prints)."""
        c = self.config
        agg = c.layer_agg if c.layer_agg != "last_k" else f"mean of the last {c.last_k} layers"
        lines = [
            f"dim {self.dim} of {self.hidden_size} ({self.model}; site {c.site}, layer aggregation {agg}; sparsity {c.sparsity:g})",
        ]
        if self.massive:
            lines.append(f"massive-activation dim: {self.massive_ratio:.1f}x the median dim (flagged at >= {MASSIVE_FACTOR:g}x)")
        else:
            lines.append(f"{self.massive_ratio:.2f}x the median dim (massive at >= {MASSIVE_FACTOR:g}x)")
        decision = "KEPT" if self.mask_kept else "PRUNED"
        vote = ""
        if self.vote_share is not None:
            n_keep = sum(1 for t in self.tasks if t.weight is not None and t.kept)
            vote = f"; kept by {n_keep} of {len(self.voting)} voting tasks, weighted share {self.vote_share:.2f}"
            if c.method in THRESHOLD_METHODS and not c.exact:
                vote += f" (tau {c.threshold:g})"
        lines.append(f"mask ({c.method}, {self.mask_n_keep} of {self.hidden_size} kept): {decision}{vote}")
        if self.keep_frequency is not None:
            lines.append(f"bootstrap keep frequency {self.keep_frequency:.3f} ({self.n_resamples} resamples)")
        ranks_line = []
        if self.weight_magnitude_rank is not None:
            ranks_line.append(f"weight-magnitude rank {self.weight_magnitude_rank} / {self.hidden_size}")
        if self.wiki_rank is not None:
            ranks_line.append(f"wiki ({self.wiki_task}) rank {self.wiki_rank} / {self.hidden_size}")
        if ranks_line:
            lines.append("; ".join(ranks_line))
        lines.append("")
        lines.append(f"each task keeps its top {self.n_keep_per_task}:")
        width = max(len(t.task) for t in self.tasks)
        lines.append(f"  {'task':<{width}}  weight      score   rank   keeps >=  x median  vote    score by layer")
        for t in self.tasks:
            w = "-" if t.weight is None else f"{t.weight:g}"
            ratio = "-" if t.ratio is None else f"{t.ratio:.2f}"
            vote = ("keep" if t.kept else "prune") if t.weight is not None else ("(keep)" if t.kept else "(prune)")
            lines.append(
                f"  {t.task:<{width}}  {w:>6}  {t.score:9.3f}  {t.rank:5d}  {t.threshold:9.3f}  {ratio:>8}  {vote:<6}  "
                f"{sparkline(t.layers)}"
            )
        lines.append("")
        if not self.has_contexts:
            lines.append(f"top-activating contexts: {NO_CONTEXTS}")
            if self.contexts_command:
                lines.append(f"  add them to this cache, keeping its scores: {self.contexts_command}")
        elif contexts_per_task <= 0:
            lines.append("top-activating contexts: not shown (0 per task asked for)")
        else:
            lines.append("top-activating contexts (layer-averaged |activation| at the token in [[ ]]):")
            for t in self.tasks:
                if t.contexts is None:
                    lines.append(f"  {t.task}: no contexts recorded (re-profile to see contexts)")
                    continue
                lines.append(f"  {t.task}:")
                for ctx in t.contexts[:contexts_per_task]:
                    lines.append(f"    {ctx.value:9.3f}  sample {ctx.sample_id:>6} token {ctx.position:>4}  {ctx.text()}")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


_BLOCKS = "▁▂▃▄▅▆▇█"


def sparkline(values) -> str:
    """A row of block characters, one per value, scaled from the row's minimum to its maximum."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return ""
    lo, hi = float(v.min()), float(v.max())
    if not hi > lo:
        return _BLOCKS[0] * v.size
    idx = np.minimum(((v - lo) / (hi - lo) * len(_BLOCKS)).astype(int), len(_BLOCKS) - 1)
    return "".join(_BLOCKS[i] for i in idx)


def dim_card(cache, config: MaskConfig, dim: int, stability=None, mask: MaskResult | None = None) -> DimCard:
    """Everything about hidden dim ``dim`` under the mask ``config`` builds (``cache``: a
    ``ScoreCache`` or ``ScorePrecompute``). ``stability``: a ``StabilityResult`` of the same config
    for the bootstrap keep frequency; ``mask``: the already built mask of ``config`` (else built)."""
    pre = as_precompute(cache)
    c = pre.cache
    dim = check_dim(dim, c.hidden_size)
    config.validate(c)
    result = mask if mask is not None else build_mask(pre, config)
    vote = vote_view(pre, config, result)  # the vote as the mask is built (its per-task sets, shares, exceptions)
    d = c.hidden_size
    n_keep = keep_count(d, config.sparsity)
    site, agg, last_k = config.site, config.layer_agg, config.last_k
    voting = dict(zip(result.tasks, result.weights.tolist(), strict=True))
    rows = []
    names = list(c.task_names) + list(c.generic_names)
    for task in names:
        s = pre.task_scores(task, site, agg, last_k)  # (D,)
        ts = c.tasks[task]
        ordered = np.sort(s)[::-1]
        med = float(np.median(s))
        contexts = None
        if ts.contexts is not None and site in ts.contexts.top:
            contexts = [
                ContextRow(int(ts.sample_ids[x.row]), x.position, x.value, x.tokens, x.marked)
                for x in ts.contexts.contexts(site, dim)
            ]
        weight = voting.get(task) or None  # a weight of 0 does not vote
        rows.append(
            TaskRow(
                task=task,
                kind=ts.kind,
                weight=None if weight is None else float(weight),
                score=float(s[dim]),
                rank=int(ranks(s)[dim]),
                threshold=float(ordered[n_keep - 1]),
                kept=bool(task_keep(s[None], config.sparsity)[0, dim]),  # the vote's per-task rule
                ratio=float(s[dim] / med) if med > 0 else None,
                layers=[float(x) for x in c.layer_scores(task, site)[:, dim]],
                contexts=contexts,
            )
        )
    voters = [t for t, w in voting.items() if w > 0]
    massive = massive_ratio(pre.matrix(c.task_names or c.generic_names, site, agg, last_k))
    wm = c.baselines.get("weight_magnitude")
    wiki = c.generic_names and ("wikitext" if "wikitext" in c.generic_names else c.generic_names[0])
    notes = []
    if not result.tasks:
        how = "a seeded random draw" if config.method == "random" else "weight magnitude"
        notes.append(f"method {config.method!r} has no vote: it keeps dims by {how}")
    why = vote.why(dim)  # e.g. a share ≥ τ pruned by the exact count or the rounding to a multiple
    if why:
        notes.append(f"dim {dim} is {why}")
        why = f"{'Pruned' if not result.keep[dim] else 'Kept'} {why.split(' ', 1)[1]}"
    first = first_token_counts(c, site)
    if first is not None and first_token_dims(c, site)[dim]:  # the one rule, as the Overview counts it
        notes.append(first_token_note(int(first[0][dim]), first[1]))
    return DimCard(
        dim=dim,
        hidden_size=d,
        model=c.model_name,
        config=config,
        n_keep_per_task=n_keep,
        tasks=rows,
        mask_kept=bool(result.keep[dim]),
        mask_n_keep=result.n_keep,
        vote_share=float(result.votes[dim]) if result.tasks else None,
        voting=voters,
        massive_ratio=float(massive[dim]),
        weight_magnitude_rank=int(ranks(wm)[dim]) if wm is not None else None,
        wiki_rank=int(ranks(pre.task_scores(wiki, site, agg, last_k))[dim]) if wiki else None,
        wiki_task=wiki or None,
        why=why,
        contexts_command=None if all(c.tasks[t].contexts is not None for t in names) else contexts_command(c),
        keep_frequency=float(stability.keep_frequency[dim]) if stability is not None else None,
        n_resamples=int(stability.n_resamples) if stability is not None else None,
        notes=notes,
    )


def first_token_counts(cache, site: str) -> tuple[np.ndarray, int] | None:
    """Per dim, how many of its recorded top-activating contexts at ``site`` (every task and generic
    text set that has them) are the first token of their profiled sequence: ((D,) counts, contexts
    per dim). None: no contexts recorded at ``site``. ``cache``: a ``ScoreCache``."""
    tops = [ts.contexts.top[site] for ts in cache.tasks.values() if ts.contexts is not None and site in ts.contexts.top]
    if not tops or not sum(t.k for t in tops):
        return None
    return sum((t.position == 0).sum(axis=1) for t in tops), sum(t.k for t in tops)


def first_token_dims(cache, site: str) -> np.ndarray | None:
    """(D,) bool: the dims whose top contexts are mostly (``FIRST_TOKEN_SHARE``) the first token."""
    counts = first_token_counts(cache, site)
    return None if counts is None else counts[0] >= FIRST_TOKEN_SHARE * counts[1]


def first_token_note(n_first: int, n_total: int) -> str:
    return (
        f"{n_first} of its {n_total} top contexts are the first token of their sequence, whatever that token is: "
        "the dim fires on position (the first token's activations are the model's largest, an attention-sink "
        "pattern), so its contexts say little about which text it responds to"
    )


def split_votes(cache, config: MaskConfig, n: int = 20) -> pd.DataFrame:
    """The ``n`` dims the voting tasks disagree on most at ``config``'s sparsity, site and layer
    aggregation: ordered by how close the weighted share of tasks keeping them is to one half, then
    by the spread of their per-task ranks (largest first), then by index.

    Columns: ``dim``, ``keep share``, ``kept by`` / ``pruned by`` (task names), ``rank spread``,
    the mask's decision (``mask``), then one score column per voting task. The voting tasks and
    weights are the vote's (every task of weight > 0), whatever the merge rule."""
    pre = as_precompute(cache)
    c = pre.cache
    vote = vote_view(pre, config)  # the vote exactly as the mask is built
    tasks, per_task, share, keep = vote.tasks, vote.per_task_keep, vote.share, vote.keep  # (T, D) kept, (D,), (D,)
    scores = pre.matrix(tasks, config.site, config.layer_agg, config.last_k)  # (T, D)
    rank = np.stack([ranks(s) for s in scores])  # (T, D)
    spread = rank.max(0) - rank.min(0)
    distance = np.round(np.abs(share - 0.5), 12)
    order = np.lexsort((np.arange(c.hidden_size), -spread, distance))[: max(int(n), 0)]
    df = pd.DataFrame(
        {
            "dim": order,
            "keep share": np.round(share[order], 4),
            "kept by": [", ".join(t for t, k in zip(tasks, per_task[:, i], strict=True) if k) for i in order],
            "pruned by": [", ".join(t for t, k in zip(tasks, per_task[:, i], strict=True) if not k) for i in order],
            "rank spread": spread[order],
            "mask": np.where(keep[order], "kept", "pruned"),
        }
    )
    for i, t in enumerate(tasks):
        df[t] = np.round(scores[i, order], 4)
    return df
