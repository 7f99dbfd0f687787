"""The one clock: every timestamp diet-explore writes (manifests, mask files, runs, jobs) is UTC."""

from __future__ import annotations

import datetime as _dt


def utc_now() -> _dt.datetime:
    """The current time, timezone-aware, in UTC."""
    return _dt.datetime.now(_dt.UTC)


def utc_timestamp(now: _dt.datetime | None = None) -> str:
    """ISO 8601 with seconds, e.g. ``2026-12-01T16:07:00+00:00``: what files record as a time."""
    return (now or utc_now()).isoformat(timespec="seconds")
