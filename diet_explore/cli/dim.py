"""``diet-explore dim``: one hidden dimension's card, as the app's Dimension page shows it."""

from __future__ import annotations

import json

from diet_explore.cli._common import int_arg
from diet_explore.cli.mask import add_mask_config_args, config_from_args


def register(sub) -> None:
    p = sub.add_parser("dim", help="why one hidden dim is kept or pruned, with its top-activating contexts")
    add_mask_config_args(p)
    p.add_argument("--dim", required=True, help="the hidden dimension's index, e.g. 507")
    p.add_argument("--resamples", type=int_arg, default=200, help="bootstrap resamples for the keep frequency (0: skip)")
    p.add_argument("--contexts", type=int_arg, default=5, help="top-activating contexts printed per task (--json has all)")
    p.add_argument("--json", action="store_true", help="print the card as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from diet_explore.core.errors import DietError
    from diet_explore.masking.dims import check_dim, dim_card
    from diet_explore.masking.importance import ScorePrecompute
    from diet_explore.masking.stability import bootstrap_masks
    from diet_explore.profiling.cache import load_cache

    config = config_from_args(args)
    for flag, value, example in (("--resamples", args.resamples, 200), ("--contexts", args.contexts, 5)):
        if value < 0:
            raise DietError(f"{flag} must be 0 or more, got {value}", f"e.g. {flag} {example} (0: none)")
    pre = ScorePrecompute(load_cache(args.cache))
    dim = check_dim(args.dim, pre.cache.hidden_size)
    config.validate(pre.cache)
    stability = None
    if args.resamples and config.method not in ("random", "magnitude"):
        stability = bootstrap_masks(pre, config, n_resamples=args.resamples, seed=args.seed)
    card = dim_card(pre, config, dim, stability)
    if args.json:
        print(json.dumps(card.to_json_dict(), indent=2, ensure_ascii=False))
    else:
        print(card.to_text(args.contexts))
    return 0
