"""Fire-time computation: when a job's recurrence fires, as UTC instants (the only croniter user).

Pure functions over plain data: no I/O, no clock reads, no asyncio. Every datetime in and
out is aware; cron expressions are evaluated on the job's local wall clock and returned
as UTC instants.

croniter is used only to *parse* an expression into field sets (`croniter.expand`); the
next local time is computed here over those sets. Why not croniter's iterator:

- croniter 7.0.0 fires fixed-time jobs twice in a repeated (fall-back) hour, and we want
  Vixie cron / cronie semantics (see "DST" below);
- one croniter object per job costs ~1.5 KB and 65-250 µs to build, and 100,000 jobs are
  scheduled; the parsed sets here are shared per expression (`_parse` is an lru_cache).

Kinds of recurrence (`Recurrence`):

- `cron` set: fire at the expression's wall-clock times in `tz` (never before
  `start_at`). If `every_ms` is set too, `cron` wins and `every_ms` is ignored.
- `every_ms` set: fire at `phase + k * every` (k >= 0) where phase is `start_at`, or
  `anchor` (the job's first sighting) when `start_at` is None. Elapsed time, in UTC: DST
  has no effect.
- neither: a one-shot at `start_at` (or `anchor`, i.e. "now").

`limit` caps the total number of fires (the caller passes how many already ran) and
nothing fires strictly after `end_date`. `next_fire` always returns the first fire
*strictly after* `after`: a caller that wants a fire at exactly `t` asks from just before.

Cron dialect: 5 fields (minute hour day-of-month month day-of-week) or 6 with a leading
seconds field; @hourly/@daily/@midnight/@weekly/@monthly/@yearly/@annually; names
(JAN, MON); `L` and `nW` in day-of-month; `n#k`, `nL` / `Ln` (last weekday n of the
month) in day-of-week; 7 means Sunday. Day matching follows Vixie cron: if day-of-month
or day-of-week starts with `*` (or is `?`), a day must match both; otherwise either.

DST (default = Vixie cron / cronie): a job whose minute and hour fields are both fixed
(neither starts with `*`) runs once in a repeated hour (first pass) and, when its wall
time falls in a skipped gap, at the first instant after the gap. A job whose minute or
hour starts with `*` follows elapsed time: it fires in both passes of a repeated hour and
wall times inside a gap do not exist. `dst_skipped` ("shift"/"skip") and `dst_repeated`
("once"/"twice") override either half per job.
"""

from __future__ import annotations

import calendar
import re
from bisect import bisect_left
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from functools import lru_cache
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from runner.errors import ScheduleError

CRON_FIELD = "schedule.cron"
TZ_FIELD = "schedule.tz"
EVERY_FIELD = "schedule.every"

_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_FIVE_FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")
_ALLOWED = {
    "second": "0-59",
    "minute": "0-59",
    "hour": "0-23",
    "day-of-month": "1-31, L or nW",
    "month": "1-12 or JAN-DEC",
    "day-of-week": "0-7 or SUN-SAT, n#k or nL",
}
# Where each field sits in a 5-field probe expression; seconds share the minute range.
_PROBE_INDEX = {
    "second": 0,
    "minute": 0,
    "hour": 1,
    "day-of-month": 2,
    "month": 3,
    "day-of-week": 4,
}
# croniter's H (hashed) and R (random) values are not reproducible from the text alone.
_HASH_OR_RANDOM = re.compile(r"^[hr](\(\d+-\d+\))?(/\d+)?$", re.IGNORECASE)
_NEAREST_WEEKDAY = re.compile(r"^(?:(\d+)W|W(\d+))$", re.IGNORECASE)
# Quartz writes "last Friday" as 5L; croniter only reads L5.
_QUARTZ_LAST_DOW = re.compile(r"^([0-7]|[a-z]{3})L$", re.IGNORECASE)
_LAST = -1  # "last" in an n#k set
_SECOND = timedelta(seconds=1)
_TICK = timedelta(microseconds=1)
_SEARCH_YEARS = 401  # the Gregorian calendar repeats every 400 years
_NEVER_PROBE_START = datetime(2000, 1, 1)


@dataclass(frozen=True, slots=True)
class Recurrence:
    """When a job fires; see the module docstring for the meaning of each combination."""

    cron: str | None = None
    every_ms: int | None = None
    start_at: datetime | None = None
    anchor: datetime | None = None
    end_date: datetime | None = None
    limit: int | None = None
    tz: str = "UTC"
    dst_skipped: Literal["shift", "skip"] | None = None
    dst_repeated: Literal["once", "twice"] | None = None


@dataclass(frozen=True, slots=True, eq=False)
class _Spec:
    """A parsed cron expression: the allowed values of each field, shared by every job."""

    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    months: frozenset[int]
    dom: frozenset[int]
    dom_last: bool
    dom_nearest: int | None
    dow: frozenset[int]  # 0 = Sunday
    dow_nth: dict[int, frozenset[int]]  # weekday -> k of "k-th in month" (_LAST = last)
    day_and: bool  # Vixie: AND the day fields when either starts with '*'
    fixed_time: bool  # minute and hour both fixed: the Vixie "fixed-time job"
    days_cache: dict[tuple[int, int], tuple[int, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Dst:
    """A job's resolved DST policy."""

    shift: bool  # a wall time in a gap fires at the gap's end (else: not at all)
    twice: bool  # a repeated wall time fires in both passes (else: first pass only)


# ---------------------------------------------------------------- validation


def validate_tz(tz: str) -> None:
    """Raise ScheduleError(schedule.tz) unless `tz` names an IANA time zone."""
    _zone(tz)


def validate_cron(expr: str, tz: str = "UTC") -> None:
    """Raise ScheduleError naming the bad field, or saying the expression never fires."""
    validate_tz(tz)
    spec = _parse(expr)
    # 400 years from any start cover every calendar, so this answers in milliseconds.
    if _next_wall(spec, _NEVER_PROBE_START) is None:
        raise ScheduleError(
            CRON_FIELD,
            "expression never fires: no calendar date matches its day-of-month, month and"
            " day-of-week fields (e.g. '0 0 31 2 *': February has no 31st)",
        )


@lru_cache(maxsize=512)
def _zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    # ZoneInfo raises KeyError for unknown keys, ValueError for odd paths and
    # OSError for directories such as "America".
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ScheduleError(TZ_FIELD, f"unknown time zone '{tz}'") from None


def _split(expr: str) -> list[str]:
    text = expr.strip()
    if text.startswith("@"):
        macro = _MACROS.get(text.lower())
        if macro is None:
            known = ", ".join(_MACROS)
            raise ScheduleError(CRON_FIELD, f"unknown macro '{text}' (known: {known})")
        text = macro
    fields = text.split()
    if len(fields) not in (5, 6):
        raise ScheduleError(
            CRON_FIELD, f"expected 5 fields (or 6 with leading seconds), got {len(fields)}"
        )
    return fields


def _normalize_dow(token: str) -> str:
    return ",".join(_QUARTZ_LAST_DOW.sub(r"L\1", part) for part in token.split(","))


def _check_field(name: str, token: str) -> None:
    """Expand one field alone, so the error names the field that croniter rejected."""
    bad = ScheduleError(CRON_FIELD, f"bad {name} field '{token}' (allowed {_ALLOWED[name]})")
    if any(_HASH_OR_RANDOM.match(part) for part in token.split(",")):
        raise bad
    probe = ["*"] * 5
    probe[_PROBE_INDEX[name]] = _normalize_dow(token) if name == "day-of-week" else token
    try:
        croniter.expand(" ".join(probe))
    except (ValueError, TypeError, KeyError, IndexError):
        # croniter's errors are ValueErrors; the others guard against its internals.
        raise bad from None


# ------------------------------------------------------------------- parsing


@lru_cache(maxsize=4096)
def _parse(expr: str) -> _Spec:
    """Parse once per distinct expression; every job using it shares the result."""
    fields = _split(expr)
    names = ("second", *_FIVE_FIELDS) if len(fields) == 6 else _FIVE_FIELDS
    for name, token in zip(names, fields, strict=True):
        _check_field(name, token)
    fields[-1] = _normalize_dow(fields[-1])
    try:
        expanded, nth = croniter.expand(" ".join(fields), second_at_beginning=len(fields) == 6)
    except (ValueError, TypeError, KeyError, IndexError):  # each field alone was fine
        raise ScheduleError(CRON_FIELD, f"bad expression '{expr}'") from None
    minute, hour, dom, _month, dow = fields[-5:]
    return _Spec(
        seconds=tuple(_values(expanded[5], 0, 59)) if len(fields) == 6 else (0,),
        minutes=tuple(_values(expanded[0], 0, 59)),
        hours=tuple(_values(expanded[1], 0, 23)),
        months=frozenset(_values(expanded[3], 1, 12)),
        dom=frozenset() if _nearest(dom) else frozenset(_values(expanded[2], 1, 31)),
        dom_last="l" in expanded[2],
        dom_nearest=_nearest(dom),
        dow=frozenset(_values(expanded[4], 0, 6)) - nth.keys(),
        dow_nth=_nth_sets(nth),
        day_and=dom.startswith(("*", "?")) or dow.startswith(("*", "?")),
        fixed_time=not minute.startswith("*") and not hour.startswith("*"),
    )


def _values(expanded: list[int | str], low: int, high: int) -> list[int]:
    """croniter writes a full field as ['*'] and 'last day' as 'l'; keep the numbers."""
    if expanded == ["*"]:
        return list(range(low, high + 1))
    return sorted(v for v in expanded if isinstance(v, int))


def _nearest(dom_token: str) -> int | None:
    match = _NEAREST_WEEKDAY.match(dom_token)
    return int(match.group(1) or match.group(2)) if match else None


def _nth_sets(nth: dict[int, set[int | str]]) -> dict[int, frozenset[int]]:
    return {wd: frozenset(_LAST if k == "l" else int(k) for k in ks) for wd, ks in nth.items()}


# -------------------------------------------------------- local wall-clock search


def _month_days(spec: _Spec, year: int, month: int) -> tuple[int, ...]:
    """The matching days of one month, memoized on the spec (a month is asked often)."""
    key = (year, month)
    days = spec.days_cache.get(key)
    if days is None:
        if len(spec.days_cache) >= 256:
            spec.days_cache.clear()
        days = _compute_month_days(spec, year, month)
        spec.days_cache[key] = days
    return days


def _compute_month_days(spec: _Spec, year: int, month: int) -> tuple[int, ...]:
    first_weekday, last = calendar.monthrange(year, month)  # Monday = 0
    nearest = _nearest_weekday(year, month, spec.dom_nearest, last)
    days = []
    for day in range(1, last + 1):
        weekday = (first_weekday + day) % 7  # Sunday = 0, as in cron
        dom_ok = day in spec.dom or (spec.dom_last and day == last) or day == nearest
        ks = spec.dow_nth.get(weekday, ())
        nth_ok = (day - 1) // 7 + 1 in ks or (_LAST in ks and day + 7 > last)
        dow_ok = weekday in spec.dow or nth_ok
        if (dom_ok and dow_ok) if spec.day_and else (dom_ok or dow_ok):
            days.append(day)
    return tuple(days)


def _nearest_weekday(year: int, month: int, day: int | None, last: int) -> int | None:
    """Quartz `nW`: the weekday nearest `day` without leaving the month.

    A month without that day (31W in April) has no match, as plain `31` has none.
    """
    if day is None or day > last:
        return None
    weekday = calendar.weekday(year, month, day)  # Monday = 0
    if weekday == 5:  # Saturday: Friday before, or Monday after if the 1st
        return day - 1 if day > 1 else day + 2
    if weekday == 6:  # Sunday: Monday after, or Friday before if the last day
        return day + 1 if day < last else day - 2
    return day


def _next_time(spec: _Spec, hour: int, minute: int, second: int) -> tuple[int, int, int] | None:
    """First allowed time of day at or after hour:minute:second, or None for tomorrow."""
    hours, minutes, seconds = spec.hours, spec.minutes, spec.seconds
    i = bisect_left(hours, hour)
    if i < len(hours) and hours[i] == hour:
        j = bisect_left(minutes, minute)
        if j < len(minutes) and minutes[j] == minute:
            k = bisect_left(seconds, second)
            if k < len(seconds):
                return hour, minute, seconds[k]
            j += 1
        if j < len(minutes):
            return hour, minutes[j], seconds[0]
        i += 1
    if i < len(hours):
        return hours[i], minutes[0], seconds[0]
    return None


def _next_wall(spec: _Spec, start: datetime) -> datetime | None:
    """First matching naive wall time at or after `start` (whole seconds)."""
    year, month, day = start.year, start.month, start.day
    time_of_day = (start.hour, start.minute, start.second)
    for _ in range(12 * _SEARCH_YEARS):
        if month in spec.months:
            days = _month_days(spec, year, month)
            for candidate in days[bisect_left(days, day) :]:
                at = _next_time(spec, *(time_of_day if candidate == day else (0, 0, 0)))
                if at is not None:
                    return datetime(year, month, candidate, *at)
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
        if year > 9999:
            return None
        day, time_of_day = 1, (0, 0, 0)
    return None


# ------------------------------------------------------- wall clock -> instants
#
# Two offsets describe a wall time: read with fold=0 and with fold=1 (PEP 495). Equal:
# the wall time exists once. fold=0 larger: it is repeated (fall-back), fold=0 being the
# first pass. fold=0 smaller: it falls in a gap (spring-forward). Instants are handled as
# naive UTC inside this section: comparing aware datetimes of one zone ignores fold.


def _offsets(wall: datetime, zone: tzinfo) -> tuple[timedelta, timedelta]:
    # zone.utcoffset(naive) reads the wall clock and its fold directly: ~25x cheaper
    # than attaching the zone with replace(tzinfo=...) first.
    first = zone.utcoffset(wall.replace(fold=0) if wall.fold else wall)
    second = zone.utcoffset(wall.replace(fold=1))
    assert first is not None and second is not None  # a ZoneInfo always has an offset
    return first, second


def _offset_at(zone: tzinfo, instant: datetime) -> timedelta | None:
    return instant.replace(tzinfo=UTC).astimezone(zone).utcoffset()


def _transition(zone: tzinfo, before: datetime, after: datetime) -> datetime:
    """The first instant in (before, after] with a new offset (bisection on seconds)."""
    old = _offset_at(zone, before)
    while after - before > _SECOND:
        middle = before + _SECOND * ((after - before) // _SECOND // 2)
        if _offset_at(zone, middle) == old:
            before = middle
        else:
            after = middle
    return after


def _min(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None or b is None:
        return a if b is None else b
    return min(a, b)


def _forward(
    spec: _Spec, zone: tzinfo, start: datetime, after: datetime, policy: _Dst
) -> datetime | None:
    """Walk matching walls from `start`; the first fire instant past `after` (naive UTC).

    A wall's first-pass instant grows with the wall, so the walk stops at the first wall
    whose first pass is past `after`; the best instant seen by then is the answer.
    """
    best: datetime | None = None
    wall = _next_wall(spec, start)
    while wall is not None:
        first, second = _offsets(wall, zone)
        if first < second:  # in a gap: fold=1 lands before the transition, fold=0 after
            moment = _transition(zone, wall - second, wall - first)
            if policy.shift:
                return _min(best, moment)
            wall = _next_wall(spec, moment + second)  # resume at the gap's end
            continue
        if first > second and policy.twice and wall - second > after:
            best = _min(best, wall - second)
        if wall - first > after:
            return _min(best, wall - first)
        wall = _next_wall(spec, wall + _SECOND)
    return best


def _next_cron(spec: _Spec, zone: tzinfo, after: datetime, policy: _Dst) -> datetime | None:
    """First instant (naive UTC) strictly after `after` at which the expression fires."""
    after_utc = after.astimezone(UTC).replace(tzinfo=None)
    local = after.astimezone(zone)
    wall = local.replace(tzinfo=None, fold=0, microsecond=0)  # candidates are whole seconds
    first, second = _offsets(wall, zone)
    if first > second and local.fold == 1:
        return _from_second_pass(spec, zone, wall, after_utc, policy)
    best = None
    if first > second and policy.twice:
        best = _second_pass_ahead(spec, zone, wall, after_utc)
    start = wall + _SECOND if local.microsecond else wall
    return _min(best, _forward(spec, zone, start, after_utc, policy))


def _second_pass_ahead(
    spec: _Spec, zone: tzinfo, wall: datetime, after: datetime
) -> datetime | None:
    """In a repeated hour's first pass: the second pass of walls up to now is still ahead.

    Second-pass instants grow with the wall, so only the earliest matching wall of the
    repeated hour matters; the forward walk covers the walls after `wall`.
    """
    first, second = _offsets(wall, zone)
    moment = _transition(zone, after, after + (first - second))
    candidate = _next_wall(spec, moment + second)  # the repeated hour starts at moment+second
    if candidate is None or candidate > wall:
        return None
    return candidate - second


def _from_second_pass(
    spec: _Spec, zone: tzinfo, wall: datetime, after: datetime, policy: _Dst
) -> datetime | None:
    """In a repeated hour's second pass: first passes are over, so jump past the hour.

    Jumping (instead of walking every wall whose first pass is behind us) keeps an
    every-second job from scanning 3,600 walls.
    """
    first, second = _offsets(wall, zone)
    moment = _transition(zone, after - (first - second), after)
    end = moment + first  # first wall after the repeated hour
    if policy.twice:
        candidate = _next_wall(spec, wall + _SECOND)
        if candidate is not None and candidate < end:
            return candidate - second
    return _forward(spec, zone, end, after, policy)


# ------------------------------------------------------------------ public API


def next_fire(rec: Recurrence, after: datetime, executed: int = 0) -> datetime | None:
    """First fire instant (UTC) strictly after `after`, or None when the job is done.

    Done means: `limit` reached counting `executed`, the next fire is past `end_date`,
    a one-shot already passed, or a cron expression that never fires again.
    """
    if rec.limit is not None and executed >= rec.limit:
        return None
    # Everything is compared in UTC: two datetimes of one zone compare ignoring fold.
    fire = _next_unbounded(rec, _utc("after", after))
    if fire is None or (rec.end_date is not None and fire > _utc("end_date", rec.end_date)):
        return None
    return fire


def fire_times(rec: Recurrence, after: datetime, n: int, executed: int = 0) -> list[datetime]:
    """The next `n` fires after `after`, stopping early exactly where `next_fire` would."""
    fires: list[datetime] = []
    while len(fires) < n:
        fire = next_fire(rec, after, executed + len(fires))
        if fire is None:
            break
        fires.append(fire)
        after = fire
    return fires


def _next_unbounded(rec: Recurrence, after: datetime) -> datetime | None:
    """The next fire (UTC) after `after` (UTC), ignoring `limit` and `end_date`."""
    if rec.cron is not None:  # cron wins over every_ms when both are set
        return _next_cron_fire(rec, after)
    phase = rec.start_at if rec.start_at is not None else rec.anchor
    if phase is None:
        raise ScheduleError("schedule", "an `every` or one-shot schedule needs start_at or anchor")
    start = _utc("start_at/anchor", phase)
    if rec.every_ms is not None:
        return _next_every(start, rec.every_ms, after)
    return start if start > after else None


def _next_every(start: datetime, every_ms: int, after: datetime) -> datetime:
    """start + k * every for the smallest k >= 0 past `after`, in exact UTC arithmetic."""
    if every_ms <= 0:
        raise ScheduleError(
            EVERY_FIELD, f"must be a positive number of milliseconds, got {every_ms}"
        )
    step = timedelta(milliseconds=every_ms)
    k = 0 if after < start else (after - start) // step + 1
    return start + k * step


def _next_cron_fire(rec: Recurrence, after: datetime) -> datetime | None:
    assert rec.cron is not None
    spec = _parse(rec.cron)
    zone = _zone(rec.tz)
    if rec.start_at is not None:
        # Fires at start_at itself count, so search from just before it.
        after = max(after, _utc("start_at", rec.start_at) - _TICK)
    fire = _next_cron(spec, zone, after, _policy(spec, rec))
    return None if fire is None else fire.replace(tzinfo=UTC)


def _policy(spec: _Spec, rec: Recurrence) -> _Dst:
    """Vixie defaults: fixed-time jobs shift out of gaps and run once; others follow time."""
    shift = spec.fixed_time if rec.dst_skipped is None else rec.dst_skipped == "shift"
    twice = not spec.fixed_time if rec.dst_repeated is None else rec.dst_repeated == "twice"
    return _Dst(shift=shift, twice=twice)


def _utc(name: str, value: datetime) -> datetime:
    """`value` as a UTC instant; naive datetimes are refused (their zone is a guess)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be an aware datetime, got naive {value.isoformat()}")
    # Adding a timedelta to a datetime of a DST zone moves its wall clock, not time:
    # all arithmetic below happens on UTC instants.
    return value.astimezone(UTC)
