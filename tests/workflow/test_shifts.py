"""Shifts in the reader's own time zone: parsing, overnight shifts, DST nights, follow-the-sun."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from readingroom.workflow import Schedule, Shift
from readingroom.workflow.shifts import parse_weekdays

NY = "America/New_York"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def minutes_on(schedule: Schedule, start: datetime, hours: int) -> int:
    """Minutes on shift in ``hours`` hours from ``start``, sampled every minute."""
    return sum(schedule.on_shift(start + timedelta(minutes=m)) for m in range(hours * 60))


class TestParsing:
    def test_days_and_times(self) -> None:
        shift = Shift.parse("Mon-Fri 22:00-06:00")
        assert shift.weekdays == frozenset(range(5))
        assert (shift.start, shift.end) == (time(22), time(6))
        assert shift.overnight

    def test_every_day_by_default_and_24_00(self) -> None:
        shift = Shift.parse("08:00-24:00")
        assert shift.weekdays == frozenset(range(7))
        assert shift.end == time(0) and shift.overnight

    @pytest.mark.parametrize(
        ("spec", "days"),
        [("fri-mon", {4, 5, 6, 0}), ("sat,sun", {5, 6}), ("weekdays", {0, 1, 2, 3, 4}), (["Tue", 3], {1, 3})],
    )
    def test_weekday_specs(self, spec: object, days: set[int]) -> None:
        assert parse_weekdays(spec) == frozenset(days)

    @pytest.mark.parametrize("bad", ["Funday 08:00-10:00", "08:00", "8-5", "mon 25:00-06:00"])
    def test_bad_shift_text(self, bad: str) -> None:
        with pytest.raises(ValueError):
            Shift.parse(bad)

    def test_unknown_zone_fails_at_construction(self) -> None:
        with pytest.raises(Exception, match="Mars"):
            Schedule("Mars/Olympus_Mons", (Shift.parse("08:00-16:00"),))


class TestOvernightAndWeekdays:
    def test_overnight_shift_belongs_to_the_day_it_starts(self) -> None:
        friday_night = Schedule(NY, (Shift.parse("Fri 22:00-06:00"),))
        # Friday 17 Jan 2025 21:59 EST is before the start; Saturday 03:00 EST is inside.
        assert not friday_night.on_shift(utc(2025, 1, 18, 2, 59))
        assert friday_night.on_shift(utc(2025, 1, 18, 3, 0))
        assert friday_night.on_shift(utc(2025, 1, 18, 8, 0))
        assert not friday_night.on_shift(utc(2025, 1, 18, 11, 0))  # Saturday 06:00: ended
        # Saturday night has no shift of its own.
        assert not friday_night.on_shift(utc(2025, 1, 19, 8, 0))

    def test_end_is_exclusive(self) -> None:
        day = Schedule(NY, (Shift.parse("daily 08:00-18:00"),))
        assert day.on_shift(utc(2025, 1, 13, 13, 0))
        assert not day.on_shift(utc(2025, 1, 13, 23, 0))
        assert day.on_shift(utc(2025, 1, 13, 22, 59))

    def test_naive_now_means_utc(self) -> None:
        day = Schedule(NY, (Shift.parse("daily 08:00-18:00"),))
        assert day.on_shift(datetime(2025, 1, 13, 13, 0))


class TestDaylightSaving:
    """US DST 2025: spring forward Sunday 9 March 02:00 EST, fall back Sunday 2 November 02:00 EDT."""

    night = Schedule(NY, (Shift.parse("daily 22:00-06:00"),))

    def test_spring_forward_night_lasts_seven_hours(self) -> None:
        # Saturday 8 March 22:00 EST = 03:00 UTC; Sunday 06:00 EDT = 10:00 UTC.
        assert not self.night.on_shift(utc(2025, 3, 9, 2, 59))
        assert self.night.on_shift(utc(2025, 3, 9, 3, 0))
        assert self.night.on_shift(utc(2025, 3, 9, 9, 59))
        assert not self.night.on_shift(utc(2025, 3, 9, 10, 0))
        assert not self.night.on_shift(utc(2025, 3, 9, 10, 30))  # a fixed -05:00 offset would say 05:30: on
        assert minutes_on(self.night, utc(2025, 3, 9, 0, 0), 12) == 7 * 60

    def test_fall_back_night_lasts_nine_hours(self) -> None:
        # Saturday 1 November 22:00 EDT = 02:00 UTC; Sunday 06:00 EST = 11:00 UTC.
        assert self.night.on_shift(utc(2025, 11, 2, 2, 0))
        assert self.night.on_shift(utc(2025, 11, 2, 10, 30))  # 05:30 EST; a fixed -04:00 offset says 06:30
        assert not self.night.on_shift(utc(2025, 11, 2, 11, 0))
        assert minutes_on(self.night, utc(2025, 11, 2, 0, 0), 14) == 9 * 60

    def test_shift_ending_inside_the_repeated_hour_ends_at_its_first_occurrence(self) -> None:
        late = Schedule(NY, (Shift.parse("daily 17:00-01:30"),))
        assert late.on_shift(utc(2025, 11, 2, 5, 15))  # 01:15 EDT, first pass
        assert not late.on_shift(utc(2025, 11, 2, 5, 30))  # 01:30 EDT: ended
        assert not late.on_shift(utc(2025, 11, 2, 6, 15))  # 01:15 EST, second pass: a wall clock says "on"

    def test_shift_starting_inside_the_skipped_hour(self) -> None:
        early = Schedule(NY, (Shift.parse("Sun 02:30-10:00"),))
        # 02:30 does not exist on 9 March; the shift starts at 02:30 EST = 07:30 UTC = 03:30 EDT.
        assert not early.on_shift(utc(2025, 3, 9, 7, 15))
        assert early.on_shift(utc(2025, 3, 9, 7, 30))
        assert not early.on_shift(utc(2025, 3, 9, 14, 0))  # 10:00 EDT

    def test_sydney_dst_ends_in_april(self) -> None:
        # AEDT (+11) until Sunday 6 April 2025 03:00, then AEST (+10): the same 08:00 start moves by an hour in UTC.
        sydney = Schedule("Australia/Sydney", (Shift.parse("daily 08:00-18:00"),))
        assert sydney.on_shift(utc(2025, 4, 4, 21, 0))  # Sat 5 Apr 08:00 AEDT
        assert not sydney.on_shift(utc(2025, 4, 6, 21, 30))  # Mon 7 Apr 07:30 AEST
        assert sydney.on_shift(utc(2025, 4, 6, 22, 0))  # Mon 7 Apr 08:00 AEST


class TestFollowTheSun:
    def test_sydney_day_covers_the_us_night(self) -> None:
        new_york_day = Schedule(NY, (Shift.parse("Mon-Fri 08:00-18:00"),))
        sydney_day = Schedule("Australia/Sydney", (Shift.parse("Mon-Fri 08:00-18:00"),))
        zurich_day = Schedule("Europe/Zurich", (Shift.parse("Mon-Fri 08:00-18:00"),))
        # Monday 13 Jan 22:00 EST = Tuesday 03:00 UTC = Tuesday 14:00 AEDT.
        us_night = utc(2025, 1, 14, 3, 0)
        assert not new_york_day.on_shift(us_night)
        assert sydney_day.on_shift(us_night)
        assert not zurich_day.on_shift(us_night)
        # Tuesday 14 Jan 03:00 EST = 08:00 UTC = 09:00 CET: Zurich has taken over from Sydney (19:00 AEDT).
        assert zurich_day.on_shift(utc(2025, 1, 14, 8, 0))
        assert not sydney_day.on_shift(utc(2025, 1, 14, 8, 0))

    def test_three_zones_cover_a_weekday_around_the_clock(self) -> None:
        readers = [
            Schedule(NY, (Shift.parse("Mon-Fri 08:00-18:00"),)),
            Schedule("Australia/Sydney", (Shift.parse("Mon-Fri 08:00-18:00"),)),
            Schedule("Europe/Zurich", (Shift.parse("Mon-Fri 06:00-16:00"),)),
        ]
        start = utc(2025, 1, 14, 0, 0)  # Tuesday
        gaps = [m for m in range(0, 24 * 60, 15) if not any(s.on_shift(start + timedelta(minutes=m)) for s in readers)]
        assert gaps == []


ZONES = ["America/New_York", "America/Los_Angeles", "Australia/Sydney", "Europe/Zurich", "Asia/Kolkata", "UTC"]


def _no_transition_near(zone: ZoneInfo, local: datetime) -> bool:
    offsets = {(local + timedelta(hours=h)).astimezone(zone).utcoffset() for h in range(-36, 37, 6)}
    return len(offsets) == 1


@settings(max_examples=150, deadline=None)
@given(
    zone=st.sampled_from(ZONES),
    start_min=st.integers(0, 24 * 60 - 1),
    end_min=st.integers(0, 24 * 60 - 1),
    days=st.frozensets(st.integers(0, 6), min_size=1),
    offset=st.integers(0, 365 * 24 * 60),
)
def test_matches_the_wall_clock_away_from_transitions(
    zone: str, start_min: int, end_min: int, days: frozenset[int], offset: int
) -> None:
    """Away from DST changes, being on shift is exactly "local wall time inside the window"."""
    now = utc(2025, 1, 1) + timedelta(minutes=offset)
    tz = ZoneInfo(zone)
    if not _no_transition_near(tz, now):
        return
    shift = Shift(time(start_min // 60, start_min % 60), time(end_min // 60, end_min % 60), days)
    local = now.astimezone(tz)
    t, weekday = local.time().replace(tzinfo=None), local.weekday()
    if shift.overnight:
        expected = (weekday in days and t >= shift.start) or ((weekday - 1) % 7 in days and t < shift.end)
    else:
        expected = weekday in days and shift.start <= t < shift.end
    assert Schedule(zone, (shift,)).on_shift(now) == expected
