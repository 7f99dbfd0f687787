"""Paired metrics: the time of one call (the app refreshes running results every few seconds) and the
95% CI widths they give at 50 and 100 examples per task.

    python benchmarks/bench_metrics.py [SWEEP ...] [--repeats 7]

1. ``paired_metrics`` on 7 tasks × 50 / 100 / 400 examples (the first n of each task of a sweep's
   dense and first pruned row when a sweep with per-example log-likelihoods is given, else
   synthetic scores of the same shapes): median time, target ≤ 0.5 s at 7 × 400 (a tenth of a
   5 s refresh), ratio time / target;
2. with a sweep: for every pruned run, the CI width of each metric at the first 50 and 100 examples
   per task (``compare`` draws a task's examples as a prefix of one seeded walk, so these are the
   examples ``--limit 50`` and ``--limit 100`` score) and at all of them: per-task median and the
   average over tasks, the median over runs; in points for acc, acc_norm, agreement, nats for the others.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from diet_explore.evaluation.metrics import PAIRED_METRICS, paired_examples, paired_metrics
from diet_explore.evaluation.scoring import ChoiceScores
from diet_explore.experiments.reports import load_sweep
from diet_explore.tasks.registry import resolve_tasks

TARGET_S = 0.5
SPECS = {s.name: s for s in resolve_tasks("all")}
POINTS = {"acc", "acc_norm", "agreement", "main"}


def synthetic(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    dense, pruned = {}, {}
    for t in SPECS:
        d, p = [], []
        for i in range(n):
            c = 2 if t in ("boolq", "rte", "winogrande") else 4
            texts = ["x" * int(rng.integers(3, 60)) for _ in range(c)]
            lls = list(-rng.uniform(2, 60, c))
            d.append(ChoiceScores(t, i, lls, [False] * c, [5] * c, int(rng.integers(0, c)), texts))
            p.append(ChoiceScores(t, i, [x + rng.normal() for x in lls], [False] * c, [5] * c, d[-1].gold, texts))
        dense[t], pruned[t] = d, p
    return dense, pruned


def head(examples: dict, n: int) -> dict:
    return {k: v[:n] for k, v in examples.items()}


def median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("sweeps", nargs="*", help="sweep folders or results files with per-example log-likelihoods")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    sweeps = [load_sweep(p) for p in args.sweeps]
    real = next((s for s in sweeps if s.dense and s.pruned and "examples" in next(iter(s.dense["tasks"].values()))), None)
    ok = True
    print("1. time of one paired_metrics call, 7 tasks")
    for n in (50, 100, 400):
        if real is not None:
            d = {t: head(v["examples"], n) for t, v in real.dense["tasks"].items()}
            p = {t: head(v["examples"], n) for t, v in real.pruned[0]["tasks"].items()}
            fn = lambda d=d, p=p: paired_examples(d, p, SPECS)
            what = (
                f"{real.name} {real.pruned[0]['key']}, first {n} per task ({sum(len(v['doc_id']) for v in d.values())} examples)"
            )
        else:
            d, p = synthetic(n)
            fn = lambda d=d, p=p: paired_metrics(d, p, SPECS)
            what = f"synthetic, {n} per task"
        t = median_time(fn, args.repeats)
        line = f"   {what:<62} {t * 1000:8.1f} ms"
        if n == 400:
            ok &= t <= TARGET_S
            line += f"   target {TARGET_S * 1000:.0f} ms   ratio {t / TARGET_S:.2f}   {'PASS' if t <= TARGET_S else 'FAIL'}"
        print(line)
    for sweep in sweeps:
        if not sweep.has_examples():
            print(f"\n2. {sweep.name}: no per-example log-likelihoods, no widths")
            continue
        print(f"\n2. 95% CI widths, {sweep.name} ({len(sweep.pruned)} runs; median over runs)")
        print(f"   {'metric':<18} {'n/task':>7} {'median task width':>18} {'average width':>14}")
        for n in (50, 100, None):
            dense = {t: head(v["examples"], n or 10**9) for t, v in sweep.dense["tasks"].items()}
            widths: dict[str, list[tuple[float, float]]] = {m: [] for m in (*PAIRED_METRICS, "main")}
            for row in sweep.pruned:
                if "examples" not in next(iter(row["tasks"].values())):
                    continue
                res = paired_examples(dense, {t: head(v["examples"], n or 10**9) for t, v in row["tasks"].items()}, SPECS)
                for m in widths:
                    per = [e[m]["ci_high"] - e[m]["ci_low"] for e in res["tasks"].values() if e[m]["ci_low"] is not None]
                    avg = res["average"][m]
                    if per and avg["ci_low"] is not None:
                        widths[m].append((float(np.median(per)), avg["ci_high"] - avg["ci_low"]))
            for m, w in widths.items():
                if not w:
                    continue
                scale, unit = (100, "pt") if m in POINTS else (1, "nats")
                task_w = statistics.median(x for x, _ in w) * scale
                avg_w = statistics.median(y for _, y in w) * scale
                label = "all" if n is None else str(n)
                print(f"   {m:<18} {label:>7} {task_w:15.3f} {unit:<4} {avg_w:10.3f} {unit}")
        pairs = [(a, b) for a, b, _ in sweep.versus("diet") if "examples" in next(iter(b["tasks"].values()))]
        if pairs:
            print(f"\n3. DIET minus each method, {sweep.name}: the paired difference and whether its CI excludes 0")
            print(f"   {'comparison':<28} {'n/task':>7} {'Δ avg main [95% CI] (pt)':>30} {'Δ gold LL/char [95% CI] (nats)':>34}")
        for a, b in pairs:
            for n in (50, 100, None):
                res = paired_examples(
                    {t: head(v["examples"], n or 10**9) for t, v in b["tasks"].items()},
                    {t: head(v["examples"], n or 10**9) for t, v in a["tasks"].items()},
                    SPECS,
                )["average"]
                cells = []
                for m, scale, fmt in (("main", 100, "+.1f"), ("gold_ll_per_char", 1, "+.4f")):
                    e = res[m]
                    star = " *" if e["ci_low"] > 0 or e["ci_high"] < 0 else "  "
                    cells.append(f"{scale * e['delta']:{fmt}} [{scale * e['ci_low']:{fmt}}, {scale * e['ci_high']:{fmt}}]{star}")
                label = "all" if n is None else str(n)
                print(
                    f"   {'diet − ' + b['method'] + '@' + format(b['sparsity'], 'g'):<28} {label:>7} {cells[0]:>30} {cells[1]:>34}"
                )
        if pairs:
            print("   (* the interval excludes 0)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
