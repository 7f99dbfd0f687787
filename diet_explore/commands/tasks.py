"""``diet-explore tasks``: the task registry, with split sizes when the data is installed."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("tasks", help="list the registered tasks (built-in + DIET_EXPLORE_TASKS / --task-file)")
    p.add_argument("--task-file", action="append", default=[], help="extra task registry JSON file(s)")
    p.set_defaults(func=run)


def run(args) -> int:
    from diet_explore.data import load_task_data
    from diet_explore.errors import DietError
    from diet_explore.tasks.registry import load_registry

    print(f"{'task':<15} {'format':<16} {'examples':>8}  lm-eval task")
    for name, spec in load_registry(args.task_file).items():
        try:
            size = str(len(load_task_data(spec)))
        except DietError:
            size = "n/a"
        print(f"{name:<15} {spec.format:<16} {size:>8}  {spec.lm_eval_task or '-'}")
    return 0
