"""Small argument helpers shared by the subcommands."""

from __future__ import annotations

import argparse


def add_device_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps")
    parser.add_argument("--dtype", default=None, help="float32 (CPU default), bfloat16 (GPU default), float16")


def csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


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


def check_output_file(path: str | None, flag: str) -> None:
    """Refuse an output file that cannot be written before any work starts: failing after minutes
    of evaluation would lose them. Missing parent folders are fine (atomic writes create them)."""
    import os
    from pathlib import Path

    from diet_explore.errors import DietError

    if path is None:
        return
    target = Path(path)
    if target.is_dir():
        raise DietError(f"{flag} {path} is a folder", f"give a file path, e.g. {flag} {target / 'out.json'}")
    parent = target.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise DietError(f"{flag} {path}: {parent} is a file, not a folder", "choose a path under a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DietError(f"{flag} {path}: {parent} is not writable", "choose a path in a folder you can write to")
