"""Fire times away from DST: cron dialect, macros, seconds, every, one-shot, limit, endDate."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from runner.errors import ScheduleError
from runner.timing.firetimes import Recurrence, fire_times, next_fire, validate_cron, validate_tz

NEW_YEAR = "2026-01-01 00:00+00:00"  # a Thursday


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def local(fires: list[datetime], tz: str = "UTC", timespec: str = "minutes") -> list[str]:
    return [f.astimezone(ZoneInfo(tz)).isoformat(sep=" ", timespec=timespec) for f in fires]


# (expression, time zone, after, the next fires as local time with offset)
CALENDAR = [
    ("*/15 * * * *", "UTC", NEW_YEAR, ["2026-01-01 00:15+00:00", "2026-01-01 00:30+00:00"]),
    ("15 10 * * 1-5", "UTC", NEW_YEAR, ["2026-01-01 10:15+00:00", "2026-01-02 10:15+00:00",
                                        "2026-01-05 10:15+00:00"]),
    ("0 9,17 * * mon-fri", "UTC", NEW_YEAR, ["2026-01-01 09:00+00:00", "2026-01-01 17:00+00:00",
                                             "2026-01-02 09:00+00:00", "2026-01-02 17:00+00:00",
                                             "2026-01-05 09:00+00:00"]),
    ("0 0 * * sat-sun", "UTC", NEW_YEAR, ["2026-01-03 00:00+00:00", "2026-01-04 00:00+00:00",
                                          "2026-01-10 00:00+00:00"]),
    ("0 0 * * 7", "UTC", NEW_YEAR, ["2026-01-04 00:00+00:00", "2026-01-11 00:00+00:00"]),
    ("0 12 * jan,jul sun", "UTC", NEW_YEAR, ["2026-01-04 12:00+00:00", "2026-01-11 12:00+00:00"]),
    ("0 0 1 */3 *", "UTC", NEW_YEAR, ["2026-04-01 00:00+00:00", "2026-07-01 00:00+00:00",
                                      "2026-10-01 00:00+00:00"]),
    ("0 0 L * *", "UTC", NEW_YEAR, ["2026-01-31 00:00+00:00", "2026-02-28 00:00+00:00",
                                    "2026-03-31 00:00+00:00", "2026-04-30 00:00+00:00"]),
    ("0 0 L 2 *", "UTC", NEW_YEAR, ["2026-02-28 00:00+00:00", "2027-02-28 00:00+00:00",
                                    "2028-02-29 00:00+00:00"]),
    ("0 0 29 2 *", "UTC", NEW_YEAR, ["2028-02-29 00:00+00:00", "2032-02-29 00:00+00:00"]),
    # W: nearest weekday inside the month. Feb 15 is a Sunday, Mar 1 a Sunday, May 31 a
    # Sunday at the month's end (so Friday the 29th), and June has no 31st.
    ("0 0 15W * *", "UTC", NEW_YEAR, ["2026-01-15 00:00+00:00", "2026-02-16 00:00+00:00",
                                      "2026-03-16 00:00+00:00"]),
    ("0 0 1W * *", "UTC", NEW_YEAR, ["2026-02-02 00:00+00:00", "2026-03-02 00:00+00:00",
                                     "2026-04-01 00:00+00:00"]),
    ("0 0 31W * *", "UTC", "2026-05-01 00:00+00:00", ["2026-05-29 00:00+00:00",
                                                       "2026-07-31 00:00+00:00",
                                                       "2026-08-31 00:00+00:00"]),
    # n#k and last-weekday-of-month, in both spellings of "last Friday".
    ("0 0 * * 5#3", "UTC", NEW_YEAR, ["2026-01-16 00:00+00:00", "2026-02-20 00:00+00:00",
                                      "2026-03-20 00:00+00:00"]),
    ("0 0 * * fri#3", "UTC", NEW_YEAR, ["2026-01-16 00:00+00:00"]),
    ("0 0 * * 5L", "UTC", NEW_YEAR, ["2026-01-30 00:00+00:00", "2026-02-27 00:00+00:00"]),
    ("0 0 * * L5", "UTC", NEW_YEAR, ["2026-01-30 00:00+00:00", "2026-02-27 00:00+00:00"]),
    ("0 0 * * 1#1,5#3", "UTC", NEW_YEAR, ["2026-01-05 00:00+00:00", "2026-01-16 00:00+00:00",
                                          "2026-02-02 00:00+00:00"]),
    # Both day fields restricted: a day matches if EITHER does (the 1st/15th or Fridays)...
    ("30 4 1,15 * 5", "UTC", NEW_YEAR, ["2026-01-01 04:30+00:00", "2026-01-02 04:30+00:00",
                                        "2026-01-09 04:30+00:00", "2026-01-15 04:30+00:00"]),
    ("0 0 1-31/2 * mon", "UTC", NEW_YEAR, ["2026-01-03 00:00+00:00", "2026-01-05 00:00+00:00",
                                           "2026-01-07 00:00+00:00"]),
    # ...but, as in Vixie cron and cronie, a field starting with '*' makes it AND:
    # odd days that are Mondays.
    ("0 0 */2 * mon", "UTC", NEW_YEAR, ["2026-01-05 00:00+00:00", "2026-01-19 00:00+00:00",
                                        "2026-02-09 00:00+00:00"]),
    ("0 0 ? * mon", "UTC", NEW_YEAR, ["2026-01-05 00:00+00:00", "2026-01-12 00:00+00:00"]),
    ("0 9 * * *", "Asia/Kolkata", NEW_YEAR, ["2026-01-01 09:00+05:30", "2026-01-02 09:00+05:30"]),
    ("0 9 * * *", "America/New_York", NEW_YEAR, ["2026-01-01 09:00-05:00",
                                                  "2026-01-02 09:00-05:00"]),
]  # fmt: skip


@pytest.mark.parametrize(("expr", "tz", "after", "expected"), CALENDAR)
def test_it_fires_at_the_expressions_local_times(
    expr: str, tz: str, after: str, expected: list[str]
) -> None:
    rec = Recurrence(cron=expr, tz=tz)
    assert local(fire_times(rec, at(after), len(expected)), tz) == expected


MACROS = [
    ("@hourly", ["2026-01-01 01:00+00:00", "2026-01-01 02:00+00:00"]),
    ("@daily", ["2026-01-02 00:00+00:00", "2026-01-03 00:00+00:00"]),
    ("@midnight", ["2026-01-02 00:00+00:00", "2026-01-03 00:00+00:00"]),
    ("@DAILY", ["2026-01-02 00:00+00:00", "2026-01-03 00:00+00:00"]),
    ("@weekly", ["2026-01-04 00:00+00:00", "2026-01-11 00:00+00:00"]),
    ("@monthly", ["2026-02-01 00:00+00:00", "2026-03-01 00:00+00:00"]),
    ("@yearly", ["2027-01-01 00:00+00:00", "2028-01-01 00:00+00:00"]),
    ("@annually", ["2027-01-01 00:00+00:00", "2028-01-01 00:00+00:00"]),
]


@pytest.mark.parametrize(("macro", "expected"), MACROS)
def test_macros_fire_like_their_five_field_forms(macro: str, expected: list[str]) -> None:
    assert local(fire_times(Recurrence(cron=macro), at(NEW_YEAR), 2)) == expected


SECONDS = [
    ("*/20 * * * * *", ["2026-01-01 00:00:20+00:00", "2026-01-01 00:00:40+00:00",
                        "2026-01-01 00:01:00+00:00"]),
    ("30 15 10 * * *", ["2026-01-01 10:15:30+00:00", "2026-01-02 10:15:30+00:00"]),
    ("0 0 0 L * *", ["2026-01-31 00:00:00+00:00"]),
]  # fmt: skip


@pytest.mark.parametrize(("expr", "expected"), SECONDS)
def test_a_sixth_field_is_a_leading_seconds_field(expr: str, expected: list[str]) -> None:
    fires = fire_times(Recurrence(cron=expr), at(NEW_YEAR), len(expected))
    assert local(fires, timespec="seconds") == expected


def test_fires_are_utc_instants_strictly_after_the_given_instant() -> None:
    rec = Recurrence(cron="0 9 * * *", tz="Asia/Kolkata")
    fire = next_fire(rec, at("2026-01-01 09:00+05:30"))
    assert fire == at("2026-01-02 03:30+00:00")
    assert fire is not None and fire.tzinfo is UTC


def test_a_microsecond_before_a_fire_time_still_gets_that_fire() -> None:
    rec = Recurrence(cron="* * * * * *")
    fire = next_fire(rec, at(NEW_YEAR) - timedelta(microseconds=1))
    assert fire == at(NEW_YEAR)


def test_cron_fires_nothing_before_start_at_and_fires_at_start_at_itself() -> None:
    rec = Recurrence(cron="0 9 * * *", start_at=at("2026-03-10 09:00+00:00"))
    assert local(fire_times(rec, at(NEW_YEAR), 2)) == [
        "2026-03-10 09:00+00:00",
        "2026-03-11 09:00+00:00",
    ]


def test_cron_wins_when_every_is_set_too() -> None:
    rec = Recurrence(cron="0 0 * * *", every_ms=1_000, anchor=at(NEW_YEAR))
    assert local(fire_times(rec, at(NEW_YEAR), 1)) == ["2026-01-02 00:00+00:00"]


# ------------------------------------------------------------------ every


def test_every_counts_from_start_at_including_start_at() -> None:
    rec = Recurrence(every_ms=90_000, start_at=at("2026-01-01 00:00:30+00:00"))
    fires = fire_times(rec, at("2025-12-31 00:00+00:00"), 3)
    assert local(fires, timespec="seconds") == [
        "2026-01-01 00:00:30+00:00",
        "2026-01-01 00:02:00+00:00",
        "2026-01-01 00:03:30+00:00",
    ]


def test_every_keeps_its_phase_when_asked_long_after_start() -> None:
    rec = Recurrence(every_ms=90_000, start_at=at("2026-01-01 00:00:30+00:00"))
    fire = next_fire(rec, at("2026-01-01 01:00:00+00:00"))
    assert fire == at("2026-01-01 01:00:30+00:00")


def test_every_takes_its_phase_from_the_anchor_without_start_at() -> None:
    rec = Recurrence(every_ms=3_600_000, anchor=at("2026-01-01 10:00:07+00:00"))
    fires = fire_times(rec, at("2026-01-01 10:00:07+00:00"), 2)
    assert local(fires, timespec="seconds") == [
        "2026-01-01 11:00:07+00:00",
        "2026-01-01 12:00:07+00:00",
    ]


def test_every_prefers_start_at_over_the_anchor() -> None:
    rec = Recurrence(every_ms=60_000, start_at=at("2026-01-01 00:00:30+00:00"), anchor=at(NEW_YEAR))
    assert next_fire(rec, at(NEW_YEAR)) == at("2026-01-01 00:00:30+00:00")


def test_every_rejects_a_non_positive_interval() -> None:
    with pytest.raises(ScheduleError) as caught:
        next_fire(Recurrence(every_ms=0, anchor=at(NEW_YEAR)), at(NEW_YEAR))
    assert caught.value.field == "schedule.every"


# --------------------------------------------------------------- one-shot


def test_a_one_shot_fires_once_at_start_at() -> None:
    rec = Recurrence(start_at=at("2026-02-01 12:00+01:00"))
    assert fire_times(rec, at(NEW_YEAR), 5) == [at("2026-02-01 11:00+00:00")]
    assert next_fire(rec, at("2026-02-01 11:00+00:00")) is None


def test_a_one_shot_without_start_at_fires_at_its_anchor() -> None:
    rec = Recurrence(anchor=at("2026-01-01 08:00+00:00"))
    assert fire_times(rec, at("2026-01-01 07:59:59+00:00"), 5) == [at("2026-01-01 08:00+00:00")]


def test_a_one_shot_needs_start_at_or_an_anchor() -> None:
    with pytest.raises(ScheduleError):
        next_fire(Recurrence(), at(NEW_YEAR))


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        next_fire(Recurrence(cron="* * * * *"), datetime(2026, 1, 1))


# ---------------------------------------------------------- limit, endDate


def test_limit_counts_the_fires_that_already_ran() -> None:
    rec = Recurrence(cron="0 * * * *", limit=3)
    assert len(fire_times(rec, at(NEW_YEAR), 10)) == 3
    assert local(fire_times(rec, at(NEW_YEAR), 10, executed=2)) == ["2026-01-01 01:00+00:00"]
    assert next_fire(rec, at(NEW_YEAR), executed=3) is None


def test_limit_applies_to_every_and_one_shot_too() -> None:
    every = Recurrence(every_ms=1_000, anchor=at(NEW_YEAR), limit=2)
    assert len(fire_times(every, at(NEW_YEAR), 10)) == 2
    assert (
        next_fire(Recurrence(start_at=at("2026-06-01 00:00+00:00"), limit=0), at(NEW_YEAR)) is None
    )


def test_nothing_fires_after_end_date_but_a_fire_at_end_date_counts() -> None:
    rec = Recurrence(cron="0 * * * *", end_date=at("2026-01-01 03:00+00:00"))
    assert local(fire_times(rec, at(NEW_YEAR), 10)) == [
        "2026-01-01 01:00+00:00",
        "2026-01-01 02:00+00:00",
        "2026-01-01 03:00+00:00",
    ]


def test_end_date_stops_every() -> None:
    rec = Recurrence(every_ms=600_000, anchor=at(NEW_YEAR), end_date=at("2026-01-01 00:25+00:00"))
    assert local(fire_times(rec, at(NEW_YEAR), 10)) == [
        "2026-01-01 00:10+00:00",
        "2026-01-01 00:20+00:00",
    ]


# -------------------------------------------------------------- validation

BAD_FIELDS = [
    ("61 * * * *", "bad minute field '61' (allowed 0-59)"),
    ("* 24 * * *", "bad hour field '24' (allowed 0-23)"),
    ("* * 32 * *", "bad day-of-month field '32' (allowed 1-31, L or nW)"),
    ("* * 0 * *", "bad day-of-month field '0' (allowed 1-31, L or nW)"),
    ("* * * 13 *", "bad month field '13' (allowed 1-12 or JAN-DEC)"),
    ("* * * FOO *", "bad month field 'FOO' (allowed 1-12 or JAN-DEC)"),
    ("* * * * FOO", "bad day-of-week field 'FOO' (allowed 0-7 or SUN-SAT, n#k or nL)"),
    ("* * * * 8", "bad day-of-week field '8' (allowed 0-7 or SUN-SAT, n#k or nL)"),
    ("* * * * 5#6", "bad day-of-week field '5#6' (allowed 0-7 or SUN-SAT, n#k or nL)"),
    ("*/0 * * * *", "bad minute field '*/0' (allowed 0-59)"),
    ("R * * * *", "bad minute field 'R' (allowed 0-59)"),
    ("60 0 0 * * *", "bad second field '60' (allowed 0-59)"),
    ("0 60 0 * * *", "bad minute field '60' (allowed 0-59)"),
    ("1 2 3", "expected 5 fields (or 6 with leading seconds), got 3"),
    ("0 0 0 1 1 * 2026", "expected 5 fields (or 6 with leading seconds), got 7"),
    ("", "expected 5 fields (or 6 with leading seconds), got 0"),
]


@pytest.mark.parametrize(("expr", "message"), BAD_FIELDS)
def test_a_bad_expression_is_refused_naming_the_field(expr: str, message: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        validate_cron(expr)
    assert caught.value.field == "schedule.cron"
    assert caught.value.message == message


@pytest.mark.parametrize("expr", ["0 0 31 2 *", "0 0 30 2 *", "0 0 31 4,6,9,11 *", "0 0 31W 2 *"])
def test_an_expression_that_never_fires_is_refused(expr: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        validate_cron(expr)
    assert caught.value.field == "schedule.cron"
    assert caught.value.message.startswith("expression never fires")
    assert "February has no 31st" in caught.value.message


def test_a_never_firing_expression_has_no_next_fire() -> None:
    assert next_fire(Recurrence(cron="0 0 31 2 *"), at(NEW_YEAR)) is None


def test_an_unknown_macro_is_refused() -> None:
    with pytest.raises(ScheduleError, match="unknown macro '@reboot'"):
        validate_cron("@reboot")


@pytest.mark.parametrize(
    "expr",
    ["0 0 29 2 *", "*/5 * * * *", "0 0 L * *", "0 0 15W * *", "0 0 * * 5L", "@weekly",
     "0 0 * * 0-7", "0 0 1 jan-mar/2 *", "0 22 * * sat-sun", "0 0 0 * * *", "0 0 * * mon#1"],
)  # fmt: skip
def test_valid_expressions_pass_validation(expr: str) -> None:
    validate_cron(expr, "Europe/Amsterdam")


@pytest.mark.parametrize("tz", ["Mars/Olympus", "", "America", "../etc/passwd", "utc"])
def test_an_unknown_time_zone_is_refused(tz: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        validate_tz(tz)
    assert caught.value.field == "schedule.tz"
    assert caught.value.message == f"unknown time zone '{tz}'"


def test_validate_cron_checks_the_zone_too() -> None:
    with pytest.raises(ScheduleError) as caught:
        validate_cron("0 0 * * *", "Mars/Olympus")
    assert caught.value.field == "schedule.tz"


def test_next_fire_refuses_an_unknown_zone() -> None:
    with pytest.raises(ScheduleError, match="Mars/Olympus"):
        next_fire(Recurrence(cron="0 0 * * *", tz="Mars/Olympus"), at(NEW_YEAR))


def test_cronspec_is_the_only_module_that_imports_croniter() -> None:
    package = Path(__file__).resolve().parent.parent / "runner"
    importers = sorted(
        path.name
        for path in package.rglob("*.py")
        if re.search(r"^\s*(from|import)\s+croniter\b", path.read_text(), re.MULTILINE)
    )
    assert importers == ["cronspec.py"]
