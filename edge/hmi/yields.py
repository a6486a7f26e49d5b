"""Yield per hour and per shift in the line's local time, from quarter-hour counts.

The index counts per quarter hour (UTC); local hours and shifts are assigned here with
zoneinfo, so a daylight-saving change or a 30-minute time zone gives the right buckets
(every offset in use is a multiple of 15 minutes). A shift lasts until the next one starts,
and one that starts before midnight owns the small hours after it (night shift).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo

from edge.hmi.config import Shift
from edge.hmi.queries import QUARTER_S


@dataclass(frozen=True)
class Bucket:
    label: str
    start: datetime  # local
    counts: tuple[int, int, int]  # accepted, rejected, faults

    @property
    def total(self) -> int:
        return sum(self.counts)

    @property
    def yield_pct(self) -> float | None:
        return None if not self.total else 100.0 * self.counts[0] / self.total


def zone(name: str | None) -> tzinfo:
    if name:
        return ZoneInfo(name)
    local = datetime.now().astimezone().tzinfo
    assert local is not None
    return local


def _local(q: int, tz: tzinfo) -> datetime:
    return datetime.fromtimestamp(q * QUARTER_S, tz)


def _quarters(since: float, until: float) -> range:
    return range(int(since // QUARTER_S), int(-(-until // QUARTER_S)))


def _add(into: dict, key: object, c: list[int] | None) -> None:
    cur = into.setdefault(key, [0, 0, 0])
    if c:
        for i in range(3):
            cur[i] += c[i]


def hourly(counts: dict[int, list[int]], since: float, until: float, tz: tzinfo) -> list[Bucket]:
    """One bucket per local hour from since to until, empty hours included."""
    acc: dict[tuple[datetime, object], list[int]] = {}
    for q in _quarters(since, until):
        dt = _local(q, tz)
        # keyed with the offset too: the hour a clock goes back through happens twice and is two bars
        _add(acc, (dt.replace(minute=0), dt.utcoffset()), counts.get(q))
    return [Bucket(f"{k:%H}:00", k, (v[0], v[1], v[2])) for (k, _off), v in acc.items()]


def shift_of(dt: datetime, shifts: tuple[Shift, ...]) -> tuple[datetime, Shift]:
    """The shift a local time falls in, and the local date-time that shift started."""
    minute = dt.hour * 60 + dt.minute
    day = dt.replace(hour=0, minute=0, second=0, microsecond=0)
    current = [s for s in shifts if s.minute <= minute]
    if current:
        s = current[-1]
    else:  # before the day's first shift: the previous day's last shift goes on
        s, day = shifts[-1], day - timedelta(days=1)
    return day.replace(hour=s.minute // 60, minute=s.minute % 60), s


def per_shift(counts: dict[int, list[int]], since: float, until: float, tz: tzinfo,
              shifts: tuple[Shift, ...]) -> list[Bucket]:
    acc: dict[tuple[datetime, str], list[int]] = {}
    for q in _quarters(since, until):
        start, s = shift_of(_local(q, tz), shifts)
        _add(acc, (start.replace(tzinfo=None), s.name), counts.get(q))
    return [Bucket(f"{start:%a %d.%m} {name}", start, (v[0], v[1], v[2])) for (start, name), v in acc.items()]


def shift_window(now: float, tz: tzinfo, shifts: tuple[Shift, ...]) -> tuple[float, str]:
    """Start (epoch) and name of the shift running at `now`."""
    start, s = shift_of(datetime.fromtimestamp(now, tz), shifts)
    aware = start if start.tzinfo is not None else start.replace(tzinfo=tz)
    return aware.timestamp(), s.name
