"""Mask-engine timings at Gemma-2 9B size (7 tasks x 3584 dims x 42 layers, 100 samples per task).

    python benchmarks/bench_masks.py [--repeats 15]

1. interactive recompute, what the app does on a slider move: DIET mask + agreement report + overlap
   with a baseline mask, from a warm ``ScorePrecompute`` (target <= 20 ms);
2. the same from a bare cache, i.e. including the layer reduction (for reference, no target);
3. bootstrap with 200 resamples (target <= 1 s), and in exact mode (reference).
Each time is the median of the repeats; the ratio is time / target (<= 1 passes).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diet_explore.masking.agreement import agreement_report
from diet_explore.masking.build import MaskConfig, build_mask, mask_overlap
from diet_explore.masking.importance import ScorePrecompute
from diet_explore.masking.stability import bootstrap_masks
from diet_explore.profiling.synthetic import synthetic_cache


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    cache = synthetic_cache(hidden_size=3584, num_layers=42, n_samples=100, seed=0)
    pre = ScorePrecompute(cache)
    baseline = build_mask(pre, MaskConfig(method="magnitude", sparsity=0.2)).keep

    def recompute(i: int = 0, source=pre) -> None:
        s = 0.1 + 0.02 * (i % 20)  # a different slider value each time
        mask = build_mask(source, MaskConfig(sparsity=s, threshold=0.5 + 0.01 * (i % 5)))
        agreement_report(source, s)
        mask_overlap(mask.keep, baseline)

    def cold(i: int = 0) -> None:
        recompute(i, source=cache)

    def boot(i: int = 0, exact: bool = False) -> None:
        bootstrap_masks(pre, MaskConfig(sparsity=0.2, exact=exact), n_resamples=200, seed=i)

    rows = [
        ("mask + agreement + overlap (warm precompute)", median_time(recompute, args.repeats), 0.020),
        ("mask + agreement + overlap (cold, from cache)", median_time(cold, args.repeats), None),
        ("bootstrap, 200 resamples", median_time(boot, max(3, args.repeats // 3)), 1.0),
        ("bootstrap, 200 resamples, exact mode", median_time(lambda i=0: boot(i, True), 3), None),
    ]
    print("synthetic cache: 7 tasks x 3584 dims x 42 layers, 100 samples per task")
    ok = True
    for name, t, target in rows:
        if target is None:
            print(f"{name:<48} {t * 1000:9.1f} ms   (reference, no target)")
        else:
            ok &= t <= target
            print(
                f"{name:<48} {t * 1000:9.1f} ms   target {target * 1000:.0f} ms   ratio {t / target:.2f}"
                f"   {'PASS' if t <= target else 'FAIL'}"
            )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
