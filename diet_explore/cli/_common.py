"""Small argument helpers shared by the subcommands."""

from __future__ import annotations

import argparse


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
