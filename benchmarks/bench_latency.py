"""Pruned vs dense forward latency at 20% hidden sparsity.

Forward latency of the full model (logits included) at 20% hidden sparsity vs dense, measured
interleaved (dense, pruned, dense, ...) so machine load hits both alike; median of the repeats.
Target: pruned/dense <= 0.85. Two kept counts are timed: the smallest rounding the config
accepts (SmolLM2: multiples of its 9 heads, 459 = 20.3% pruned) and one also a multiple of 4
(lcm 36: 468 = 18.75% pruned): an odd width can cost the CPU GEMM kernels several percent.
The default quick evaluation's wall time is ``bench_quick_eval.py``.

    python benchmarks/bench_latency.py --model smollm2-135m
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from diet_explore.masking.selection import keep_count
from diet_explore.models.loading import load_model
from diet_explore.pruning.saving import required_multiple
from diet_explore.pruning.slicing import count_parameters, prune_model


def build_keep(model, sparsity: float, cache: str | None, multiple: int) -> tuple[np.ndarray, str]:
    d = int(model.config.hidden_size)
    n = keep_count(d, sparsity, multiple)
    if cache and Path(cache, "manifest.json").exists():
        from diet_explore.masking.build import MaskConfig, build_mask
        from diet_explore.profiling.cache import load_cache

        mask = build_mask(load_cache(cache), MaskConfig(sparsity=sparsity, exact=True, multiple_of=multiple))
        return mask.keep.copy(), f"DIET mask from {cache}"
    keep = np.zeros(d, dtype=bool)
    keep[np.random.default_rng(0).permutation(d)[:n]] = True
    return keep, "random mask (no cache)"


@torch.inference_mode()
def latency(models: dict, shape: tuple[int, int], repeats: int) -> dict[str, list[float]]:
    """Seconds per forward of each model, interleaved; the order flips every repeat (A B C, C B A,
    ...) so a drift in machine speed hits every model alike."""
    ids = torch.randint(100, 10000, shape)
    for m in models.values():  # warm-up
        m(input_ids=ids)
    times: dict[str, list[float]] = {k: [] for k in models}
    order = list(models.items())
    for r in range(repeats):
        for name, m in order if r % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            m(input_ids=ids)
            times[name].append(time.perf_counter() - t0)
    return times


def linear_macs_per_token(model) -> int:
    """Multiply-accumulates of every nn.Linear (blocks and lm_head) for one token."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--cache", default="cache/smollm2-135m")
    ap.add_argument("--sparsity", type=float, default=0.2)
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--align", type=int, default=4, help="also time the kept count rounded to lcm(heads rule, align)")
    args = ap.parse_args(argv)

    dense, tok, info = load_model(args.model, device="cpu")
    need = required_multiple(dense)
    variants = {}
    for multiple in dict.fromkeys([need, math.lcm(need, args.align)]):
        keep, how = build_keep(dense, args.sparsity, args.cache, multiple)
        variants[f"kept {int(keep.sum())} (multiple of {multiple})"] = (prune_model(dense, keep), how)
    d = dense.config.hidden_size
    print(
        f"{info.name}: hidden {d}, {count_parameters(dense) / 1e6:.2f} M parameters; {torch.get_num_threads()} threads; "
        f"target sparsity {args.sparsity} ({next(iter(variants.values()))[1]})"
    )
    for name, (model, _) in variants.items():
        dp = model.config.hidden_size
        print(f"  {name}: {1 - dp / d:.2%} pruned, {count_parameters(model) / 1e6:.2f} M parameters")
    for shape in ((1, 256), (8, 128)):
        t = latency({"dense": dense, **{k: v[0] for k, v in variants.items()}}, shape, args.repeats)
        med, best = {k: statistics.median(v) for k, v in t.items()}, {k: min(v) for k, v in t.items()}
        gflops = 2 * linear_macs_per_token(dense) * shape[0] * shape[1] / med["dense"] / 1e9
        print(
            f"forward latency batch {shape[0]} x {shape[1]} tokens, {args.repeats} interleaved repeats: dense median "
            f"{1000 * med['dense']:.1f} ms, min {1000 * best['dense']:.1f} ms (machine speed now: {gflops:.0f} GFLOP/s "
            "of linear layers)"
        )
        for name in variants:
            print(
                f"  {name}: median {1000 * med[name]:.1f} ms -> ratio {med[name] / med['dense']:.3f}; "
                f"min {1000 * best[name]:.1f} ms -> ratio {best[name] / best['dense']:.3f} (target <= 0.85)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
