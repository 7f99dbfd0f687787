"""One exception type for every user-facing failure.

The CLI prints ``DietError`` as a single clear line (what was wrong, and how to fix it) and exits 2;
the app shows it in an error box. Anything else escaping is a bug.
"""

from __future__ import annotations


class DietError(Exception):
    """A user-facing error: ``message`` names the bad value, ``hint`` says how to fix it."""

    def __init__(self, message: str, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message}\n  hint: {hint}")
