"""``diet-explore tasks``: the task registry, with split sizes when the data is installed.

Each task's first documents are also turned into requests, so ``diet-explore tasks --task-file F``
is the quick way to check a new task entry against its data before a model is loaded.
"""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("tasks", help="list the registered tasks (built-in + DIET_EXPLORE_TASKS / --task-file)")
    p.add_argument("--task-file", action="append", default=[], help="extra task registry JSON file(s)")
    p.set_defaults(func=run)


def run(args) -> int:
    from diet_explore.core.errors import DietError
    from diet_explore.tasks.data import check_task_data
    from diet_explore.tasks.registry import load_registry

    problems: list[tuple[str, DietError]] = []
    registry = load_registry(args.task_file)  # a bad --task-file is one error line, not a header and then one
    print(f"{'task':<15} {'format':<16} {'examples':>8}  {'main metric':<12} lm-eval task")
    for name, spec in registry.items():
        try:
            size = str(check_task_data(spec))
        except DietError as exc:
            size = "n/a"
            problems.append((name, exc))
        print(f"{name:<15} {spec.format:<16} {size:>8}  {spec.main_metric:<12} {spec.lm_eval_task or '-'}")
    print(
        "\nlm-eval's own tasks score whole splits, calibration examples included; `diet-explore lmeval-tasks` "
        "writes diet_<task> over the held-out documents eval scores"
    )
    # After the table, so it stays one row per task; these say why a task shows n/a.
    for name, exc in problems:
        print(f"\n{name}: {exc.message}" + (f"\n  hint: {exc.hint}" if exc.hint else ""))
    return 0
