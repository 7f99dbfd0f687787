"""``diet-explore compare``: methods × sparsities, pruned and evaluated on the same held-out examples."""

from __future__ import annotations

from pathlib import Path

from diet_explore.cli._common import add_device_args, csv_list, int_arg, progress_printer
from diet_explore.cli.mask import add_mask_setting_args, mask_settings_from_args
from diet_explore.models.builtin import DEFAULT_MODEL
from diet_explore.tasks.data import DEFAULT_SEED


def register(sub) -> None:
    from diet_explore.experiments.results import METHODS

    p = sub.add_parser("compare", help="sweep masking methods and sparsities: paper-style table, plot, run store (resumable)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="built-in name, local folder or hub id (the cache's model)")
    p.add_argument("--cache", required=True, help="the model's score cache")
    p.add_argument("--sparsity", default="0.1,0.2", help="comma list of target sparsities")
    p.add_argument("--methods", default="diet,random,magnitude,wiki", help=f"comma list of: {', '.join(METHODS)}")
    p.add_argument("--tasks", default="all", help="'all' or a comma list (see `diet-explore tasks`)")
    p.add_argument("--limit", type=int_arg, default=50, help="held-out examples per task")
    p.add_argument(
        "--clip-limit",
        action="store_true",
        help="--limit is an upper bound: a task with fewer held-out examples (RTE, ARC-Challenge) uses all it has",
    )
    p.add_argument("--seed", type=int_arg, default=DEFAULT_SEED, help="evaluation draw")
    p.add_argument("--mask-seed", type=int_arg, default=0, help="random baseline seed")
    # the mask every run builds, with the same flags as `mask` (each run sets its method and sparsity);
    # --exact by default: every method keeps the same count
    add_mask_setting_args(p, exact=True, multiple_of=None)
    p.add_argument("--no-perplexity", action="store_true", help="skip the held-out wiki perplexity")
    p.add_argument("--ppl-windows", type=int_arg, default=32, help="held-out wiki windows of 128 tokens")
    p.add_argument("--runs", default=None, help="run store folder (default: <repo>/runs)")
    p.add_argument(
        "--eval-cache", default=None, help="cached per-model results, shared with eval (default: <data home>/eval-cache)"
    )
    p.add_argument("--no-eval-cache", action="store_true", help="evaluate the dense model even if its results are cached")
    p.add_argument("--out", required=True, help="output folder (re-running resumes)")
    p.add_argument(
        "--save",
        default=None,
        metavar="DIR",
        help="also keep every pruned model as a plain Hugging Face folder under DIR (one per method and sparsity)",
    )
    add_device_args(p)
    p.add_argument(
        "--executor",
        choices=("local", "ray"),
        default=None,
        help="run the sweep as one job per (method, sparsity) on --workers local processes or Ray actors "
        "(ray: pip install 'diet-explore[ray]'); default: in this process",
    )
    p.add_argument("--workers", type=int_arg, default=1, help="with --executor: how many workers (one per GPU on Ray)")
    p.set_defaults(func=run, resumes=lambda args: True)  # finished runs stay in --out (results.jsonl)


def compare_config(args):
    """The ``CompareConfig`` compare's flags give (also what ``jobs submit compare`` queues)."""
    from diet_explore.core.config import check_seed, parse_float
    from diet_explore.core.errors import DietError
    from diet_explore.experiments.sweep import CompareConfig
    from diet_explore.masking.config import MaskConfig

    check_seed(args.mask_seed, "--mask-seed")  # named as given (the mask calls its seed --seed)
    sparsities = [parse_float(s) for s in csv_list(args.sparsity)]
    if None in sparsities:
        raise DietError(f"bad --sparsity {args.sparsity!r}: comma-separated numbers in the digits 0-9", "e.g. --sparsity 0.1,0.2")
    config = CompareConfig(
        model=args.model,
        cache=args.cache,
        sparsities=sparsities,
        methods=csv_list(args.methods),
        tasks=csv_list(args.tasks) if args.tasks != "all" else "all",
        limit=args.limit,
        clip_limit=args.clip_limit,
        seed=args.seed,
        mask=MaskConfig(seed=args.mask_seed, **mask_settings_from_args(args)),
        round_to_model=args.multiple_of is None,  # --multiple-of N rounds to N instead of the model's multiple
        perplexity=not args.no_perplexity,
        ppl_windows=args.ppl_windows,
        device=args.device,
        dtype=args.dtype,
    )
    return config


def run(args) -> int:
    from diet_explore.core.errors import DietError
    from diet_explore.evaluation.evalcache import EvalCache
    from diet_explore.experiments.runs import RunStore
    from diet_explore.experiments.sweep import run_compare

    config = compare_config(args)
    if args.runs:  # the run store would read compare's config.json and results as run records, and warn forever
        out, runs = Path(args.out).resolve(), Path(args.runs).resolve()
        if runs == out or out in runs.parents:
            raise DietError(
                f"--runs {args.runs} is inside --out {args.out}, which holds the sweep's own files",
                "give the run store a folder of its own, e.g. --runs runs",
            )
    if args.save:
        from diet_explore.core.atomic import check_writable
        from diet_explore.experiments.saved_models import check_saveable_sweep

        check_writable(args.save, "--save", folder=True)  # before the sweep, not after it
        check_saveable_sweep(config)  # a count the model cannot save (--multiple-of 1): refused now, not after
    if args.executor:  # one job per (method, sparsity), merged into --out
        from diet_explore.experiments.executors import make_executor, run_sweep
        from diet_explore.experiments.jobs import JobStore

        executor = make_executor(args.executor, args.workers)
        run_sweep(config, args.out, executor, JobStore(args.runs), args.eval_cache, not args.no_eval_cache)
        print((Path(args.out) / "table.md").read_text())
        print(f"wrote {args.out}/table.csv, table.md, sweep.html; runs in the run store")
        return _save(config, args.save)
    run_compare(
        config,
        args.out,
        store=RunStore(args.runs) if args.runs else None,
        progress=progress_printer("compare", steps=100),
        eval_cache=None if args.no_eval_cache else EvalCache(args.eval_cache),
    )
    print((Path(args.out) / "table.md").read_text())
    print(f"wrote {args.out}/table.csv, table.md, sweep.html; runs in the run store")
    return _save(config, args.save)


def _save(config, save_dir: str | None) -> int:
    if save_dir:
        from diet_explore.experiments.saved_models import save_sweep_models

        save_sweep_models(config, save_dir)
    return 0
