"""The station's one timestamp format, used by every room that stamps a record (frames,
decisions, status), so that logs, journal and wire agree to the millisecond."""

from __future__ import annotations

from datetime import datetime, timezone


def iso(ts: float) -> str:
    """UTC ISO 8601 with milliseconds and a Z, the contract's one timestamp format."""
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
