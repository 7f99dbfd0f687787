"""diet-explore tune on SmolLM2 and its committed cache: what the pruner saves, what a search costs,
and whether the live proxy would make a good pre-filter.

    python benchmarks/bench_tune.py                     # both: 30 trials at 0.2, 3 tasks x --limit 40
    python benchmarks/bench_tune.py --only search       # or: --only recall

1. ``search``: a 30-trial study (TPE, the default pruner: successive halving on the block ends after a
   warm-up; ``--pruner hyperband`` for Optuna's) at sparsity 0.2, every mask at the exact kept count
   (a multiple of the 9 heads), on ``--limit`` held-out examples per task split half tuning, half
   test. Prints the example-evaluations the trials ran against running every trial to the end
   (target: the pruner saves ≥ 20%), how many trials it stopped and where, the wall time of the
   search and of the final test-set evaluation (default, random and wiki; ``--slicegpt`` adds SliceGPT,
   whose rotation alone takes about 10 minutes on 2 shared cores), the load average, and the report's
   sentences. Small limits make every Δ noisy: this measures the machinery, not whether tuning helps.
2. ``recall``: the same search with no pruner, so every trial has its full
   tuning-set value; prints the live proxy's best-k recall (``tune.proxy_recall``) against chance.
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
CACHE = ROOT / "cache" / "smollm2-135m"
MODEL = "smollm2-135m"
SAVED_TARGET = 0.20  # share of example-evaluations the pruner should save


def load_avg() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def search(root: Path, loaded, args, pruner: str | None, name: str) -> tuple[dict, float]:
    from diet_explore.experiments import tune

    cfg = tune.TuneConfig(
        model=MODEL,
        cache=str(CACHE),
        name=name,
        sparsity=args.sparsity,
        multiple_of=9,
        trials=args.trials,
        limit=args.limit,
        tasks=args.tasks.split(",") if args.tasks != "all" else "all",
        pruner=pruner or tune.PRUNERS[0],
        device="cpu",
        baselines=(["default", "random", "wiki"] + ["slicegpt"] * args.slicegpt) if pruner != "none" else ["default"],
    )
    model, tok, info = loaded
    t0 = time.perf_counter()
    marks: dict[str, float] = {}

    def progress(f: float, msg: str) -> None:
        if msg.startswith("final") and "final" not in marks:
            marks["final"] = time.perf_counter()

    out = tune.run_tune(cfg, root, model=model, tokenizer=tok, info=info, progress=progress, log=lambda m: None)
    total = time.perf_counter() - t0
    out["_search_s"] = marks.get("final", t0 + total) - t0
    out["_final_s"] = total - out["_search_s"]
    return out, total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--limit", type=int, default=40, help="held-out examples per task (half tuning, half test)")
    ap.add_argument("--slicegpt", action="store_true", help="SliceGPT in the final test-set evaluation too")
    ap.add_argument("--pruner", default=None, help="the study's pruner (default: tune's default)")
    ap.add_argument("--tasks", default="arc_easy,winogrande,openbookqa", help="evaluated tasks (every cache task votes)")
    ap.add_argument("--only", choices=["search", "recall"], default=None, help="one of the two measurements")
    ap.add_argument("--sparsity", type=float, default=0.2)
    ap.add_argument("--k", type=int, default=5)
    args = ap.parse_args()
    from diet_explore.experiments import tune
    from diet_explore.models.loading import load_model

    tune.require_optuna()
    loaded = load_model(MODEL, device="cpu")
    print(f"load before: {load_avg()}")
    ok = True
    with tempfile.TemporaryDirectory(prefix="bench-tune-") as tmp:
        if args.only != "recall":
            ok &= report_search(Path(tmp), loaded, args)
        if args.only != "search":
            report_recall(Path(tmp), loaded, args)
    print(f"load after: {load_avg()}")
    return 0 if ok else 1


def report_search(tmp: Path, loaded, args) -> bool:
    from diet_explore.experiments import tune

    out, total = search(tmp, loaded, args, args.pruner, "bench")
    s = out["savings"]
    share = s["saved"] / max(s["full"], 1)
    rows = tune.trial_rows(tune.load_study(tune.study_paths(tmp, "bench")[0], "bench"))
    stops = sorted(r["examples"] for r in rows if r["state"] == "pruned")
    print(
        f"search: {args.trials} trials at sparsity {args.sparsity:g} (pruner {args.pruner or tune.PRUNERS[0]}), "
        f"{args.tasks} x {args.limit} held-out examples "
        f"({sum(len(v) for v in out['split']['tuning'].values())} tuning, "
        f"{sum(len(v) for v in out['split']['test'].values())} test), SmolLM2-135M on CPU"
    )
    print(
        f"  pruner: {s['scored']:,} of {s['full']:,} example-evaluations run, {s['saved']:,} saved "
        f"({share:.0%}; target >= {SAVED_TARGET:.0%}: ratio {share / SAVED_TARGET:.2f}); "
        f"{len(stops)} trials stopped early, after {', '.join(map(str, stops)) or '-'} examples in all; "
        f"{s['reused']} trial(s) reused an earlier trial's mask (counted in neither)"
    )
    print(
        f"  wall time: search {out['_search_s']:.0f} s, final test evaluation {out['_final_s']:.0f} s, total {total:.0f} s "
        f"(load average now {load_avg()})"
    )
    print(f"  best: {out['best']['label']} ({out['best']['n_keep']} dims kept)")
    for line in out["sentences"]:
        print(f"  {line}")
    for name, note in out["notes"].items():
        print(f"  {name}: not compared ({note})")
    return share >= SAVED_TARGET


def report_recall(tmp: Path, loaded, args) -> None:
    from diet_explore.experiments import tune

    _, total = search(tmp, loaded, args, "none", "bench-full")
    db, _ = tune.study_paths(tmp, "bench-full")
    rows = tune.trial_rows(tune.load_study(db, "bench-full"))
    r = tune.proxy_recall(rows, args.k)
    print(
        f"recall: {r['n']} complete trials with distinct masks run to the end ({total:.0f} s); the live proxy's "
        f"best-{r['k']} recall {r['recall']:.2f} (chance {r['chance']:.2f})"
    )


if __name__ == "__main__":
    sys.exit(main())
