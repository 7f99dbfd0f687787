"""The README's massive-activation findings, for each built-in model's committed cache.

Prints, as markdown: the dims the massive-activation rule flags (``masking/massive.py``); whether each
mask method of ``diet-explore compare`` keeps them at 10-30% sparsity (at the sweep's settings:
exact kept counts, a multiple of the head count, mask seed 0; plus the paper's plain vote); and the
held-out wiki perplexity (the quick evaluation's 32 windows of 128 tokens) of the dense model, of
the model with only the flagged dims removed, with each flagged dim removed alone, and, as a
control, with as many randomly drawn unflagged dims removed (three draws).

    python tools/massive_dims.py [--models smollm2-135m,gemma3-270m] [--no-perplexity]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diet_explore.experiments.results import METHODS, PER_TASK_METHODS, builds_mask  # noqa: E402
from diet_explore.masking.build import MaskConfig, build_mask  # noqa: E402
from diet_explore.masking.importance import ScorePrecompute  # noqa: E402
from diet_explore.masking.massive import massive_dims  # noqa: E402
from diet_explore.profiling.cache import load_cache  # noqa: E402

SPARSITIES = (0.1, 0.2, 0.3)
MULTIPLE = {"smollm2-135m": 9, "gemma3-270m": 4}  # head counts: what compare rounds kept counts to


def masks(pre, method: str, sparsity: float, multiple: int) -> list:
    """The masks ``compare`` would build for ``method`` (one per task for the per-task methods)."""
    base = dict(sparsity=sparsity, threshold=0.5, exact=True, multiple_of=multiple, seed=0, **METHODS[method])
    if method not in PER_TASK_METHODS:
        return [build_mask(pre, MaskConfig(**base))]
    out = []
    for t in pre.cache.task_names:
        extra = {"single_task": t, "tasks": [t]} if method == "single-task" else {"held_out_task": t}
        out.append(build_mask(pre, MaskConfig(**base, **extra)))
    return out


def keep_table(name: str, pre, flagged: list[int]) -> list[str]:
    rows = [
        f"| sparsity | method | kept | {' | '.join(f'keeps {d}' for d in flagged)} |",
        "|---|---|---|" + "---|" * len(flagged),
    ]
    for s in SPARSITIES:
        paper = build_mask(pre, MaskConfig(sparsity=s))
        cells = ["yes" if paper.keep[d] else "**no**" for d in flagged]
        rows.append(f"| {s:g} | diet (paper vote, τ 0.5) | {paper.n_keep} | {' | '.join(cells)} |")
        for method in filter(builds_mask, METHODS):  # a rotation (SliceGPT) keeps directions, no dims
            ms = masks(pre, method, s, MULTIPLE.get(name, 1))
            kept = [sum(bool(m.keep[d]) for m in ms) for d in flagged]
            if len(ms) == 1:
                cells = ["yes" if k else "**no**" for k in kept]
            else:
                cells = [f"{k} of {len(ms)}" if k == len(ms) else f"**{k} of {len(ms)}**" for k in kept]
            rows.append(f"| {s:g} | {method} | {ms[0].n_keep} | {' | '.join(cells)} |")
    return rows


def perplexities(name: str, flagged: list[int], hidden: int) -> list[str]:
    from diet_explore.evaluation.evaluate import heldout_wiki_windows
    from diet_explore.evaluation.scoring import perplexity
    from diet_explore.models.loading import load_model
    from diet_explore.models.tokens import bos_prefix
    from diet_explore.pruning.slicing import prune_model

    model, tok, _ = load_model(name, device="cpu")
    windows, bos = heldout_wiki_windows(tok, 32), bos_prefix(tok)

    def ppl(removed) -> float:
        keep = np.ones(hidden, dtype=bool)
        keep[list(removed)] = False
        m = model if keep.all() else prune_model(model, keep, saveable=False)
        return perplexity(m, windows, bos)

    rng = np.random.default_rng(0)
    others = np.setdiff1d(np.arange(hidden), flagged)
    lines = ["| removed | kept | wiki ppl |", "|---|---|---|"]
    t = time.perf_counter()
    lines.append(f"| nothing (dense) | {hidden} | {ppl([]):.2f} |")
    lines.append(f"| the flagged dims {', '.join(map(str, flagged))} | {hidden - len(flagged)} | {ppl(flagged):.2f} |")
    if len(flagged) > 1:
        for d in flagged:
            lines.append(f"| dim {d} alone | {hidden - 1} | {ppl([d]):.2f} |")
    for i in range(3):
        draw = sorted(rng.choice(others, size=len(flagged), replace=False).tolist())
        lines.append(
            f"| control {i + 1}: random unflagged {', '.join(map(str, draw))} | {hidden - len(flagged)} | {ppl(draw):.2f} |"
        )
    print(f"  ({time.perf_counter() - t:.0f} s)", file=sys.stderr)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="smollm2-135m,gemma3-270m")
    ap.add_argument("--no-perplexity", action="store_true")
    args = ap.parse_args()
    for name in [m for m in args.models.split(",") if m]:
        cache = load_cache(ROOT / "cache" / name)
        pre = ScorePrecompute(cache)
        found = massive_dims(pre)
        flagged = found.dims
        ratios = ", ".join(f"{d} ({found.ratio[d]:.1f}×)" for d in flagged)
        near = [int(d) for d in np.argsort(-found.ratio)[len(flagged) : len(flagged) + 3]]
        print(f"### {name}\n\nflagged at the residual site (median ratio to the median dim): {ratios}")
        print(f"next highest, not flagged: {', '.join(f'{d} ({found.ratio[d]:.1f}×)' for d in near)}\n")
        print("\n".join(keep_table(name, pre, flagged)) + "\n")
        if not args.no_perplexity:
            print("\n".join(perplexities(name, flagged, cache.hidden_size)) + "\n")


if __name__ == "__main__":
    main()
