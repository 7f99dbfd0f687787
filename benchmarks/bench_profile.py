"""Profiling cost, measured side by side on the same batches in one run (not a timed test).

Prints: hooked-profile throughput relative to a bare base-model forward (target ≥ 0.95x), the
overhead of the top-activating-context bookkeeping (top-k positions and their decoded
neighbourhood) over the same hooked profile without it (target ≤ 5%), the speedup over
``output_hidden_states=True`` on the full causal LM, the share of real tokens among those processed
(target ≥ 90%), and the wall time of the full default profile (7 tasks x 100).

    python benchmarks/bench_profile.py [--samples-per-task 30] [--rounds 3] [--skip-full]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diet_explore.models.adapters import get_adapter
from diet_explore.models.loading import load_model
from diet_explore.profiling.contexts import TOP_K
from diet_explore.profiling.runner import ProfileConfig, pad_batch, profile, profile_batches, profile_sequences
from diet_explore.tasks.data import calibration_ids, requests_for
from diet_explore.tasks.registry import resolve_tasks


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--samples-per-task", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-full", action="store_true")
    args = ap.parse_args()

    model, tok, info = load_model(args.model, device="cpu")
    adapter = get_adapter(model)
    seqs = []
    for spec in resolve_tasks("all"):
        texts = [r.gold_text() for r in requests_for(spec, calibration_ids(spec, args.samples_per_task))]
        seqs += [s[-1024:] for s in tok(texts)["input_ids"]]
    pad = tok.pad_token_id or 0
    batches = [pad_batch([seqs[i] for i in b], pad) for b in profile_batches([len(s) for s in seqs], 4096)]
    real = sum(len(s) for s in seqs)
    processed = sum(ids.numel() for ids, _ in batches)

    @torch.inference_mode()
    def bare():
        for ids, mask in batches:
            adapter.base_model()(input_ids=ids, attention_mask=mask, use_cache=False)

    def hooked():
        profile_sequences(adapter, seqs, ["residual", "normed"], 4096, pad)

    def hooked_contexts():  # what `profile` runs: the same statistics plus the top-k contexts
        profile_sequences(adapter, seqs, ["residual", "normed"], 4096, pad, top_k=TOP_K, decode=lambda i: tok.decode([i]))

    @torch.inference_mode()
    def hidden_states():
        for ids, mask in batches:
            model(input_ids=ids, attention_mask=mask, use_cache=False, output_hidden_states=True)

    modes = {
        "bare base forward": bare,
        "hooked profile (2 sites)": hooked,
        f"hooked + top-{TOP_K} contexts (2 sites)": hooked_contexts,
        "full model, output_hidden_states": hidden_states,
    }
    times: dict[str, list[float]] = {k: [] for k in modes}
    bare()  # warm-up
    for _ in range(args.rounds):  # interleaved, so machine noise hits every mode alike
        for name, fn in modes.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"model {info.name}: {len(seqs)} samples, {real} real tokens, {processed} processed, threads {torch.get_num_threads()}")
    for name, t in med.items():
        print(f"  {name:<34} {t:7.2f} s   {real / t:8.0f} real tok/s")
    ratio = med["bare base forward"] / med["hooked profile (2 sites)"]
    speedup = med["full model, output_hidden_states"] / med["hooked profile (2 sites)"]
    print(f"hooked throughput / bare forward      = {ratio:.3f}x   (target >= 0.95x: {'PASS' if ratio >= 0.95 else 'MISS'})")
    # paired per round (the two modes run back to back), so a slow stretch of the machine hits both
    paired = [
        c / h for c, h in zip(times[f"hooked + top-{TOP_K} contexts (2 sites)"], times["hooked profile (2 sites)"], strict=True)
    ]
    overhead = statistics.median(paired) - 1.0
    print(
        f"top-k context bookkeeping overhead      = {overhead:+.1%} (median of {len(paired)} paired rounds: "
        f"{', '.join(f'{r - 1:+.1%}' for r in paired)}; target <= 5%: {'PASS' if overhead <= 0.05 else 'MISS'})"
    )
    print(f"hooked speedup over output_hidden_states = {speedup:.2f}x (target > 1: {'PASS' if speedup > 1 else 'MISS'})")
    print(
        f"real tokens / processed tokens        = {real / processed:.3f}   (target >= 0.90: {'PASS' if real / processed >= 0.9 else 'MISS'})"
    )

    if not args.skip_full:
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            profile(
                ProfileConfig(model=args.model, tasks="all", samples=100, device="cpu"),
                Path(tmp) / "c",
                progress=lambda *a: None,
                loaded=(model, tok, info),
            )
            print(f"full default profile (7 tasks + wikitext x 100 samples, 2 sites): {time.perf_counter() - t:.1f} s wall")


if __name__ == "__main__":
    main()
