"""SliceGPT rotate-and-slice of the real SmolLM2-135M on the CPU (fp32), at DIET's kept count.

    python benchmarks/bench_slicegpt.py [--sparsity 0.1] [--source tasks|wiki] [--scheme half|block] [--repeats 3]

1. the PCA calibration (``pca.pca_rotations``): the sequential per-site PCA over DIET's own
   calibration data read from the score cache (``tasks``: the 700 recorded task samples, what
   ``compare --methods slicegpt`` runs; ``wiki``: the 100 recorded wiki windows), timed once, for
   reference (no target: it is a forward pass over the calibration data plus 2L + 1 fp64 PCAs);
2. rotation and slicing (``rotate.rotate_and_slice``) of a private copy, given the bases: target
   <= 30 s on 2 cores; the median of the repeats and the ratio time / target. The copy itself
   (``copy.deepcopy``, which ``compare`` makes once, before the PCA) is printed beside it.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from diet_explore.masking.selection import keep_count  # noqa: E402
from diet_explore.models.loading import load_model  # noqa: E402
from diet_explore.profiling.cache import load_cache  # noqa: E402
from diet_explore.pruning.pca import SOURCES, calibration_from_cache, pca_rotations  # noqa: E402
from diet_explore.pruning.rotate import SCHEMES, count_parameters, rotate_and_slice, rotation_summary  # noqa: E402
from diet_explore.pruning.saving import required_multiple  # noqa: E402

TARGET_S = 30.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--cache", default=str(ROOT / "cache" / "smollm2-135m"))
    ap.add_argument("--sparsity", type=float, default=0.1)
    ap.add_argument("--source", default="tasks", choices=SOURCES)
    ap.add_argument("--scheme", default="half", choices=SCHEMES)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    model, tok, _ = load_model(args.model, device="cpu", dtype="float32")
    cache = load_cache(args.cache)
    d = int(model.config.hidden_size)
    keep = keep_count(d, args.sparsity, required_multiple(model))
    seqs, weights, info = calibration_from_cache(cache, tok, args.source)
    print(
        f"{args.model}: D = {d}, keep {keep} (sparsity {args.sparsity:g}), {len(model.model.layers)} blocks, "
        f"scheme {args.scheme}, {torch.get_num_threads()} threads"
    )
    print(f"calibration: {args.source}, {info['sequences']} sequences, {sum(info['tokens'].values())} tokens")

    work = copy.deepcopy(model)  # the PCA replaces the blocks' forward for one pass: never on the loaded model
    t0 = time.perf_counter()
    rotations = pca_rotations(work, seqs, weights, keep, args.scheme, pad_id=tok.pad_token_id or 0)
    pca_s = time.perf_counter() - t0
    del work

    times, copies = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        work = copy.deepcopy(model)  # rotate_and_slice works on a private copy, never the loaded model
        copies.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        sliced = rotate_and_slice(work, rotations, copy_model=False)
        times.append(time.perf_counter() - t0)
        summary = rotation_summary(sliced)
        del sliced, work
    rotate_s, copy_s = statistics.median(times), statistics.median(copies)
    print(f"{'PCA calibration':<36} {pca_s:8.1f} s   (reference, no target)")
    print(
        f"{'rotate and slice':<36} {rotate_s:8.1f} s   target {TARGET_S:.0f} s   "
        f"ratio {rotate_s / TARGET_S:.2f}   {'PASS' if rotate_s <= TARGET_S else 'FAIL'}"
        f"   (runs: {', '.join(f'{t:.1f}' for t in times)} s)"
    )
    print(f"{'copy of the model (before it)':<36} {copy_s:8.1f} s   (reference; with it {rotate_s + copy_s:.1f} s)")
    print(f"load average while it ran: {', '.join(f'{x:.1f}' for x in os.getloadavg())} (1, 5, 15 min) on {os.cpu_count()} cores")
    print(
        f"parameters: dense {count_parameters(model) / 1e6:.2f} M -> rotated {summary['parameters_after'] / 1e6:.2f} M "
        f"({summary['shortcut_parameters'] / 1e6:.2f} M in shortcut matrices, untied head: {summary['untied_head']}); "
        f"mean share of the second moment kept per site {sum(rotations.kept_variance) / len(rotations.kept_variance):.4f}"
    )
    return 0 if rotate_s <= TARGET_S else 1


if __name__ == "__main__":
    raise SystemExit(main())
