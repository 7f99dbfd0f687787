"""The default quick evaluation end to end, as a user runs it: dense + pruned SmolLM2, 7 tasks x 50
held-out examples + wiki perplexity, one `diet-explore eval` process, wall time from start to exit.

The pruned model is the README's: the SmolLM2 cache's DIET mask at 20% (exact, a multiple of 9),
pruned to a folder beforehand (not timed). Each repeat runs the default (two CPU workers side by
side, 1024-token passes) and a baseline (by default the previous defaults: one worker, 4096-token
passes), in alternating order, and prints both times and their ratio.

    python benchmarks/bench_quick_eval.py                      # default vs the previous defaults
    python benchmarks/bench_quick_eval.py --baseline "--workers 1"
    python benchmarks/bench_quick_eval.py --repeats 2 --baseline ""   # default only
    python benchmarks/bench_quick_eval.py --baseline "" --warm        # cold default and warm (dense cached)
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 120.0


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "diet_explore", *args]


def timed_eval(folder: Path, extra: list[str], out: Path, label: str = "") -> float:
    cmd = cli("eval", "--model", str(folder), "--compare-to", "smollm2-135m", "--limit", "50", "--predictions", str(out), *extra)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"eval failed ({' '.join(cmd)}):\n{proc.stderr[-2000:]}")
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("wall time")), "")
    print(f"  {label or ' '.join(extra) or 'defaults'}: {wall:.1f} s end to end ({line.strip()})", flush=True)
    return wall


def _predictions(path: Path) -> tuple[list, list]:
    """(every dense/pruned pred and pred_norm, every log-likelihood list) of a predictions file."""
    preds, lls = [], []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        for side in ("dense", "pruned"):
            preds.append((rec[f"{side}_pred"], rec[f"{side}_pred_norm"]))
            lls.append(rec[f"{side}_lls"])
    return preds, lls


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument(
        "--baseline", default="--workers 1 --batch-tokens 4096", help="eval options to compare the defaults against ('': none)"
    )
    ap.add_argument("--warm", action="store_true", help="also time a run whose dense results are cached")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        mask, folder = Path(tmp, "mask.json"), Path(tmp, "smollm2-diet20")
        for cmd in (
            cli(
                "mask", "--cache", "cache/smollm2-135m", "--sparsity", "0.2", "--exact", "--multiple-of", "9", "--out", str(mask)
            ),
            cli("prune", "--model", "smollm2-135m", "--mask", str(mask), "--out", str(folder)),
        ):
            subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
        print("default quick eval: dense + pruned SmolLM2 (20%, 459 dims), 7 tasks x 50 + wiki perplexity")
        times: dict[str, list[float]] = {"default": [], "baseline": []}
        for r in range(args.repeats):
            order = ["default", "baseline"] if r % 2 == 0 else ["baseline", "default"]
            for kind in order:
                if kind == "baseline" and not args.baseline.strip():
                    continue
                extra = ["--no-eval-cache"] + ([] if kind == "default" else shlex.split(args.baseline))
                times[kind].append(
                    timed_eval(folder, extra, Path(tmp, f"{kind}{r}.jsonl"), "defaults" if kind == "default" else args.baseline)
                )
        runs = [_predictions(Path(tmp, f"{k}{r}.jsonl")) for r in range(args.repeats) for k in times if times[k]]
        default = statistics.median(times["default"])
        print(
            f"\ndefault: median {default:.1f} s over {len(times['default'])} run(s) "
            f"(target <= {TARGET_S:.0f} s: {'met' if default <= TARGET_S else f'missed by {default - TARGET_S:.1f} s'})"
        )
        if times["baseline"]:
            base = statistics.median(times["baseline"])
            print(f"baseline ({args.baseline}): median {base:.1f} s -> the defaults take {default / base:.3f}x the time")
        if args.warm:  # fill a fresh cache with the dense model only, then time the pruned-vs-dense run
            cache = ["--eval-cache", str(Path(tmp, "eval-cache"))]
            subprocess.run(
                cli("eval", "--model", "smollm2-135m", "--limit", "50", *cache), cwd=ROOT, check=True, capture_output=True
            )
            warm = timed_eval(folder, cache, Path(tmp, "warm.jsonl"), "warm (dense results cached)")
            runs.append(_predictions(Path(tmp, "warm.jsonl")))
            print(f"warm: {warm:.1f} s, {warm / default:.3f}x the cold default")
        worst = max((abs(a - b) for run in runs[1:] for x, y in zip(runs[0][1], run[1]) for a, b in zip(x, y)), default=0.0)
        print(
            f"predictions identical across runs: {all(run[0] == runs[0][0] for run in runs)}; "
            f"max |log-likelihood difference| {worst:.1e}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
