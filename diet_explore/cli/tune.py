"""``diet-explore tune``: search the vote's settings on tuning examples, report on test examples it never saw."""

from __future__ import annotations

import argparse

from diet_explore.cli._common import add_device_args, csv_list, float_arg, int_arg, progress_printer
from diet_explore.models.builtin import DEFAULT_MODEL
from diet_explore.tasks.data import DEFAULT_SEED


def register(sub) -> None:
    from diet_explore.experiments.tune import BASELINES, OBJECTIVES, PRUNERS, WARMUP_TRIALS

    p = sub.add_parser(
        "tune",
        help="Optuna search over task weights, site and layer aggregation (and τ with --no-exact); the best setting vs the paper default "
        "and baselines on a held-out test split (needs diet-explore[tune]; resumable)",
    )
    p.add_argument("--model", default=DEFAULT_MODEL, help="built-in name, local folder or hub id (the cache's model)")
    p.add_argument("--cache", required=True, help="the model's score cache")
    p.add_argument("--name", default="tune", help="the study: <runs>/tune/<name>.db; the same name continues it")
    p.add_argument("--resume", action="store_true", help="continue the study --name (refused when it does not exist)")
    p.add_argument("--sparsity", type=float_arg, default=0.2, help="target sparsity")
    p.add_argument("--multiple-of", type=int_arg, default=1, help="round the kept count to a multiple of this")
    p.add_argument(
        "--exact",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="every candidate keeps the target count (default; τ is then not read, so not searched); "
        "--no-exact: search τ, each mask keeps the vote's own count",
    )
    p.add_argument(
        "--trials", type=int_arg, default=None, help="finished trials the study reaches (default 30 without --minutes)"
    )
    p.add_argument("--minutes", type=float_arg, default=None, help="wall-clock budget of this run's search")
    p.add_argument("--tasks", default="all", help="'all' or a comma list of the cache's tasks to evaluate on")
    p.add_argument("--limit", type=int_arg, default=50, help="held-out examples per task, split into tuning and test")
    p.add_argument("--test-fraction", type=float_arg, default=0.5, help="share of each task's examples kept for the test")
    p.add_argument("--split-seed", type=int_arg, default=0, help="the tuning/test split (recorded in the report)")
    p.add_argument("--objective", default="main", choices=list(OBJECTIVES), help="paired Δ vs dense to maximise")
    p.add_argument(
        "--fix",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="keep a setting out of the search, e.g. "
        "--fix boolq=2 (a task's weight), --fix site=residual, --fix layer_agg=mean, --fix threshold=0.5 (with --no-exact)",
    )
    p.add_argument(
        "--pruner",
        default=PRUNERS[0],
        choices=list(PRUNERS),
        help=f"stops trials that trail at the same examples (halving: successive halving on the block ends after a "
        f"{WARMUP_TRIALS}-trial warm-up)",
    )
    p.add_argument("--prefilter", type=int_arg, default=0, help="draw N candidates per trial, evaluate the live proxy's best")
    p.add_argument("--sampler-seed", type=int_arg, default=0, help="seed of the search's sampler (TPE)")
    p.add_argument("--baselines", default=",".join(BASELINES), help=f"scored on the test set: {', '.join(BASELINES)}")
    p.add_argument("--seed", type=int_arg, default=DEFAULT_SEED, help="held-out draw")
    p.add_argument("--mask-seed", type=int_arg, default=0, help="random baseline seed")
    p.add_argument("--runs", default=None, help="run store folder (default: <repo>/runs); the study is in <runs>/tune/")
    add_device_args(p)
    p.set_defaults(func=run, resumes=lambda args: True)  # finished trials stay in the study's database


def run(args) -> int:
    from diet_explore.experiments.runs import RunStore
    from diet_explore.experiments.tune import TuneConfig, parse_fixed, require_optuna, run_tune, search_space
    from diet_explore.profiling.cache import load_cache

    require_optuna()  # one line, before anything else, when the extra is missing
    store = RunStore(args.runs) if args.runs else RunStore()
    store.check("--runs")
    trials = args.trials if args.trials is not None or args.minutes is not None else 30
    config = TuneConfig(
        model=args.model,
        cache=args.cache,
        name=args.name,
        sparsity=args.sparsity,
        multiple_of=args.multiple_of,
        exact=args.exact,
        trials=trials,
        minutes=args.minutes,
        tasks=csv_list(args.tasks) if args.tasks != "all" else "all",
        limit=args.limit,
        test_fraction=args.test_fraction,
        split_seed=args.split_seed,
        objective=args.objective,
        pruner=args.pruner,
        prefilter=args.prefilter,
        sampler_seed=args.sampler_seed,
        baselines=csv_list(args.baselines),
        seed=args.seed,
        mask_seed=args.mask_seed,
        device=args.device,
        dtype=args.dtype,
    )
    config.fixed = parse_fixed(args.fix, search_space(config, load_cache(args.cache)))
    out = run_tune(config, store.root, resume=args.resume, progress=progress_printer("tune", steps=20))
    best = out["best"]
    print(f"best: trial {best['trial']}, {best['label']} ({best['n_keep']} dims kept)")
    for line in out["sentences"]:
        print(line)
    s = out["savings"]
    print(
        f"pruner: {s['scored']:,} of {s['full']:,} example-evaluations run ({s['saved']:,} saved) over {s['trials']} "
        f"evaluated trials; {s['reused']} trial(s) reused the value of a trial with the same mask"
    )
    if out["importance"]:
        print("importance (fANOVA): " + ", ".join(f"{k} {v:.2f}" for k, v in out["importance"].items()))
    for name, note in out["notes"].items():
        print(f"{name}: not compared ({note})")
    print(f"wrote {store.root}/tune/{config.name}/report.json (per-example test results included)")
    return 0
