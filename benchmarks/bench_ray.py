"""A sweep split into jobs: wall time of a 4-run ``compare`` (2 methods × 2 sparsities) on 2 Ray
actors against 1 local worker process, as a ratio.

    python benchmarks/bench_ray.py                   # SmolLM2 and its committed cache, rte, --limit 16
    python benchmarks/bench_ray.py --limit 64 --tasks rte,boolq --workers 2

Both runs go through ``executors.submit_sweep`` and ``executor.run`` (the path of ``compare --executor``) into fresh
folders (--out, run store, evaluation cache), so each scores its dense model once and loads the
model once per worker. The Ray cluster is started first (``ray.init(num_cpus=workers)``, not
timed, printed); the actors are created inside the timed run, as ``compare --executor ray`` does.
On a machine with W idle cores or GPUs the ratio approaches (1 + 4/W) / (1 + 4) for dense + 4 runs
(0.6 for W = 2); target ≤ 0.75. On 2 shared cores the two actors only share them.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TARGET = 0.75


def load_avg() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def sweep(executor, base: Path, args) -> float:
    from diet_explore.experiments.executors import submit_sweep
    from diet_explore.experiments.jobs import JobStore
    from diet_explore.experiments.results import read_results
    from diet_explore.experiments.sweep import CompareConfig

    config = CompareConfig(
        model=args.model,
        cache=args.cache,
        sparsities=[0.1, 0.2],
        methods=["diet", "random"],
        tasks=args.tasks.split(","),
        limit=args.limit,
        perplexity=False,
        device="cpu",
    )
    store = JobStore(base / "runs")
    start = time.perf_counter()  # what compare --executor does, less the reports written after (milliseconds)
    statuses = executor.run(store, submit_sweep(store, config, base / "out", base / "eval-cache"))
    wall = time.perf_counter() - start
    assert set(statuses.values()) == {"done"}, statuses
    rows = read_results(base / "out")
    assert sorted(r["key"] for r in rows) == ["dense", "diet@0.1", "diet@0.2", "random@0.1", "random@0.2"], rows
    return wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--cache", default=str(ROOT / "cache" / "smollm2-135m"))
    ap.add_argument("--tasks", default="rte")
    ap.add_argument("--limit", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    import ray

    from diet_explore.experiments.executors import LocalExecutor, RayExecutor

    print(f"4-run sweep of {args.model}, tasks {args.tasks}, --limit {args.limit}, on CPU ({os.cpu_count()} cores)")
    print(f"load average before: {load_avg()}")
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        local = sweep(LocalExecutor(1), Path(tmp) / "local", args)
        print(f"1 local worker:   {local:7.1f} s   (load {load_avg()})")
        start = time.perf_counter()
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False, object_store_memory=80 * 1024**2)
        print(f"ray.init:         {time.perf_counter() - start:7.1f} s   (not counted)")
        try:
            on_ray = sweep(RayExecutor(args.workers), Path(tmp) / "ray", args)
        finally:
            ray.shutdown()
        print(f"{args.workers} Ray workers:    {on_ray:7.1f} s   (load {load_avg()})")
    ratio = on_ray / local
    print(f"ratio ray/local: {ratio:.2f} (target ≤ {TARGET}; {'met' if ratio <= TARGET else 'missed'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
