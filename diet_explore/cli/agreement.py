"""``diet-explore agreement``: how much the tasks agree on which dims to prune."""

from __future__ import annotations

import json

from diet_explore.cli._common import cache_tasks, float_arg, int_arg, refuse_ignored
from diet_explore.core.errors import DietError


def register(sub) -> None:
    p = sub.add_parser("agreement", help="Jaccard / Spearman agreement of per-task prune sets")
    p.add_argument("--cache", required=True, help="score cache folder")
    p.add_argument("--sparsity", type=float_arg, default=0.2)
    p.add_argument("--tasks", default="all", help="'all' (every voting task in the cache, the default) or a comma list")
    p.add_argument("--site", default="residual")
    p.add_argument("--layer-agg", default="mean", help="mean (paper), max, last_k")
    p.add_argument("--last-k", type=int_arg, default=None, help="layers averaged by --layer-agg last_k (default 4)")
    p.add_argument("--top", type=int_arg, default=10, help="exact overlaps shown in the table")
    p.add_argument(
        "--format", default="table", choices=("table", "json", "csv"), help="csv: long table metric,task_a,task_b,value"
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from diet_explore.masking.agreement import agreement_report
    from diet_explore.masking.build import MaskConfig
    from diet_explore.masking.importance import LAYER_AGGS, check_choice
    from diet_explore.masking.selection import check_sparsity
    from diet_explore.profiling.cache import load_cache

    args.sparsity = check_sparsity(args.sparsity)
    check_choice("layer aggregation", args.layer_agg, LAYER_AGGS)
    refuse_ignored(("--last-k", args.last_k, "--layer-agg", args.layer_agg, "last_k"))
    if args.top < 0:  # a negative count sliced rows off the end of the table
        raise DietError(f"--top must be 0 or more, got {args.top}", "e.g. --top 10")
    cache = load_cache(args.cache)
    tasks = cache_tasks(args.tasks)
    for t in tasks or cache.task_names[:1]:
        cache.layer_scores(t, args.site)  # DietError naming an unknown task or site
    last_k = MaskConfig.last_k if args.last_k is None else args.last_k  # the mask's default, 4
    rep = agreement_report(cache, args.sparsity, tasks, args.site, args.layer_agg, last_k)
    if args.format == "json":
        print(json.dumps(rep.to_json_dict(), indent=2))
    elif args.format == "csv":
        print("metric,task_a,task_b,value")
        for name, df in (("jaccard", rep.jaccard), ("spearman", rep.spearman)):
            for a in rep.tasks:
                for b in rep.tasks:
                    print(f"{name},{a},{b},{df.loc[a, b]:.6f}")
    else:
        if not rep.prune.any():  # two empty sets have Jaccard 1 (masking.selection.jaccard), which says nothing here
            print(
                f"note: sparsity {args.sparsity:g} prunes no dim, so every pruned set is empty and the Jaccard of 1.0 means nothing"
            )
        _print_table(rep, args.top)
    return 0


def _print_table(rep, top: int) -> None:
    import numpy as np

    print(f"Jaccard of pruned sets at sparsity {rep.sparsity:g}:")
    print(rep.jaccard.round(3).to_string())
    print("\nSpearman correlation of dim scores:")
    print(rep.spearman.round(3).to_string())
    hist = np.bincount(rep.vote_counts, minlength=len(rep.tasks) + 1)
    print("\nprune votes per dim: " + ", ".join(f"{k} task{'' if k == 1 else 's'}: {n}" for k, n in enumerate(hist)))
    print(f"\nlargest exact overlaps (of {len(rep.upset)} combinations):" + ("" if len(rep.upset) else " none"))
    for row in rep.upset.head(top).itertuples():
        print(f"  {row.size:6d}  {' & '.join(row.combination)}")
