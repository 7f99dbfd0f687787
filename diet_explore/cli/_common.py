"""Small argument helpers shared by the subcommands."""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help says its default (none for a flag, an unset value or a help that already
    says it), and the examples epilog keeps its lines as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            not action.option_strings
            or action.nargs == 0  # --flag / --no-flag: on or off
            or default is None
            or default is argparse.SUPPRESS
            or default == []
            or "default" in text.lower()
        ):
            return text
        return f"{text} (default: %(default)s)"

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith(EXAMPLES_HEADER):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


EXAMPLES_HEADER = "examples:"

#: One example per command, shown at the end of its --help (a test parses each one).
EXAMPLES: dict[str, list[str]] = {
    "models": ["diet-explore models", "diet-explore models --install smollm2-135m"],
    "tasks": ["diet-explore tasks", "diet-explore tasks --task-file my_tasks.json"],
    "profile": ["diet-explore profile --model smollm2-135m --tasks all --samples 100 --out cache/smollm2-135m"],
    "mask": ["diet-explore mask --cache cache/smollm2-135m --sparsity 0.2 --multiple-of 9 --out masks/diet20.json"],
    "agreement": ["diet-explore agreement --cache cache/smollm2-135m --sparsity 0.2"],
    "stability": ["diet-explore stability --cache cache/smollm2-135m --sparsity 0.2"],
    "dim": ["diet-explore dim --cache cache/smollm2-135m --sparsity 0.2 --dim 12"],
    "prune": ["diet-explore prune --model smollm2-135m --mask masks/diet20.json --out pruned/diet20"],
    "eval": ["diet-explore eval --model pruned/diet20 --compare-to smollm2-135m --cache cache/smollm2-135m --limit 50"],
    "lmeval-tasks": ["diet-explore lmeval-tasks --cache cache/smollm2-135m --mask pruned/diet20 --out lmeval-tasks"],
    "compare": ["diet-explore compare --cache cache/smollm2-135m --sparsity 0.1,0.2 --out results/compare"],
    "jobs": ["diet-explore jobs", "diet-explore jobs --resume 3"],
    "tune": ["diet-explore tune --cache cache/smollm2-135m --sparsity 0.2 --trials 20"],
    "app": ["diet-explore app --cache cache/smollm2-135m"],
}


def examples_epilog(command: str) -> str | None:
    lines = EXAMPLES.get(command)
    return "\n".join([EXAMPLES_HEADER, *(f"  {line}" for line in lines)]) if lines else None


def add_device_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps")
    parser.add_argument("--dtype", default=None, help="float32 (CPU default), bfloat16 (GPU default), float16")


def int_arg(text: str) -> int:
    """``type=`` of every whole-number option: the digits 0-9 only (``core.config.parse_int``)."""
    from diet_explore.core.config import parse_int

    value = parse_int(text)
    if value is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number written with the digits 0-9, e.g. 4")
    return value


def float_arg(text: str) -> float:
    """``type=`` of every number option: ASCII only (``core.config.parse_float``; ``float()`` takes "０.２")."""
    from diet_explore.core.config import parse_float

    value = parse_float(text)
    if value is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number written with the digits 0-9, e.g. 0.2")
    return value


def refuse_ignored(*rules: tuple[str, object, str, str, str]) -> None:
    """Refuse a flag given where it does nothing: each rule is ``(flag, value, needed flag, its
    value now, the value the flag needs)``, e.g. ``("--last-k", 8, "--layer-agg", "mean", "last_k")``.
    A flag's value is None when it was not given (so its default is not mistaken for a choice)."""
    from diet_explore.core.errors import DietError

    for flag, value, needs, now, wanted in rules:
        if value is not None and now != wanted:
            raise DietError(
                f"{flag} {value} applies only with {needs} {wanted}, but {needs} is {now}",
                f"add {needs} {wanted}, or leave {flag} out",
            )


def csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def cache_tasks(text: str | None) -> list[str] | None:
    """``--tasks`` of a command that reads a score cache: ``all`` (the default) is every voting task
    of the cache (None), as ``all`` is every task for profile and eval; else the comma list."""
    if text is None or text.strip() == "all":
        return None
    names = csv_list(text)
    if "all" in names:
        from diet_explore.core.errors import DietError

        raise DietError(f"--tasks {text}: 'all' is every task and goes alone", "give --tasks all, or list the tasks")
    return names


def progress_printer(name: str, steps: int = 10):
    """A ``progress(fraction, message)`` callback printing to stderr each time ``fraction`` crosses
    one of ``steps`` equal steps (stdout stays the result, for pipes)."""
    import sys

    state = {"last": -1}

    def progress(fraction: float, message: str) -> None:
        step = int(fraction * steps)
        if step != state["last"]:
            state["last"] = step
            print(f"  {name}: {fraction:4.0%} {message}", file=sys.stderr, flush=True)

    return progress
