"""``diet-explore profile``: score every hidden dimension per task into a cache folder."""

from __future__ import annotations

from diet_explore.cli._common import add_device_args, csv_list, int_arg
from diet_explore.models.builtin import DEFAULT_MODEL
from diet_explore.tasks.data import DEFAULT_SEED


def register(sub) -> None:
    p = sub.add_parser("profile", help="profile per-task activations into a score cache (resumable)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="built-in name, local folder or hub id")
    p.add_argument("--tasks", default="all", help="'all' or a comma list (see `diet-explore tasks`)")
    p.add_argument(
        "--task-file",
        action="append",
        default=[],
        help="extra task registry JSON file(s), as for `diet-explore tasks` (or DIET_EXPLORE_TASKS)",
    )
    p.add_argument("--samples", type=int_arg, default=100, help="calibration examples per task (seeded draw)")
    p.add_argument("--seed", type=int_arg, default=DEFAULT_SEED, help="the seeded calibration draw (eval holds out the rest)")
    p.add_argument("--sites", default="residual,normed", help="residual and/or normed")
    p.add_argument(
        "--max-length", type=int_arg, default=1024, help="tokens per calibration example (the last ones, the answer end)"
    )
    p.add_argument(
        "--max-batch-tokens",
        type=int_arg,
        default=4096,
        help="padded tokens per forward pass on CPU (a GPU sizes passes from its free memory)",
    )
    p.add_argument("--no-generic", action="store_true", help="skip the wiki-text calibration (wiki baseline)")
    p.add_argument("--out", required=True, help="cache folder; an existing one is resumed")
    p.add_argument(
        "--add-contexts",
        action="store_true",
        help="also re-run finished tasks that have no top-activating contexts (a cache from before schema 2) and "
        "add them, keeping the cached scores (refused if the re-run's scores differ beyond fp32 rounding)",
    )
    p.add_argument(
        "--skip-first-token",
        action="store_true",
        help="leave each sequence's first token out of the scores (the model still sees it): on a model without a "
        "BOS token the first token is the attention sink, the largest activation of most dims at the residual site",
    )
    add_device_args(p)
    p.set_defaults(func=run, resumes=lambda args: True)  # finished tasks stay in the cache folder


def run(args) -> int:
    from diet_explore.profiling.cache import read_manifest
    from diet_explore.profiling.runner import ProfileConfig, pending_work, profile

    config = ProfileConfig(
        model=args.model,
        tasks=args.tasks,
        samples=args.samples,
        seed=args.seed,
        sites=csv_list(args.sites),
        max_length=args.max_length,
        max_batch_tokens=args.max_batch_tokens,
        generic=not args.no_generic,
        device=args.device,
        dtype=args.dtype,
        task_files=list(args.task_file),
        add_contexts=args.add_contexts,
        skip_first_token=args.skip_first_token,
    )
    if not pending_work(config, args.out):  # a complete cache: no model load, no lock, no write
        manifest = read_manifest(args.out)
        when = (manifest.get("last_run") or {}).get("date") or manifest.get("updated") or manifest.get("created")
        print(
            f"nothing to do: {args.out} already holds {', '.join(manifest['tasks'])} with these settings "
            f"(profiled {when}); nothing was written"
        )
        return 0
    cache = profile(config, args.out)
    total = sum(cache.manifest["tasks"][t].get("wall_time_s", 0.0) for t in cache.tasks)
    print(
        f"cache {args.out}: {cache.model_name}, hidden {cache.hidden_size}, {cache.num_layers} layers, "
        f"tasks {', '.join(cache.tasks)}; profiling time of its tasks {total:.1f} s (this run and any earlier ones)"
    )
    return 0
