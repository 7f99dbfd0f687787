"""Configuration dataclasses share one JSON round-trip, used by the CLI, the app and cache manifests."""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import re
import shlex
from pathlib import Path
from typing import Any, TypeVar

from diet_explore.core.atomic import loads_json
from diet_explore.core.errors import DietError

T = TypeVar("T", bound="JsonConfig")


def check_seed(value: Any, flag: str) -> int:
    """A seed as numpy takes it: a whole number ≥ 0 (a negative one made ``default_rng`` raise a
    ValueError after work, and files, had been done). ``flag`` names it in the message."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise DietError(f"{flag} must be a whole number ≥ 0, got {value!r}", f"e.g. {flag} 0")
    return int(value)


_WHOLE_NUMBER = re.compile(r"[+-]?[0-9]+")  # ASCII digits: int(), float() and \\d also read "٥" or "５" as 5


def parse_int(text: Any) -> int | None:
    """A whole number written with the ASCII digits 0-9 (optional sign and surrounding spaces), else None.
    The one rule for numbers typed by a user (CLI options, ``--dim``, share links): ``int()`` would
    also take other scripts' digits and underscores."""
    text = str(text).strip()
    if not _WHOLE_NUMBER.fullmatch(text):
        return None
    try:
        return int(text)
    except ValueError:  # more digits than Python converts
        return None


def parse_float(text: Any) -> float | None:
    """A number written in ASCII (``0.2``, ``1e-3``, ``inf``), else None: as ``parse_int``, never
    another script's digits, which ``float()`` takes (``"０.２"`` is 0.2), nor underscores."""
    text = str(text).strip()
    if not text.isascii() or "_" in text:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def is_whole_number(value: Any) -> bool:
    """A JSON value read as a count or an id: an int, and not a bool (``True == 1`` in Python)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    """A JSON value read as a measurement: an int or float that is finite, and not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def cli_flag(name: str) -> str:
    """The CLI flag that sets a config field (``last_k`` -> ``--last-k``): the configs name their
    fields after the flags, so a message about a field names what a user typed."""
    return "--" + name.replace("_", "-")


def command_lines(command: str) -> str:
    """A shell command for display: each ``--flag`` and its values on a line of their own, joined by
    backslash-newline, so pasted into a shell it runs as the one line it was. A long command wrapped
    by the page broke a flag across lines ("-" at one line's end, "-tasks" on the next)."""
    lines: list[list[str]] = [[]]
    for token in shlex.split(command):
        if token.startswith("--") and lines[-1]:
            lines.append([])
        lines[-1].append(token)
    return " \\\n    ".join(shlex.join(line) for line in lines)


class JsonConfig:
    """Mixin for ``@dataclass`` configs: ``to_dict``/``from_dict``/``to_json``/``from_json``.

    ``from_dict`` rejects unknown keys by name, so a typo in a saved config is an error, not a default.
    """

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names)
        if unknown:
            raise DietError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}", f"valid fields: {', '.join(sorted(names))}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls: type[T], text: str | Path) -> T:
        if isinstance(text, Path):
            text = text.read_text()
        try:
            data = loads_json(text)
        except json.JSONDecodeError as exc:
            raise DietError(f"{cls.__name__} JSON is invalid ({exc})", "check the file") from None
        return cls.from_dict(data)
