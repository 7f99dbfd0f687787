"""``diet-explore mask``: build a DIET (or baseline) mask from a score cache and save it as JSON."""

from __future__ import annotations

import argparse
import os
import sys

from diet_explore.cli._common import cache_tasks, float_arg, int_arg, refuse_ignored
from diet_explore.core.errors import DietError


def add_mask_config_args(p: argparse.ArgumentParser) -> None:
    """The ``MaskConfig`` flags, shared by ``mask`` and ``stability`` (names = field names)."""
    from diet_explore.masking.baselines import BASELINE_METHODS
    from diet_explore.masking.vote import MERGE_METHODS

    p.add_argument("--cache", required=True, help="score cache folder (from `diet-explore profile`)")
    p.add_argument("--sparsity", type=float_arg, default=0.2, help="fraction of hidden dims to prune, in [0, 1)")
    p.add_argument(
        "--threshold", type=float_arg, default=None, help="τ: keep a dim when ≥ τ of the task weight keeps it (default 0.5)"
    )
    p.add_argument("--weights", default="", help="task weights, e.g. boolq=2,rte=0.5 (or boolq:2); missing = 1")
    p.add_argument("--tasks", default="all", help="'all' (every voting task in the cache, the default) or a comma list")
    # no argparse choices: a method that is no mask (slicegpt) is refused by MaskConfig with its reason
    p.add_argument("--method", default="diet", help=f"one of: {', '.join(MERGE_METHODS + BASELINE_METHODS)}")
    p.add_argument("--site", default="residual", help="residual (the paper's) or normed: where the scores were profiled")
    p.add_argument("--layer-agg", default="mean", help="mean (paper), max, last_k")
    p.add_argument("--last-k", type=int_arg, default=None, help="layers averaged by --layer-agg last_k (default 4)")
    p.add_argument("--normalize", default="none", help="none, zscore, rank, sum (mean_score merge, exact tie-breaks)")
    p.add_argument(
        "--exact",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="keep exactly the target count (vote order, then normalised score)",
    )
    p.add_argument("--multiple-of", type=int_arg, default=1, help="round the kept count to a multiple (e.g. 8)")
    p.add_argument("--seed", type=int_arg, default=0, help="random baseline / resampling seed")
    p.add_argument("--single-task", default=None, help="task for --method single")
    p.add_argument("--held-out-task", default=None, help="task left out by --method leave_one_out")


def config_from_args(args):
    from diet_explore.masking.baselines import TASKLESS_METHODS
    from diet_explore.masking.build import MaskConfig, parse_weights
    from diet_explore.masking.vote import THRESHOLD_METHODS

    refuse_ignored(
        ("--last-k", args.last_k, "--layer-agg", args.layer_agg, "last_k"),
        ("--single-task", args.single_task, "--method", args.method, "single"),
        ("--held-out-task", args.held_out_task, "--method", args.method, "leave_one_out"),
    )
    # flags a method reads nothing of were accepted and silently ignored (as --last-k was): refused
    if args.threshold is not None and args.method not in THRESHOLD_METHODS:
        raise DietError(
            f"--threshold {args.threshold:g} applies only with --method {' or '.join(THRESHOLD_METHODS)} (the τ of the vote), "
            f"but --method is {args.method}",
            "leave --threshold out"
            + (
                " (union keeps a dim any task keeps, intersection one every task keeps)"
                if args.method in ("union", "intersection")
                else ""
            ),
        )
    if args.method in TASKLESS_METHODS and (args.weights.strip() or args.tasks.strip() != "all"):
        flag = "--weights" if args.weights.strip() else "--tasks"
        raise DietError(f"{flag} applies to the voting tasks, and --method {args.method} has no vote", f"leave {flag} out")
    return MaskConfig(
        sparsity=args.sparsity,
        threshold=MaskConfig.threshold if args.threshold is None else args.threshold,
        weights=parse_weights(args.weights),
        tasks=cache_tasks(args.tasks),
        method=args.method,
        site=args.site,
        layer_agg=args.layer_agg,
        last_k=MaskConfig.last_k if args.last_k is None else args.last_k,
        normalize=args.normalize,
        exact=args.exact,
        multiple_of=args.multiple_of,
        seed=args.seed,
        single_task=args.single_task,
        held_out_task=args.held_out_task,
    )


def register(sub) -> None:
    p = sub.add_parser("mask", help="build a pruning mask from a score cache")
    add_mask_config_args(p)
    p.add_argument("--npy", action="store_true", help="also write the bool mask as <out>.npy")
    p.add_argument("--out", required=True, help="mask JSON file to write")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from diet_explore.core.atomic import check_replaceable_file, check_writable
    from diet_explore.masking.build import build_mask
    from diet_explore.masking.maskfile import is_mask_file, is_npy_file, mask_file_from_result, save_mask
    from diet_explore.profiling.cache import load_cache

    config = config_from_args(args)
    check_writable(args.out, "--out", folder=False)
    if args.npy and Path(args.out).suffix == ".npy":  # the .npy would overwrite the JSON just written
        raise DietError(f"--out {args.out} ends in .npy, which --npy writes next to the JSON", "e.g. --out mask.json --npy")
    check_replaceable_file(args.out, "--out", is_mask_file, "a diet-explore mask file")  # a re-run replaces its mask
    if args.npy:
        npy = Path(args.out).with_suffix(".npy")
        if os.path.realpath(npy) == os.path.realpath(args.out):  # a symlink x.npy -> x.json: the .npy would replace the mask
            raise DietError(
                f"the --npy output {npy} leads to --out {args.out} itself (a symlink), so it would replace the mask just written",
                "remove that link, or choose another --out name",
            )
        check_replaceable_file(npy, "--npy output", is_npy_file, "a .npy file")
    cache = load_cache(args.cache)
    result = build_mask(cache, config)
    path = save_mask(mask_file_from_result(result, cache), args.out, npy=args.npy)
    print(
        f"{config.method} mask for {cache.model_name}: kept {result.n_keep} of {result.hidden_size} dims, "
        f"actual sparsity {result.sparsity:.4f} (target {config.sparsity:.10g})"  # :g printed 0.9999999 as "target 1"
    )
    if result.n_keep == result.hidden_size and config.sparsity > 0:  # e.g. --multiple-of 576 rounds 461 up to 576
        print(
            f"note: nothing is pruned: --multiple-of {config.multiple_of} rounds the kept count up to every dim", file=sys.stderr
        )
    print(f"wrote {path}" + (f" and {path.with_suffix('.npy')}" if args.npy else ""))
    return 0
