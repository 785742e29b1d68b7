"""Shifts in a reader's own time zone, evaluated DST-correctly.

A shift is written the way rosters are: local wall-clock start and end on
given weekdays, in the reader's IANA time zone ("Mon-Fri 22:00-06:00",
America/New_York). An end at or before the start crosses midnight; the
weekday is the day the shift *starts*. Each occurrence is turned into two
real instants with zoneinfo, so a 22:00-06:00 night lasts 7 hours on the US
spring-forward night and 9 on the fall-back night, and an end inside the
repeated hour ends at its first occurrence (PEP 495 ``fold=0``). A start
inside the skipped hour begins at the same wall offset after the jump.

Comparing wall clocks instead would be wrong inside the repeated hour, so
the instants are computed, and cached because a roster has few distinct
(zone, day, time) boundaries while the router asks about them constantly.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from readingroom.workflow.enums import WEEKDAY_NAMES

ALL_DAYS: frozenset[int] = frozenset(range(7))
_ONE_DAY = timedelta(days=1)
_DAY_WORDS = {
    "daily": ALL_DAYS,
    "all": ALL_DAYS,
    "everyday": ALL_DAYS,
    "weekdays": frozenset(range(5)),
    "weekend": frozenset({5, 6}),
    "weekends": frozenset({5, 6}),
}


def _day_index(token: str) -> int:
    key = token.strip().lower()[:3]
    if key not in WEEKDAY_NAMES:
        raise ValueError(f"unknown weekday {token!r} (use mon..sun)")
    return WEEKDAY_NAMES.index(key)


def parse_weekdays(spec: object) -> frozenset[int]:
    """Weekday numbers (Monday = 0) from ``"mon-fri"``, ``"sat,sun"``, ``"daily"``, a list, or ints.

    Ranges may wrap (``"fri-mon"``). ``None`` means every day.
    """
    if spec is None:
        return ALL_DAYS
    if isinstance(spec, int) and not isinstance(spec, bool):
        if not 0 <= spec <= 6:
            raise ValueError(f"weekday number {spec} outside 0 (Mon) .. 6 (Sun)")
        return frozenset({spec})
    if isinstance(spec, str):
        text = spec.strip().lower().replace(" ", "")
        if text in _DAY_WORDS:
            return _DAY_WORDS[text]
        days: set[int] = set()
        for part in filter(None, text.split(",")):
            if "-" in part:
                first, last = (_day_index(p) for p in part.split("-", 1))
                span = (last - first) % 7
                days.update((first + i) % 7 for i in range(span + 1))
            else:
                days.add(_day_index(part))
        if not days:
            raise ValueError("no weekday given")
        return frozenset(days)
    if isinstance(spec, Iterable):
        result: set[int] = set()
        for item in spec:
            result |= parse_weekdays(item)
        return frozenset(result)
    raise ValueError(f"cannot read weekdays from {spec!r}")


_SHIFT_RE = re.compile(r"^\s*(?:(?P<days>[A-Za-z,\- ]+?)\s+)?(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})\s*$")


def _parse_time(text: str) -> time:
    hours, minutes = (int(p) for p in text.split(":"))
    if hours == 24 and minutes == 0:
        return time(0, 0)
    return time(hours, minutes)


@dataclass(frozen=True, slots=True)
class Shift:
    """A recurring shift in local wall-clock time: [start, end) on ``weekdays`` (the day it starts)."""

    start: time
    end: time
    weekdays: frozenset[int] = ALL_DAYS
    overnight: bool = field(init=False, repr=False, compare=False)
    """True when the shift ends on the next day (end <= start; equal means 24 hours)."""

    def __post_init__(self) -> None:
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise ValueError("shift times are local wall-clock times: give them without tzinfo")
        object.__setattr__(self, "weekdays", parse_weekdays(self.weekdays))
        object.__setattr__(self, "overnight", self.end <= self.start)

    @classmethod
    def parse(cls, text: str) -> Shift:
        """``"Mon-Fri 22:00-06:00"``, ``"daily 08:00-18:00"`` or just ``"08:00-18:00"`` (every day)."""
        found = _SHIFT_RE.match(text)
        if not found:
            raise ValueError(f"cannot read shift {text!r} (expected e.g. 'Mon-Fri 22:00-06:00')")
        days = found.group("days")
        return cls(_parse_time(found.group("start")), _parse_time(found.group("end")), parse_weekdays(days))

    def __str__(self) -> str:
        days = ",".join(WEEKDAY_NAMES[d] for d in sorted(self.weekdays))
        return f"{days} {self.start:%H:%M}-{self.end:%H:%M}"


@lru_cache(maxsize=8192)
def wall_to_timestamp(tz: str, day: date, at: time) -> float:
    """POSIX time of local wall-clock ``day at`` in zone ``tz`` (``fold=0`` for ambiguous/skipped times)."""
    return datetime.combine(day, at, tzinfo=ZoneInfo(tz)).timestamp()


def local_date(tz: str, now: datetime) -> date:
    """The calendar date in zone ``tz`` at instant ``now``."""
    return now.astimezone(ZoneInfo(tz)).date()


def index_by_weekday(shifts: Iterable[Shift]) -> tuple[tuple[Shift, ...], ...]:
    """Shifts grouped by the weekday they start on (index 0 = Monday), for O(shifts today) checks."""
    table: list[list[Shift]] = [[] for _ in range(7)]
    for shift in shifts:
        for day in shift.weekdays:
            table[day].append(shift)
    return tuple(tuple(day) for day in table)


def covers(by_weekday: tuple[tuple[Shift, ...], ...], tz: str, now_ts: float, today: date) -> bool:
    """Whether a shift started today or yesterday (local) holds instant ``now_ts``.

    ``today`` is the local date of ``now_ts`` in ``tz``; the router computes it
    once per zone per decision rather than once per reader.
    """
    for shift in by_weekday[today.weekday()]:
        start = wall_to_timestamp(tz, today, shift.start)
        if now_ts < start:
            continue
        end_day = today + _ONE_DAY if shift.overnight else today
        if now_ts < wall_to_timestamp(tz, end_day, shift.end):
            return True
    yesterday = today - _ONE_DAY
    for shift in by_weekday[yesterday.weekday()]:
        if shift.overnight and wall_to_timestamp(tz, yesterday, shift.start) <= now_ts < wall_to_timestamp(
            tz, today, shift.end
        ):
            return True
    return False


@dataclass(frozen=True, slots=True)
class Schedule:
    """A reader's shifts with their zone: the convenient, self-contained form of :func:`covers`."""

    timezone: str
    shifts: tuple[Shift, ...] = ()
    _by_weekday: tuple[tuple[Shift, ...], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ZoneInfo(self.timezone)  # an unknown zone fails here, not at 3 a.m.
        object.__setattr__(self, "shifts", tuple(self.shifts))
        object.__setattr__(self, "_by_weekday", index_by_weekday(self.shifts))

    def on_shift(self, now: datetime) -> bool:
        """Whether the instant ``now`` (aware; naive means UTC) falls inside one of the shifts."""
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        return covers(self._by_weekday, self.timezone, now.timestamp(), local_date(self.timezone, now))
