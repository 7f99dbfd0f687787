"""One way to print a number in a table or a log line: rounded to the digits it is shown with.

Accuracies are shown in percentage points (``points``), perplexities with one decimal (``perplexity``);
a value that rounds to zero prints as ``0.0``, never ``-0.0`` or ``+0.0`` (which read as a loss or a
gain); a missing value (None, NaN) prints as ``—``.
"""

from __future__ import annotations

import math

MISSING = "—"
PPL_DIGITS = 1  # 29.4 -> 274.0: the first decimal already carries no decision
POINT_DIGITS = 1  # accuracies in percentage points: 62.0, a delta +2.4


def number(value: float | None, digits: int = 1, *, signed: bool = False, minus: str = "-") -> str:
    """``value`` with ``digits`` decimals (a sign on positives when ``signed``); ``minus`` is the
    negative sign to print (the real minus sign on a page, "-" in plain text)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    text = f"{value:{'+' if signed else ''}.{digits}f}"
    if float(text) == 0.0:  # -0.04 -> "-0.0" and +0.04 -> "+0.0" read as a loss and a gain
        return f"{0.0:.{digits}f}"
    return text.replace("-", minus)


def points(share: float | None, digits: int = POINT_DIGITS, *, signed: bool = False, minus: str = "-") -> str:
    """A share (0-1: an accuracy, or a difference of two) in percentage points."""
    return number(None if share is None else 100.0 * share, digits, signed=signed, minus=minus)


def perplexity(value: float | None) -> str:
    return number(value, PPL_DIGITS)
