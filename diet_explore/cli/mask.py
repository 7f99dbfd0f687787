"""``diet-explore mask``: build a DIET (or baseline) mask from a score cache and save it as JSON."""

from __future__ import annotations

import argparse
import os
import sys

from diet_explore.cli._common import cache_tasks, float_arg, int_arg
from diet_explore.core.errors import DietError

#: The settings of the mask itself (not which method, sparsity or tasks): what `compare` takes too.
MASK_SETTING_FLAGS = ("threshold", "weights", "site", "layer_agg", "last_k", "normalize", "exact", "multiple_of")


def add_mask_setting_args(p: argparse.ArgumentParser, exact: bool = False, multiple_of: int | None = 1) -> None:
    """The flags of ``MASK_SETTING_FLAGS`` (names = ``MaskConfig`` field names), one definition for
    `mask`, `stability`, `dim`, `agreement` and `compare` (which defaults to ``exact`` and to the
    model's own multiple, ``multiple_of`` None)."""
    p.add_argument(
        "--threshold", type=float_arg, default=None, help="τ: keep a dim when ≥ τ of the task weight keeps it (default 0.5)"
    )
    p.add_argument("--weights", default="", help="task weights, e.g. boolq=2,rte=0.5 (or boolq:2); missing = 1")
    p.add_argument("--site", default="residual", help="residual (the paper's) or normed: where the scores were profiled")
    p.add_argument("--layer-agg", default="mean", help="mean (paper), max, last_k")
    p.add_argument("--last-k", type=int_arg, default=None, help="layers averaged by --layer-agg last_k (default 4)")
    p.add_argument("--normalize", default="none", help="none, zscore, rank, sum (mean-score merge, vote tie-breaks)")
    p.add_argument(
        "--exact",
        action=argparse.BooleanOptionalAction,
        default=exact,
        help="keep exactly the target count (vote order, then normalised score)"
        + ("; --no-exact: the vote's own count (default)" if not exact else " (default); --no-exact: the vote's own count"),
    )
    p.add_argument(
        "--multiple-of",
        type=int_arg,
        default=multiple_of,
        help="round the kept count to a multiple (e.g. 8)"
        + (
            ""
            if multiple_of is not None
            else "; default: what the model needs to save and reload; 1: the counts as tuned, evaluated in memory "
            "(--save then refuses a count the model cannot save)"
        ),
    )


def mask_settings_from_args(args) -> dict[str, object]:
    """``MaskConfig`` fields from the ``add_mask_setting_args`` flags (a flag not given: the field's default)."""
    from diet_explore.masking.config import MaskConfig, parse_weights

    fields: dict[str, object] = {
        "threshold": MaskConfig.threshold if args.threshold is None else args.threshold,
        "weights": parse_weights(args.weights),
        "site": args.site,
        "layer_agg": args.layer_agg,
        "last_k": MaskConfig.last_k if args.last_k is None else args.last_k,
        "normalize": args.normalize,
        "exact": args.exact,
    }
    if args.multiple_of is not None:
        fields["multiple_of"] = args.multiple_of
    return fields


def add_mask_config_args(p: argparse.ArgumentParser) -> None:
    """The ``MaskConfig`` flags, shared by ``mask``, ``stability``, ``dim`` and ``agreement`` (names = field names)."""
    from diet_explore.masking.config import METHOD_ALIASES, METHODS

    p.add_argument("--cache", required=True, help="score cache folder (from `diet-explore profile`)")
    p.add_argument("--sparsity", type=float_arg, default=0.2, help="fraction of hidden dims to prune, in [0, 1)")
    p.add_argument("--tasks", default="all", help="'all' (every voting task in the cache, the default) or a comma list")
    # no argparse choices: a method that is no mask (slicegpt) is refused by MaskConfig with its reason
    p.add_argument(
        "--method",
        default="diet",
        help=f"one of: {', '.join(METHODS)} (older names {', '.join(METHOD_ALIASES)} are read as theirs)",
    )
    add_mask_setting_args(p)
    p.add_argument("--seed", type=int_arg, default=0, help="random baseline / resampling seed")
    p.add_argument("--single-task", default=None, help="task for --method single-task")
    p.add_argument("--held-out-task", default=None, help="task left out by --method leave-one-out")


#: MaskConfig field -> its flag's name in ``args`` when that is not the field's own name.
_FLAG_OF = {"layer_agg": "--layer-agg", "last_k": "--last-k", "multiple_of": "--multiple-of"}


def given_settings(args) -> dict[str, object]:
    """The ``MaskConfig`` flags given on the command line (a value other than the flag's default;
    ``--threshold`` and ``--last-k`` default to None, so any value of theirs was given)."""
    from diet_explore.masking.config import MaskConfig

    default = MaskConfig()
    given: dict[str, object] = {}
    for name in ("threshold", "last_k", "single_task", "held_out_task"):
        if getattr(args, name) is not None:
            given[name] = getattr(args, name)
    if args.weights.strip():
        given["weights"] = args.weights
    if args.tasks.strip() != "all":
        given["tasks"] = args.tasks
    for name in ("site", "layer_agg", "normalize", "exact", "multiple_of"):
        if getattr(args, name) != getattr(default, name):
            given[name] = getattr(args, name)
    return given


def refuse_ignored_settings(config, given: dict[str, object]) -> None:
    """Refuse a flag the method does not read (``config.ignored_settings``), naming why: such a flag
    was accepted and silently ignored. ``--seed`` is never refused: it also seeds the resampling of
    ``stability`` and ``dim``."""
    from diet_explore.masking.config import ignored_settings

    ignored = ignored_settings(config)
    for name, value in given.items():
        if name not in ignored:
            continue
        flag = _FLAG_OF.get(name, "--" + name.replace("_", "-"))
        shown = "" if isinstance(value, bool) else f" {value:g}" if isinstance(value, float) else f" {value}"
        needs = {
            "last_k": ("--layer-agg", config.layer_agg, "last_k"),
            "single_task": ("--method", config.method, "single-task"),
            "held_out_task": ("--method", config.method, "leave-one-out"),
        }.get(name)
        if needs:  # a flag that another flag's value turns on: name that value
            other, now, wanted = needs
            raise DietError(
                f"{flag}{shown} applies only with {other} {wanted}, but {other} is {now}",
                f"add {other} {wanted}, or leave {flag} out",
            )
        raise DietError(f"{flag}{shown} does nothing with --method {config.method}: {ignored[name]}", f"leave {flag} out")


def config_from_args(args):
    from diet_explore.masking.config import MaskConfig, check_mask_method

    check_mask_method(args.method)  # an unknown or non-mask method is named before any other flag
    config = MaskConfig(
        sparsity=args.sparsity,
        tasks=cache_tasks(args.tasks),
        method=args.method,
        seed=args.seed,
        single_task=args.single_task,
        held_out_task=args.held_out_task,
        **mask_settings_from_args(args),
    )
    refuse_ignored_settings(config, given_settings(args))
    return config


def nothing_pruned_cause(result) -> str:
    """Why a mask at a sparsity above 0 keeps every dim: the sparsity is under one dim, the vote keeps
    every dim (e.g. τ 0), or the rounding to --multiple-of goes up to every dim."""
    from diet_explore.masking.config import THRESHOLD_METHODS
    from diet_explore.masking.selection import keep_count
    from diet_explore.masking.vote import passes_vote

    c, d = result.config, result.hidden_size
    if keep_count(d, c.sparsity) == d:
        return f"--sparsity {c.sparsity:.10g} is less than one of the {d} dims"
    if c.method in THRESHOLD_METHODS and not c.exact and passes_vote(result.votes, c.threshold).all():
        return f"the vote at τ {c.threshold:g} keeps every dim (every dim has at least that share of the task weight)"
    return f"--multiple-of {c.multiple_of} rounds the kept count up to every dim"


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
    if result.n_keep == result.hidden_size and config.sparsity > 0:
        print(f"note: nothing is pruned: {nothing_pruned_cause(result)}", file=sys.stderr)
    print(f"wrote {path}" + (f" and {path.with_suffix('.npy')}" if args.npy else ""))
    return 0
