"""Small argument helpers shared by the subcommands."""

from __future__ import annotations

import argparse


def add_device_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps")
    parser.add_argument("--dtype", default=None, help="float32 (CPU default), bfloat16 (GPU default), float16")


def csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]
