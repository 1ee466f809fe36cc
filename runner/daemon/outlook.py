"""A job's outlook: its next fire times (DST changes marked), how often it fires, its end.

Pure: `now` (or `after`) is an argument. `next`, `plan` and `diff` all read fire times
from `next_fires`, which asks runner.timing.firetimes exactly as the scheduler does.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from runner.daemon.decisions import recurrence_of, to_ms
from runner.jobs.model import Job
from runner.timing.firetimes import fire_times

RATE_SAMPLE = 64  # fires averaged to measure how often a schedule fires


@dataclass(frozen=True, slots=True)
class Fire:
    """One fire instant, in UTC and on the job's wall clock; `dst` when the offset changed."""

    utc: datetime
    local: datetime
    dst: str | None = None  # e.g. "+01:00 -> +02:00": the zone's offset changed before it


@dataclass(frozen=True, slots=True)
class Progress:
    """What the daemon remembers of a job: its `every` phase and how many runs counted."""

    anchor_ms: int
    executed: int = 0


def next_fires(
    job: Job, after: datetime, n: int, progress: Progress | None = None
) -> list[datetime]:
    """The next `n` fire instants (UTC) after `after`, as the scheduler would compute them.

    Without `progress` the job is new to the daemon: its `every` phase starts at `after`
    and a one-shot's `start_at` counts even when it is past (it runs at once).
    """
    anchor_ms = progress.anchor_ms if progress else to_ms(after)
    executed = progress.executed if progress else 0
    since = after
    if progress is None and not job.schedule.recurring:
        since = min(after, job.schedule.start_at or after) - timedelta(milliseconds=1)
    return fire_times(recurrence_of(job, anchor_ms), since, max(n, 0), executed)


def marked(times: list[datetime], zone_name: str, now: datetime) -> list[Fire]:
    """`times` on the zone's wall clock, each marked when the offset changed since the
    previous one (or since `now`, for the first): a DST transition inside the window."""
    zone = ZoneInfo(zone_name)
    before = now.astimezone(zone).utcoffset()
    fires = []
    for utc in times:
        local = utc.astimezone(zone)
        offset = local.utcoffset()
        change = None if offset == before else f"{_offset(before)} -> {_offset(offset)}"
        fires.append(Fire(utc, local, change))
        before = offset
    return fires


def _offset(delta: timedelta | None) -> str:
    minutes = int((delta or timedelta()).total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def mean_interval(job: Job, now: datetime) -> float | None:
    """Seconds between fires, averaged over the next RATE_SAMPLE of them, ignoring
    `limit` and `endDate` (those are judged apart); None for a one-shot."""
    if not job.schedule.recurring:
        return None
    unbounded = replace(recurrence_of(job, to_ms(now)), limit=None, end_date=None)
    times = fire_times(unbounded, now, RATE_SAMPLE)
    if len(times) < 2:
        return None
    return (times[-1] - times[0]).total_seconds() / (len(times) - 1)


def ending(job: Job, fires: list[datetime], n: int, progress: Progress | None) -> str | None:
    """Why a recurring job stops within its next `n` fires (`fires` asked for n + 1), or None."""
    if not job.schedule.recurring or job.suspend or len(fires) > n:
        return None
    s = job.schedule
    last = f"after {fires[-1]:%Y-%m-%dT%H:%M:%SZ}" if fires else "before its next fire"
    executed = progress.executed if progress else 0
    if s.limit is not None and executed + len(fires) >= s.limit:
        return f"its limit of {s.limit} runs ends it {last}"
    end = s.end_date.astimezone(ZoneInfo("UTC")) if s.end_date else None
    return f"its endDate {end:%Y-%m-%dT%H:%M:%SZ} ends it {last}" if end else None


def span(seconds: float) -> str:
    """A duration for people: 45s, 1m, 1h30m, 2d."""
    rest = round(seconds)
    parts = []
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)):
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(parts[:2]) or "0s"
