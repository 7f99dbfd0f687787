"""How much the first token of each sequence decides a DIET mask: the README's first-token findings.

On SmolLM2-135M most dims' top-activating contexts at the residual site are the sequence's first
token (``masking.dims.first_token_dims``). This profiles a built-in model again on the same
calibration samples as its committed cache (the cache's own samples, seed and max length) with the
first real token of every sequence left out of the statistics (the model still sees it: only the
scores skip it), and prints, as markdown, per model:

* how the scores move: the median over dims and tasks of (score without the first token) / (score
  with it), and the same for the massive-activation dims and for the first-token dims;
* which dims the massive-activation rule flags with and without it;
* the paper-default DIET mask (τ = 0.5, equal weights) at 10%, 20% and 30% sparsity built from each
  cache: its kept count and how many kept dims differ (Jaccard of the kept sets).

    python tools/first_token.py [--models smollm2-135m,gemma3-270m] [--keep DIR]

About 3 minutes for SmolLM2 on 2 CPU cores (residual site only, no generic text): the profile is
``diet-explore profile --skip-first-token`` (``ProfileConfig(skip_first_token=True)``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diet_explore.core.errors import DietError  # noqa: E402
from diet_explore.masking.build import MaskConfig, build_mask  # noqa: E402
from diet_explore.masking.dims import first_token_dims  # noqa: E402
from diet_explore.masking.importance import ScorePrecompute  # noqa: E402
from diet_explore.masking.massive import massive_dims  # noqa: E402
from diet_explore.masking.selection import jaccard  # noqa: E402
from diet_explore.profiling.cache import load_cache  # noqa: E402
from diet_explore.profiling.runner import ProfileConfig, profile  # noqa: E402

SPARSITIES = (0.1, 0.2, 0.3)
SITE = "residual"


def profile_without_first_token(cache, out: Path) -> None:
    """Profile ``cache``'s model on its own calibration samples with ``--skip-first-token``."""
    cfg = cache.manifest.get("config", {})
    config = ProfileConfig(
        model=cache.model_name,
        tasks=list(cache.task_names),
        samples=int(cfg.get("samples", 100)),
        seed=int(cfg.get("seed", 1234)),
        max_length=int(cfg.get("max_length", 1024)),
        sites=[SITE],
        generic=False,
        skip_first_token=True,
    )
    profile(config, out)


def report(name: str, keep: Path | None) -> None:
    with_first = load_cache(ROOT / "cache" / name)
    with tempfile.TemporaryDirectory() as tmp:
        out = (keep / f"{name}-no-first-token") if keep else Path(tmp) / name
        t0 = time.perf_counter()
        if not (out / "manifest.json").exists():
            profile_without_first_token(with_first, out)
        took = time.perf_counter() - t0
        without = load_cache(out)
        tasks = list(with_first.task_names)
        a = np.stack([with_first.layer_scores(t, SITE).mean(0) for t in tasks])  # (T, D) layer-mean scores
        b = np.stack([without.layer_scores(t, SITE).mean(0) for t in tasks])
        ratio = b / np.where(a > 0, a, np.nan)
        massive_a, massive_b = massive_dims(with_first, SITE), massive_dims(without, SITE)
        first = first_token_dims(with_first, SITE)
        print(f"\n### {name} ({with_first.hidden_size} dims, {len(tasks)} tasks, site {SITE}; profiled in {took:.0f} s)\n")
        print("| dims | median score without / with the first token | min | max |")
        print("| --- | --- | --- | --- |")
        for label, cols in (
            ("all", np.arange(with_first.hidden_size)),
            (f"first-token dims ({int(first.sum())})", np.flatnonzero(first) if first is not None else []),
            (f"the other dims ({int((~first).sum())})", np.flatnonzero(~first) if first is not None else []),
            ("massive (" + ", ".join(map(str, massive_a.dims)) + ")", np.array(massive_a.dims)),
        ):
            cols = np.asarray(cols, dtype=int)
            if cols.size:
                r = ratio[:, cols]
                print(f"| {label} | {np.nanmedian(r):.3f} | {np.nanmin(r):.3f} | {np.nanmax(r):.3f} |")
        print(
            f"\nMassive-activation dims with the first token: {massive_a.dims}; without it: {massive_b.dims} "
            f"(ratios {', '.join(f'{d}: {massive_b.ratio[d]:.1f}x' for d in massive_a.dims)})."
        )
        print("\n| sparsity | kept (with / without) | kept dims that differ | Jaccard of kept sets |")
        print("| --- | --- | --- | --- |")
        pre_a, pre_b = ScorePrecompute(with_first), ScorePrecompute(without)
        for s in SPARSITIES:
            config = MaskConfig(sparsity=s, site=SITE)
            ma, mb = build_mask(pre_a, config), build_mask(pre_b, config)
            differ = int((ma.keep & ~mb.keep).sum())
            print(f"| {s:g} | {ma.n_keep} / {mb.n_keep} | {differ} | {jaccard(ma.keep, mb.keep):.3f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smollm2-135m", help="comma-separated committed caches under cache/")
    parser.add_argument("--keep", type=Path, default=None, help="keep the profiled caches in this folder (and reuse them)")
    args = parser.parse_args()
    for name in args.models.split(","):
        try:
            report(name.strip(), args.keep)
        except DietError as exc:  # e.g. the model is not installed: its install command, not a traceback
            print(f"{name.strip()}: {exc.message}" + (f"\n  hint: {exc.hint}" if exc.hint else ""), file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
