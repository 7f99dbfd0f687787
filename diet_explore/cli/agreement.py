"""``diet-explore agreement``: how much the tasks agree on which dims to prune."""

from __future__ import annotations

import json

from diet_explore.cli._common import int_arg
from diet_explore.cli.mask import add_mask_config_args, config_from_args
from diet_explore.core.errors import DietError


def register(sub) -> None:
    p = sub.add_parser("agreement", help="Jaccard / Spearman agreement of per-task prune sets, and what the mask prunes")
    add_mask_config_args(p)  # the mask whose vote is shown: the same flags as `mask`
    p.add_argument("--top", type=int_arg, default=10, help="exact overlaps shown in the table")
    p.add_argument(
        "--format", default="table", choices=("table", "json", "csv"), help="csv: long table metric,task_a,task_b,value"
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from diet_explore.masking.agreement import agreement_report
    from diet_explore.masking.importance import ScorePrecompute
    from diet_explore.masking.voteview import vote_view
    from diet_explore.profiling.cache import load_cache

    config = config_from_args(args)
    if args.top < 0:  # a negative count sliced rows off the end of the table
        raise DietError(f"--top must be 0 or more, got {args.top}", "e.g. --top 10")
    pre = ScorePrecompute(load_cache(args.cache))
    for t in config.tasks or pre.cache.task_names[:1]:
        pre.cache.layer_scores(t, config.site)  # DietError naming an unknown task or site
    vote = vote_view(pre, config)  # the vote exactly as `mask` builds it
    rep = agreement_report(pre, config.sparsity, vote.tasks, config.site, config.layer_agg, config.last_k)
    mask = {"label": config.label(), "pruned": vote.n_pruned, "kept": vote.n_keep, "hidden_size": vote.hidden_size}
    if args.format == "json":
        print(json.dumps(rep.to_json_dict() | {"mask": mask}, indent=2, ensure_ascii=False))
    elif args.format == "csv":
        print("metric,task_a,task_b,value")
        for name, df in (("jaccard", rep.jaccard), ("spearman", rep.spearman)):
            for a in rep.tasks:
                for b in rep.tasks:
                    print(f"{name},{a},{b},{df.loc[a, b]:.6f}")
    else:
        if not rep.prune.any():  # two empty sets have Jaccard 1 (masking.selection.jaccard), which says nothing here
            print(
                f"note: sparsity {config.sparsity:g} prunes no dim, so every pruned set is empty and the Jaccard of 1.0 means nothing"
            )
        _print_table(rep, args.top, vote)
    return 0


def _print_table(rep, top: int, vote) -> None:
    import numpy as np

    print(f"Jaccard of pruned sets at sparsity {rep.sparsity:g}:")
    print(rep.jaccard.round(3).to_string())
    print("\nSpearman correlation of dim scores:")
    print(rep.spearman.round(3).to_string())
    n = len(rep.tasks)
    kept = np.bincount(vote.prune_votes[vote.keep], minlength=n + 1)
    pruned = np.bincount(vote.prune_votes[~vote.keep], minlength=n + 1)
    print(
        f"\nthe mask ({vote.config.label()}) prunes {vote.n_pruned} of {vote.hidden_size} dims; prune votes per dim "
        "(kept / pruned by the mask): "
        + ", ".join(f"{k} task{'' if k == 1 else 's'}: {a} / {b}" for k, (a, b) in enumerate(zip(kept, pruned, strict=True)))
    )
    print(f"\nlargest exact overlaps (of {len(rep.upset)} combinations):" + ("" if len(rep.upset) else " none"))
    for row in rep.upset.head(top).itertuples():
        print(f"  {row.size:6d}  {' & '.join(row.combination)}")
