"""Fire-time computation: when a job's recurrence fires, as UTC instants (the public API).

Pure functions over plain data: no I/O, no clock reads, no asyncio. Every datetime in and
out is aware; cron expressions are evaluated on the job's local wall clock and returned
as UTC instants.

croniter is used only to *parse* an expression into field sets (`croniter.expand`, in
runner.timing.cronspec, its only importer); the next local time is computed over those
sets in runner.timing.cronwalk. Why not croniter's iterator:

- croniter 7.0.0 fires fixed-time jobs twice in a repeated (fall-back) hour, and we want
  Vixie cron / cronie semantics (see "DST" below);
- one croniter object per job costs ~1.5 KB and 65-250 µs to build, and 100,000 jobs are
  scheduled; the parsed sets here are shared per expression (`cronspec.parse` is an
  lru_cache).

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

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from runner.errors import ScheduleError
from runner.timing.cronspec import CRON_FIELD, Spec, parse
from runner.timing.cronwalk import Dst, next_cron, next_wall

__all__ = [
    "CRON_FIELD",
    "EVERY_FIELD",
    "TZ_FIELD",
    "Recurrence",
    "fire_times",
    "next_fire",
    "validate_cron",
    "validate_tz",
]

TZ_FIELD = "schedule.tz"
EVERY_FIELD = "schedule.every"

_TICK = timedelta(microseconds=1)
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


# ---------------------------------------------------------------- validation


def validate_tz(tz: str) -> None:
    """Raise ScheduleError(schedule.tz) unless `tz` names an IANA time zone."""
    _zone(tz)


def validate_cron(expr: str, tz: str = "UTC") -> None:
    """Raise ScheduleError naming the bad field, or saying the expression never fires."""
    validate_tz(tz)
    if _never_fires(expr):
        raise ScheduleError(
            CRON_FIELD,
            "expression never fires: no calendar date matches its day-of-month, month and"
            " day-of-week fields (e.g. '0 0 31 2 *': February has no 31st)",
        )


@lru_cache(maxsize=4096)
def _never_fires(expr: str) -> bool:
    # 400 years from any start cover every calendar, so this answers in milliseconds;
    # cached because 100,000 jobs share a few thousand expressions (issue 12: the probe
    # was 0.3 s of a 100,000-job start).
    return next_wall(parse(expr), _NEVER_PROBE_START) is None


@lru_cache(maxsize=512)
def _zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    # ZoneInfo raises KeyError for unknown keys, ValueError for odd paths and
    # OSError for directories such as "America".
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ScheduleError(TZ_FIELD, f"unknown time zone '{tz}'") from None


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
    if rec.start_at is not None:
        # Fires at start_at itself count, so search from just before it.
        after = max(after, _utc("start_at", rec.start_at) - _TICK)
    # Cron fires on whole seconds, so the first fire after `after` is the first after
    # `after` floored to its second: flooring loses nothing and lets the jobs that share
    # an expression and zone share one computation (start-up of 100,000 jobs, issue 12).
    floored = after.astimezone(UTC).replace(microsecond=0)
    key = (rec.cron, rec.tz, rec.dst_skipped, rec.dst_repeated)
    last = _last_answer.get(key)
    if last is not None and last[0] <= floored and (last[1] is None or floored < last[1]):
        return last[1]  # nothing fires in (last[0], last[1]): the same first fire
    fire = _cron_after(*key, floored)
    if len(_last_answer) >= _LAST_ANSWER_MAX:
        _last_answer.clear()
    _last_answer[key] = (floored, fire)
    return fire


# The last answer per expression, zone and DST policy: (after, first fire after it). A
# start asks once per job with `after` = now, which moves on while 100,000 jobs load; a
# cache keyed by the second missed once per expression and second (bench/startup.py).
_LAST_ANSWER_MAX = 65_536
_last_answer: dict[tuple[str, str, str | None, str | None], tuple[datetime, datetime | None]] = {}


@lru_cache(maxsize=16_384)
def _cron_after(
    cron: str, tz: str, skipped: str | None, repeated: str | None, after: datetime
) -> datetime | None:
    spec = parse(cron)
    policy = _policy(spec, skipped, repeated)
    fire = next_cron(spec, _zone(tz), after, policy)
    return None if fire is None else fire.replace(tzinfo=UTC)


def _policy(spec: Spec, skipped: str | None, repeated: str | None) -> Dst:
    """Vixie defaults: fixed-time jobs shift out of gaps and run once; others follow time."""
    shift = spec.fixed_time if skipped is None else skipped == "shift"
    twice = not spec.fixed_time if repeated is None else repeated == "twice"
    return Dst(shift=shift, twice=twice)


def _utc(name: str, value: datetime) -> datetime:
    """`value` as a UTC instant; naive datetimes are refused (their zone is a guess)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be an aware datetime, got naive {value.isoformat()}")
    # Adding a timedelta to a datetime of a DST zone moves its wall clock, not time:
    # all arithmetic below happens on UTC instants.
    return value.astimezone(UTC)
