"""Fire times across the 2026 DST transitions, checked against hand-computed local times.

2026 transitions (read from zoneinfo, not guessed):

    America/New_York     2026-03-08 02:00 EST -> 03:00 EDT (07:00Z)  gap 02:00-03:00
                         2026-11-01 02:00 EDT -> 01:00 EST (06:00Z)  01:00-02:00 twice
    Europe/Amsterdam     2026-03-29 02:00 CET -> 03:00 CEST (01:00Z) gap 02:00-03:00
                         2026-10-25 03:00 CEST -> 02:00 CET (01:00Z) 02:00-03:00 twice
    Australia/Lord_Howe  2026-04-05 02:00 +11 -> 01:30 +10:30 (Apr 4 15:00Z) 01:30-02:00 twice
                         2026-10-04 02:00 +10:30 -> 02:30 +11 (Oct 3 15:30Z) gap 02:00-02:30
    Asia/Kolkata         none (+05:30 all year)
    UTC                  none

Default (Vixie cron / cronie): a job with fixed minute and hour fires once in a repeated
hour (first pass) and at the gap's end when its time is skipped; a job whose minute or
hour starts with '*' follows elapsed time (both passes; nothing inside a gap).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from runner.timing.firetimes import Recurrence, fire_times, next_fire

NY, AMS, LHI, KOL = "America/New_York", "Europe/Amsterdam", "Australia/Lord_Howe", "Asia/Kolkata"


def wall(tz: str, text: str) -> datetime:
    """A local wall time; fold=1 only where a test asks for the second pass."""
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz))


def clock(fires: list[datetime], tz: str, timespec: str = "minutes") -> list[str]:
    """Local time of day with its UTC offset, e.g. '01:30-05:00'."""
    return [f.astimezone(ZoneInfo(tz)).isoformat(timespec=timespec)[11:] for f in fires]


def minutes(start: str, stop: str, step: int, offset: str) -> list[str]:
    """Local times start..stop (inclusive) every `step` minutes, all at one UTC offset."""
    first, last = datetime.strptime(start, "%H:%M"), datetime.strptime(stop, "%H:%M")
    count = (last - first) // timedelta(minutes=step) + 1
    return [(first + i * timedelta(minutes=step)).strftime("%H:%M") + offset for i in range(count)]


def early_morning(rec: Recurrence, day: str) -> list[str]:
    """Every fire from 00:00 (inclusive) to 04:00 (exclusive) local time on `day`."""
    start = wall(rec.tz, f"{day} 00:00") - timedelta(microseconds=1)
    stop = wall(rec.tz, f"{day} 04:00") - timedelta(microseconds=1)
    return clock(fire_times(replace(rec, end_date=stop), start, 500), rec.tz)


# (zone, day, expression, overrides, fires between 00:00 and 04:00 local that day)
TRANSITION_DAYS: list[tuple[str, str, str, dict[str, Any], list[str]]] = [
    # -- New York, spring forward: 02:00-03:00 does not exist
    (NY, "2026-03-08", "0 2 * * *", {}, ["03:00-04:00"]),
    (NY, "2026-03-08", "30 2 * * *", {}, ["03:00-04:00"]),
    (NY, "2026-03-08", "30 1 * * *", {}, ["01:30-05:00"]),
    (NY, "2026-03-08", "*/15 * * * *", {},
     minutes("00:00", "01:45", 15, "-05:00") + minutes("03:00", "03:45", 15, "-04:00")),
    (NY, "2026-03-08", "0 * * * *", {}, ["00:00-05:00", "01:00-05:00", "03:00-04:00"]),
    (NY, "2026-03-08", "5 1-3 * * *", {}, ["01:05-05:00", "03:00-04:00", "03:05-04:00"]),
    (NY, "2026-03-08", "*/7 2 * * *", {}, []),
    (NY, "2026-03-08", "0 0 L * *", {}, []),
    # -- New York, fall back: 01:00-02:00 happens twice (EDT, then EST)
    (NY, "2026-11-01", "0 2 * * *", {}, ["02:00-05:00"]),
    (NY, "2026-11-01", "30 2 * * *", {}, ["02:30-05:00"]),
    (NY, "2026-11-01", "30 1 * * *", {}, ["01:30-04:00"]),
    (NY, "2026-11-01", "*/15 * * * *", {},
     minutes("00:00", "01:45", 15, "-04:00") + minutes("01:00", "03:45", 15, "-05:00")),
    (NY, "2026-11-01", "0 * * * *", {},
     ["00:00-04:00", "01:00-04:00", "01:00-05:00", "02:00-05:00", "03:00-05:00"]),
    (NY, "2026-11-01", "5 1-3 * * *", {}, ["01:05-04:00", "02:05-05:00", "03:05-05:00"]),
    (NY, "2026-11-01", "*/7 2 * * *", {}, minutes("02:00", "02:56", 7, "-05:00")),
    # -- Amsterdam, spring forward: 02:00-03:00 does not exist
    (AMS, "2026-03-29", "0 2 * * *", {}, ["03:00+02:00"]),
    (AMS, "2026-03-29", "30 2 * * *", {}, ["03:00+02:00"]),
    (AMS, "2026-03-29", "30 1 * * *", {}, ["01:30+01:00"]),
    (AMS, "2026-03-29", "*/15 * * * *", {},
     minutes("00:00", "01:45", 15, "+01:00") + minutes("03:00", "03:45", 15, "+02:00")),
    (AMS, "2026-03-29", "0 * * * *", {}, ["00:00+01:00", "01:00+01:00", "03:00+02:00"]),
    (AMS, "2026-03-29", "5 1-3 * * *", {}, ["01:05+01:00", "03:00+02:00", "03:05+02:00"]),
    (AMS, "2026-03-29", "*/7 2 * * *", {}, []),
    # -- Amsterdam, fall back: 02:00-03:00 happens twice (CEST, then CET)
    (AMS, "2026-10-25", "0 2 * * *", {}, ["02:00+02:00"]),
    (AMS, "2026-10-25", "30 2 * * *", {}, ["02:30+02:00"]),
    (AMS, "2026-10-25", "30 1 * * *", {}, ["01:30+02:00"]),
    (AMS, "2026-10-25", "*/15 * * * *", {},
     minutes("00:00", "02:45", 15, "+02:00") + minutes("02:00", "03:45", 15, "+01:00")),
    (AMS, "2026-10-25", "0 * * * *", {},
     ["00:00+02:00", "01:00+02:00", "02:00+02:00", "02:00+01:00", "03:00+01:00"]),
    (AMS, "2026-10-25", "5 1-3 * * *", {}, ["01:05+02:00", "02:05+02:00", "03:05+01:00"]),
    (AMS, "2026-10-25", "*/7 2 * * *", {},
     minutes("02:00", "02:56", 7, "+02:00") + minutes("02:00", "02:56", 7, "+01:00")),
    # -- Lord Howe, fall back by 30 minutes: 01:30-02:00 happens twice (+11, then +10:30)
    (LHI, "2026-04-05", "0 2 * * *", {}, ["02:00+10:30"]),
    (LHI, "2026-04-05", "30 2 * * *", {}, ["02:30+10:30"]),
    (LHI, "2026-04-05", "30 1 * * *", {}, ["01:30+11:00"]),
    (LHI, "2026-04-05", "*/15 * * * *", {},
     minutes("00:00", "01:45", 15, "+11:00") + minutes("01:30", "03:45", 15, "+10:30")),
    (LHI, "2026-04-05", "0 * * * *", {},
     ["00:00+11:00", "01:00+11:00", "02:00+10:30", "03:00+10:30"]),
    (LHI, "2026-04-05", "5 1-3 * * *", {}, ["01:05+11:00", "02:05+10:30", "03:05+10:30"]),
    (LHI, "2026-04-05", "*/7 2 * * *", {}, minutes("02:00", "02:56", 7, "+10:30")),
    # -- Lord Howe, spring forward by 30 minutes: 02:00-02:30 does not exist
    (LHI, "2026-10-04", "0 2 * * *", {}, ["02:30+11:00"]),
    (LHI, "2026-10-04", "30 2 * * *", {}, ["02:30+11:00"]),
    (LHI, "2026-10-04", "30 1 * * *", {}, ["01:30+10:30"]),
    (LHI, "2026-10-04", "*/15 * * * *", {},
     minutes("00:00", "01:45", 15, "+10:30") + minutes("02:30", "03:45", 15, "+11:00")),
    (LHI, "2026-10-04", "0 * * * *", {}, ["00:00+10:30", "01:00+10:30", "03:00+11:00"]),
    (LHI, "2026-10-04", "5 1-3 * * *", {}, ["01:05+10:30", "02:30+11:00", "03:05+11:00"]),
    (LHI, "2026-10-04", "*/7 2 * * *", {}, minutes("02:35", "02:56", 7, "+11:00")),
    # -- Kolkata and UTC: no transitions, nothing moves
    (KOL, "2026-03-08", "30 2 * * *", {}, ["02:30+05:30"]),
    (KOL, "2026-11-01", "0 * * * *", {}, minutes("00:00", "03:00", 60, "+05:30")),
    (KOL, "2026-11-01", "*/7 2 * * *", {}, minutes("02:00", "02:56", 7, "+05:30")),
    ("UTC", "2026-03-29", "0 2 * * *", {}, ["02:00+00:00"]),
    ("UTC", "2026-10-25", "*/15 * * * *", {}, minutes("00:00", "03:45", 15, "+00:00")),
    # -- per-job overrides
    (NY, "2026-03-08", "30 2 * * *", {"dst_skipped": "skip"}, []),
    (NY, "2026-03-08", "*/7 2 * * *", {"dst_skipped": "shift"}, ["03:00-04:00"]),
    (NY, "2026-11-01", "30 1 * * *", {"dst_repeated": "twice"}, ["01:30-04:00", "01:30-05:00"]),
    (NY, "2026-11-01", "0 * * * *", {"dst_repeated": "once"},
     ["00:00-04:00", "01:00-04:00", "02:00-05:00", "03:00-05:00"]),
    (AMS, "2026-10-25", "30 2 * * *", {"dst_repeated": "twice"}, ["02:30+02:00", "02:30+01:00"]),
    (AMS, "2026-10-25", "*/15 2 * * *", {"dst_repeated": "once"},
     minutes("02:00", "02:45", 15, "+02:00")),
    (LHI, "2026-04-05", "45 1 * * *", {"dst_repeated": "twice"}, ["01:45+11:00", "01:45+10:30"]),
    (LHI, "2026-10-04", "*/7 2 * * *", {"dst_skipped": "shift"},
     ["02:30+11:00", *minutes("02:35", "02:56", 7, "+11:00")]),
    (LHI, "2026-10-04", "15 2 * * *", {"dst_skipped": "skip"}, []),
]  # fmt: skip


@pytest.mark.parametrize(("tz", "day", "expr", "overrides", "expected"), TRANSITION_DAYS)
def test_it_fires_at_the_expected_local_times_on_transition_days(
    tz: str, day: str, expr: str, overrides: dict[str, Any], expected: list[str]
) -> None:
    rec = Recurrence(cron=expr, tz=tz, **overrides)
    assert early_morning(rec, day) == expected


@pytest.mark.parametrize("day", ["2026-03-08", "2026-11-01"])
def test_two_local_times_in_one_gap_fire_once(day: str) -> None:
    rec = Recurrence(cron="0,30 2 * * *", tz=NY)
    expected = {"2026-03-08": ["03:00-04:00"], "2026-11-01": ["02:00-05:00", "02:30-05:00"]}
    assert early_morning(rec, day) == expected[day]


def test_a_gap_time_and_the_gap_end_fire_once_together() -> None:
    rec = Recurrence(cron="0 2,3 * * *", tz=NY)
    assert early_morning(rec, "2026-03-08") == ["03:00-04:00"]


# ---------------------------------------------------------- a whole year


def year(rec: Recurrence) -> list[datetime]:
    """Every fire of local year 2026 in the job's zone."""
    start = wall(rec.tz, "2026-01-01 00:00") - timedelta(microseconds=1)
    end = wall(rec.tz, "2027-01-01 00:00") - timedelta(microseconds=1)
    return fire_times(replace(rec, end_date=end), start, 10_000)


ZONES = [NY, AMS, LHI, KOL, "UTC"]


@pytest.mark.parametrize("tz", ZONES)
@pytest.mark.parametrize("expr", ["0 2 * * *", "30 2 * * *", "30 1 * * *", "5 1-3 * * *"])
def test_a_fixed_time_job_fires_on_every_day_of_the_year_and_never_twice(
    tz: str, expr: str
) -> None:
    fires = year(Recurrence(cron=expr, tz=tz))
    per_day = 3 if expr.startswith("5 1-3") else 1
    days = [f.astimezone(ZoneInfo(tz)).date() for f in fires]
    assert len(fires) == 365 * per_day
    assert len(set(days)) == 365


# A wildcard-hour job fires once per real hour, except where a :00 wall time falls in a
# gap without a repeat to make up for it: Lord Howe skips 02:00 on Oct 4, and its repeated
# half hour (01:30-02:00) holds no :00.
HOURLY = [(NY, 8760), (AMS, 8760), (LHI, 8759), (KOL, 8760), ("UTC", 8760)]


@pytest.mark.parametrize(("tz", "count"), HOURLY)
def test_an_hourly_job_follows_elapsed_time_all_year(tz: str, count: int) -> None:
    assert len(year(Recurrence(cron="0 * * * *", tz=tz))) == count


MONTH_ENDS = ["01-31", "02-28", "03-31", "04-30", "05-31", "06-30",
              "07-31", "08-31", "09-30", "10-31", "11-30", "12-31"]  # fmt: skip
THIRD_FRIDAYS = ["01-16", "02-20", "03-20", "04-17", "05-15", "06-19",
                 "07-17", "08-21", "09-18", "10-16", "11-20", "12-18"]  # fmt: skip


@pytest.mark.parametrize("tz", ZONES)
@pytest.mark.parametrize(
    ("expr", "days"), [("0 0 L * *", MONTH_ENDS), ("0 0 * * 5#3", THIRD_FRIDAYS)]
)
def test_month_end_and_third_friday_fire_at_local_midnight_in_every_zone(
    tz: str, expr: str, days: list[str]
) -> None:
    fires = year(Recurrence(cron=expr, tz=tz))
    assert [f.astimezone(ZoneInfo(tz)).strftime("%m-%d %H:%M") for f in fires] == [
        f"{day} 00:00" for day in days
    ]


def test_month_ends_in_new_york_carry_the_offset_of_their_season() -> None:
    fires = year(Recurrence(cron="0 0 L * *", tz=NY))
    offsets = [clock([f], NY)[0][-6:] for f in fires]
    assert offsets == ["-05:00"] * 2 + ["-04:00"] * 8 + ["-05:00"] * 2


# ---------------------------------------------------------- limit, endDate


def test_limit_stops_within_the_year_counting_the_shifted_fire_once() -> None:
    rec = Recurrence(cron="30 2 * * *", tz=NY, limit=70)
    fires = fire_times(rec, wall(NY, "2026-01-01 00:00"), 100)
    assert len(fires) == 70
    assert fires[66].astimezone(ZoneInfo(NY)).isoformat() == "2026-03-08T03:00:00-04:00"
    assert fires[-1].astimezone(ZoneInfo(NY)).isoformat() == "2026-03-11T02:30:00-04:00"


def test_limit_counts_each_pass_of_a_repeated_hour_as_a_fire() -> None:
    rec = Recurrence(cron="0 * * * *", tz=NY, limit=5)
    after = wall(NY, "2026-11-01 00:00")
    assert clock(fire_times(rec, after, 10, executed=3), NY) == ["01:00-04:00", "01:00-05:00"]
    assert clock(fire_times(rec, after, 10, executed=4), NY) == ["01:00-04:00"]


def test_end_date_in_the_first_pass_excludes_the_second_pass() -> None:
    end = wall(NY, "2026-11-01 01:30")  # fold=0: 01:30 EDT
    rec = Recurrence(cron="0 * * * *", tz=NY, end_date=end)
    fires = fire_times(rec, wall(NY, "2026-11-01 00:00"), 10)
    assert clock(fires, NY) == ["01:00-04:00"]


def test_end_date_in_the_second_pass_includes_it() -> None:
    end = wall(NY, "2026-11-01 01:30").replace(fold=1)  # 01:30 EST
    rec = Recurrence(cron="0 * * * *", tz=NY, end_date=end)
    fires = fire_times(rec, wall(NY, "2026-11-01 00:00"), 10)
    assert clock(fires, NY) == ["01:00-04:00", "01:00-05:00"]


def test_end_date_stops_a_daily_job_in_spring() -> None:
    rec = Recurrence(cron="0 2 * * *", tz=AMS, end_date=wall(AMS, "2026-03-29 12:00"))
    fires = fire_times(rec, wall(AMS, "2026-03-27 00:00"), 10)
    assert [f.astimezone(ZoneInfo(AMS)).isoformat() for f in fires] == [
        "2026-03-27T02:00:00+01:00",
        "2026-03-28T02:00:00+01:00",
        "2026-03-29T03:00:00+02:00",
    ]


# ------------------------------------------------------- asking mid-fold


def test_asking_during_the_first_pass_still_finds_the_second_pass_of_earlier_times() -> None:
    rec = Recurrence(cron="*/15 * * * *", tz=NY)
    fires = fire_times(rec, wall(NY, "2026-11-01 01:50"), 3)  # 01:50 EDT
    assert clock(fires, NY) == ["01:00-05:00", "01:15-05:00", "01:30-05:00"]


def test_asking_during_the_second_pass_does_not_repeat_the_first() -> None:
    rec = Recurrence(cron="30 1 * * *", tz=NY)
    after = wall(NY, "2026-11-01 01:10").replace(fold=1)  # 01:10 EST
    fire = next_fire(rec, after)
    assert fire is not None
    assert fire.astimezone(ZoneInfo(NY)).isoformat() == "2026-11-02T01:30:00-05:00"


def test_every_second_job_crosses_the_repeated_hour_without_gaps_or_repeats() -> None:
    rec = Recurrence(cron="* * * * * *", tz=NY)
    fires = fire_times(rec, wall(NY, "2026-11-01 01:59:58"), 3)
    assert clock(fires, NY, timespec="seconds") == [
        "01:59:59-04:00",
        "01:00:00-05:00",
        "01:00:01-05:00",
    ]


def test_start_at_in_the_second_pass_excludes_the_first_pass() -> None:
    start = wall(NY, "2026-11-01 01:00").replace(fold=1)  # 01:00 EST
    rec = Recurrence(cron="*/15 * * * *", tz=NY, start_at=start)
    fires = fire_times(rec, wall(NY, "2026-11-01 00:00"), 2)
    assert clock(fires, NY) == ["01:00-05:00", "01:15-05:00"]


def test_a_one_shot_in_the_second_pass_is_still_ahead_during_the_first() -> None:
    rec = Recurrence(start_at=wall(NY, "2026-11-01 01:10").replace(fold=1))  # 01:10 EST
    fire = next_fire(rec, wall(NY, "2026-11-01 01:40"))  # 01:40 EDT, half an hour earlier
    assert fire is not None
    assert clock([fire], NY) == ["01:10-05:00"]


# ------------------------------------------------------- every ignores DST


def test_every_follows_elapsed_time_across_spring_forward() -> None:
    rec = Recurrence(every_ms=3_600_000, anchor=wall(NY, "2026-03-08 00:30"))
    fires = fire_times(rec, wall(NY, "2026-03-08 00:30"), 3)
    assert clock(fires, NY) == ["01:30-05:00", "03:30-04:00", "04:30-04:00"]


def test_every_follows_elapsed_time_across_fall_back() -> None:
    rec = Recurrence(every_ms=30 * 60_000, start_at=wall(LHI, "2026-04-05 01:00"))
    fires = fire_times(rec, wall(LHI, "2026-04-05 01:00"), 4)
    assert clock(fires, LHI) == ["01:30+11:00", "01:30+10:30", "02:00+10:30", "02:30+10:30"]


# ------------------------------------- cross-check: a minute-by-minute walk


def _walk(expr: str, tz: str, day: str, twice: bool, shift: bool) -> list[datetime]:
    """Reference: step UTC minute by minute and ask whether the wall clock matches.

    Independent of the search in runner.timing.firetimes: no wall-time arithmetic at all.
    Only expressions of the form 'M H * * *' with M, H lists are understood.
    """
    minute_field, hour_field = expr.split()[:2]

    def matches(t: datetime) -> bool:
        return (minute_field == "*" or t.minute in {int(m) for m in minute_field.split(",")}) and (
            hour_field == "*" or t.hour in {int(h) for h in hour_field.split(",")}
        )

    zone, fires = ZoneInfo(tz), []
    utc = wall(tz, f"{day} 00:00").astimezone(UTC)
    previous = utc.astimezone(zone).replace(tzinfo=None) - timedelta(minutes=1)
    for _ in range(WALK_MINUTES):
        now = utc.astimezone(zone)
        here = now.replace(tzinfo=None)
        steps = (here - previous) // timedelta(minutes=1)  # > 1 only when the clock jumps
        skipped = [previous + timedelta(minutes=k) for k in range(1, steps)]
        if shift and any(matches(t) for t in skipped):  # the clock jumped over a match
            fires.append(utc)
        repeated = now.replace(fold=1 - now.fold).utcoffset() != now.utcoffset()
        if matches(now) and (twice or not repeated or now.fold == 0) and utc not in fires:
            fires.append(utc)
        previous, utc = here, utc + timedelta(minutes=1)
    return fires


WALK_MINUTES = 5 * 60
WALKED = [(tz, day) for tz in (NY, AMS, LHI) for day in {
    NY: ("2026-03-08", "2026-11-01"), AMS: ("2026-03-29", "2026-10-25"),
    LHI: ("2026-04-05", "2026-10-04")}[tz]]  # fmt: skip


@pytest.mark.parametrize(("tz", "day"), WALKED)
@pytest.mark.parametrize("expr", ["0,20,40 * * * *", "10,45 1,2 * * *", "0 2 * * *"])
@pytest.mark.parametrize(("twice", "shift"), [(True, False), (False, True), (True, True)])
def test_it_agrees_with_a_minute_by_minute_walk_of_the_clock(
    tz: str, day: str, expr: str, twice: bool, shift: bool
) -> None:
    rec = Recurrence(
        cron=expr,
        tz=tz,
        dst_repeated="twice" if twice else "once",
        dst_skipped="shift" if shift else "skip",
        end_date=wall(tz, f"{day} 00:00").astimezone(UTC) + timedelta(minutes=WALK_MINUTES - 1),
    )
    expected = _walk(expr, tz, day, twice, shift)
    assert fire_times(rec, wall(tz, f"{day} 00:00") - timedelta(microseconds=1), 500) == expected
