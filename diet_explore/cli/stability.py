"""``diet-explore stability``: bootstrap the calibration samples and see how much the mask moves."""

from __future__ import annotations

import json

from diet_explore.cli._common import csv_list, int_arg
from diet_explore.cli.mask import add_mask_config_args, config_from_args


def register(sub) -> None:
    p = sub.add_parser("stability", help="bootstrap stability of a mask and the sample-count curve")
    add_mask_config_args(p)
    p.add_argument("--resamples", type=int_arg, default=200, help="bootstrap resamples")
    p.add_argument("--counts", default="10,25,50,100", help="sample counts for the curve (without replacement)")
    p.add_argument("--curve-resamples", type=int_arg, default=50, help="random draws per point of the sample-count curve")
    p.add_argument("--format", default="table", choices=("table", "json"), help="print a table or JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from diet_explore.core.config import parse_int
    from diet_explore.core.errors import DietError
    from diet_explore.masking.importance import ScorePrecompute
    from diet_explore.masking.stability import bootstrap_masks, sample_count_curve
    from diet_explore.profiling.cache import load_cache

    config = config_from_args(args)
    counts = [parse_int(c) for c in csv_list(args.counts)]
    if None in counts:
        raise DietError(f"bad --counts {args.counts!r}: expected whole numbers in the digits 0-9", "e.g. --counts 10,25,50,100")
    if not counts:
        raise DietError(f"--counts {args.counts!r} names no sample count", "e.g. --counts 10,25,50,100")
    if min(counts) < 1:
        raise DietError(
            f"--counts {args.counts!r}: a sample count must be at least 1, got {min(counts)}", "e.g. --counts 10,25,50,100"
        )
    pre = ScorePrecompute(load_cache(args.cache))
    boot = bootstrap_masks(pre, config, n_resamples=args.resamples, seed=args.seed)
    curve = sample_count_curve(pre, config, counts, n_resamples=args.curve_resamples, seed=args.seed)
    unstable = int(boot.unstable.sum())
    notes = boot.notes + curve.attrs.get("notes", [])
    if args.format == "json":
        print(
            json.dumps(
                {
                    "mean_jaccard": boot.mean_jaccard,
                    "std_jaccard": boot.std_jaccard,
                    "n_resamples": boot.n_resamples,
                    "n_samples": boot.n_samples,
                    "unstable_dims": unstable,
                    "curve": curve.to_dict(orient="records"),
                    "notes": notes,
                },
                indent=2,
            )
        )
        return 0
    print(
        f"bootstrap ({boot.n_resamples} resamples of {boot.n_samples} samples per task): mean Jaccard of pruned "
        f"sets vs the full-sample mask {boot.mean_jaccard:.4f} ± {boot.std_jaccard:.4f}"
    )
    print(f"dims kept in between 5% and 95% of resamples: {unstable}")
    print("\nsample-count curve (subsets without replacement):")
    if curve.empty:
        print("  no point: every --counts value was skipped (see the notes)")
    else:
        print(curve.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    for note in notes:
        print(f"note: {note}")
    return 0
