"""``diet-explore lmeval-tasks``: lm-eval task files over the quick evaluation's held-out documents."""

from __future__ import annotations

from diet_explore.cli._common import csv_list, int_arg
from diet_explore.tasks.data import DEFAULT_SEED


def register(sub) -> None:
    p = sub.add_parser(
        "lmeval-tasks",
        help="write lm-eval task YAMLs + data over the held-out documents eval scores (offline; calibration left out)",
    )
    p.add_argument("--out", required=True, help="folder to write (diet_<task>.yaml and <task>.jsonl per task)")
    p.add_argument("--tasks", default="all", help="'all' or a comma list (see `diet-explore tasks`)")
    p.add_argument("--cache", default=None, help="score cache whose calibration ids are left out (as eval --cache)")
    p.add_argument(
        "--mask",
        action="append",
        default=None,
        metavar="PATH",
        help="a mask file or pruned folder whose recorded calibration ids are left out too (repeatable)",
    )
    p.add_argument("--seed", type=int_arg, default=DEFAULT_SEED, help="eval's --seed: the draw shared with calibration")
    p.add_argument(
        "--limit", type=int_arg, default=None, help="write only eval's first N held-out documents (default: every one)"
    )
    p.add_argument("--model", default=None, help="also print the lm_eval commands for this model folder")
    p.add_argument("--overwrite", action="store_true", help="replace a folder this command wrote before")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from diet_explore.evaluation.lmeval_tasks import write_lmeval_tasks
    from diet_explore.pruning.saving import MASK_FILE
    from diet_explore.tasks.lmeval_commands import hand_off

    masks = [str(Path(m, MASK_FILE)) if Path(m).is_dir() else m for m in args.mask or []]
    tasks = csv_list(args.tasks) if args.tasks.strip() != "all" else "all"
    written = write_lmeval_tasks(args.out, tasks, args.cache, masks, args.seed, args.limit, args.overwrite)
    counts = ", ".join(f"{t} {n}" for t, n in written.documents.items())
    print(f"wrote {len(written.documents)} lm-eval tasks to {written.folder} (held-out documents: {counts})")
    model = args.model or "<model folder>"
    print("run (add --limit N for eval's first N documents):")
    for line in hand_off({"model": model}, written.folder, written.task_names):
        print(f"  {line}")
    return 0
