"""The next cron fire: the walk over local wall times, and the DST rules mapping them to UTC."""

from __future__ import annotations

import calendar
from bisect import bisect_left
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo

from runner.timing.cronspec import LAST, Spec

_SECOND = timedelta(seconds=1)
_SEARCH_YEARS = 401  # the Gregorian calendar repeats every 400 years


@dataclass(frozen=True, slots=True)
class Dst:
    """A job's resolved DST policy."""

    shift: bool  # a wall time in a gap fires at the gap's end (else: not at all)
    twice: bool  # a repeated wall time fires in both passes (else: first pass only)


# -------------------------------------------------------- local wall-clock search


def _month_days(spec: Spec, year: int, month: int) -> tuple[int, ...]:
    """The matching days of one month, memoized on the spec (a month is asked often)."""
    key = (year, month)
    days = spec.days_cache.get(key)
    if days is None:
        if len(spec.days_cache) >= 256:
            spec.days_cache.clear()
        days = _compute_month_days(spec, year, month)
        spec.days_cache[key] = days
    return days


def _compute_month_days(spec: Spec, year: int, month: int) -> tuple[int, ...]:
    first_weekday, last = calendar.monthrange(year, month)  # Monday = 0
    nearest = _nearest_weekday(year, month, spec.dom_nearest, last)
    days = []
    for day in range(1, last + 1):
        weekday = (first_weekday + day) % 7  # Sunday = 0, as in cron
        dom_ok = day in spec.dom or (spec.dom_last and day == last) or day == nearest
        ks = spec.dow_nth.get(weekday, ())
        nth_ok = (day - 1) // 7 + 1 in ks or (LAST in ks and day + 7 > last)
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


def _next_time(spec: Spec, hour: int, minute: int, second: int) -> tuple[int, int, int] | None:
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


def next_wall(spec: Spec, start: datetime) -> datetime | None:
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
    spec: Spec, zone: tzinfo, start: datetime, after: datetime, policy: Dst
) -> datetime | None:
    """Walk matching walls from `start`; the first fire instant past `after` (naive UTC).

    A wall's first-pass instant grows with the wall, so the walk stops at the first wall
    whose first pass is past `after`; the best instant seen by then is the answer.
    """
    best: datetime | None = None
    wall = next_wall(spec, start)
    while wall is not None:
        first, second = _offsets(wall, zone)
        if first < second:  # in a gap: fold=1 lands before the transition, fold=0 after
            moment = _transition(zone, wall - second, wall - first)
            if policy.shift:
                return _min(best, moment)
            wall = next_wall(spec, moment + second)  # resume at the gap's end
            continue
        if first > second and policy.twice and wall - second > after:
            best = _min(best, wall - second)
        if wall - first > after:
            return _min(best, wall - first)
        wall = next_wall(spec, wall + _SECOND)
    return best


def next_cron(spec: Spec, zone: tzinfo, after: datetime, policy: Dst) -> datetime | None:
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
    spec: Spec, zone: tzinfo, wall: datetime, after: datetime
) -> datetime | None:
    """In a repeated hour's first pass: the second pass of walls up to now is still ahead.

    Second-pass instants grow with the wall, so only the earliest matching wall of the
    repeated hour matters; the forward walk covers the walls after `wall`.
    """
    first, second = _offsets(wall, zone)
    moment = _transition(zone, after, after + (first - second))
    candidate = next_wall(spec, moment + second)  # the repeated hour starts at moment+second
    if candidate is None or candidate > wall:
        return None
    return candidate - second


def _from_second_pass(
    spec: Spec, zone: tzinfo, wall: datetime, after: datetime, policy: Dst
) -> datetime | None:
    """In a repeated hour's second pass: first passes are over, so jump past the hour.

    Jumping (instead of walking every wall whose first pass is behind us) keeps an
    every-second job from scanning 3,600 walls.
    """
    first, second = _offsets(wall, zone)
    moment = _transition(zone, after - (first - second), after)
    end = moment + first  # first wall after the repeated hour
    if policy.twice:
        candidate = next_wall(spec, wall + _SECOND)
        if candidate is not None and candidate < end:
            return candidate - second
    return _forward(spec, zone, end, after, policy)
