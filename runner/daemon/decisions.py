"""The scheduler's pure decisions: what was missed, what catch-up runs, what is late, status.

Plain functions over the job, its recurrence and its record: no asyncio, no I/O, no
clock reads (`now` is an argument). The scheduler (runner.daemon.scheduler) applies them.
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from runner.jobs.model import DstPolicy, Job, Schedule
from runner.store import JobRecord, JobStatus, SharedJob
from runner.timing.firetimes import Recurrence, next_fire
from runner.timing.policy import MIN_GRACE, CatchupDecision, decide_catchup, lateness_grace

MAX_MISSED_SCAN = 100_000  # fire times examined one by one when catching up, at most
MAX_SKIPPED_ROWS = 100  # skipped occurrences written per catch-up; the rest are only counted


def to_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


_SHARED_MS: dict[datetime, int] = {}
_SHARED_MS_MAX = 8_192


def shared_ms(moment: datetime) -> int:
    """`to_ms`, as one int object for every equal instant: 100,000 jobs' next fire times
    and first sightings are a few thousand instants, and an int of their own each was
    6 MB (issue 12, memory per job)."""
    ms = _SHARED_MS.get(moment)
    if ms is None:
        if len(_SHARED_MS) >= _SHARED_MS_MAX:
            _SHARED_MS.clear()
        ms = _SHARED_MS[moment] = to_ms(moment)
    return ms


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def iso(moment: datetime | None) -> str | None:
    """An instant as logs carry it (ISO 8601, UTC), or None."""
    return None if moment is None else moment.isoformat()


def schedule_hash(job: Job) -> str:
    return _per_schedule(job.schedule, job.dst)[0]


def recurrence_of(job: Job, anchor_ms: int) -> Recurrence:
    s = job.schedule
    if s.cron is not None:
        # A cron schedule's instants do not depend on the anchor (runner.timing.firetimes):
        # jobs with equal schedules share one (issue 12: memory per job).
        return _per_schedule(s, job.dst)[1]
    return _recurrence(s, job.dst, from_ms(anchor_ms))


def _recurrence(schedule: Schedule, dst: DstPolicy, anchor: datetime | None) -> Recurrence:
    return Recurrence(
        cron=schedule.cron,
        every_ms=schedule.every,
        start_at=schedule.start_at,
        anchor=anchor,
        end_date=schedule.end_date,
        limit=schedule.limit,
        tz=schedule.tz,
        dst_skipped=dst.skipped,
        dst_repeated=dst.repeated,
    )


# (id(schedule), id(dst)) -> (schedule, dst, hash, cron recurrence). The loader shares
# equal schedules between jobs (runner.jobs.sharing), so most jobs find theirs by
# identity: hashing two frozen models by value per job, and dumping them, was 5% of a
# 100,000-job start. The entry holds both models, so their ids are not reused meanwhile.
_SCHEDULES_MAX = 16_384
_schedules: dict[tuple[int, int], tuple[Schedule, DstPolicy, str, Recurrence]] = {}


def _per_schedule(schedule: Schedule, dst: DstPolicy) -> tuple[str, Recurrence]:
    found = _schedules.get((id(schedule), id(dst)))
    if found is None or found[0] is not schedule or found[1] is not dst:
        text = schedule.model_dump_json() + dst.model_dump_json()
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        rec = _recurrence(schedule, dst, None)
        if len(_schedules) >= _SCHEDULES_MAX:
            _schedules.clear()
        found = _schedules[id(schedule), id(dst)] = (schedule, dst, digest, rec)
    return found[2], found[3]


@dataclass(frozen=True)
class Missed:
    """Fire times in (after, horizon]: the last few hundred, how many, and what comes next."""

    kept: list[datetime]
    total: int
    beyond: datetime | None  # the first fire time after the horizon, always in the future
    truncated: bool  # more than MAX_MISSED_SCAN: `total` is a lower bound
    horizon: datetime


def scan_missed(rec: Recurrence, after: datetime, horizon: datetime, count: int) -> Missed:
    """Walk the fire times in (after, horizon]; past the scan cap, jump to after the horizon.

    The jump matters: a scan that stopped at its cap used to hand back an instant still
    in the past, so the next round caught up 100 more (issue 18, bug 6).
    """
    kept: deque[datetime] = deque(maxlen=MAX_SKIPPED_ROWS + 100)
    total, cursor = 0, after
    for _ in range(MAX_MISSED_SCAN):
        moment = next_fire(rec, cursor, count)
        if moment is None or moment > horizon:
            return Missed(list(kept), total, moment, False, horizon)
        kept.append(moment)
        total, cursor = total + 1, moment
    return Missed(list(kept), total, next_fire(rec, horizon, count), True, horizon)


@dataclass(frozen=True)
class CatchupPlan:
    """What to do with missed instants: run some, skip the rest, and where to resume."""

    run: list[datetime]
    skip: list[datetime]  # recorded as skipped (the most recent MAX_SKIPPED_ROWS)
    over_limit: list[datetime]  # would run, but `limit` has no room left
    reason: str
    total: int
    after: datetime  # every fire time up to here is decided


def plan_catchup(
    job: Job, rec: Recurrence, missed: Missed, now: datetime, count: int, room: int | None
) -> CatchupPlan:
    """Apply the job's catch-up policy; `room` is what `limit` still allows (None: no limit)."""
    decision = decide_catchup(missed.kept, job.catchup, now)
    upcoming = next_fire(rec, missed.kept[-1], count)
    if job.catchup.policy == "latest" and upcoming is not None and upcoming <= now:
        # An occurrence is due right now: it is the latest, nothing to catch up.
        decision = CatchupDecision([], missed.kept, "superseded by the occurrence due now")
    room = len(decision.run) if room is None else max(room, 0)
    run, over = decision.run[:room], decision.run[room:]
    after = missed.horizon if missed.truncated else missed.kept[-1]
    return CatchupPlan(
        run=run,
        skip=decision.skip[-MAX_SKIPPED_ROWS:],
        over_limit=over,
        reason=decision.reason,
        total=missed.total,
        after=after,
    )


def is_late(job: Job, rec: Recurrence, scheduled: datetime, now: datetime, count: int) -> bool:
    """Too late to count as on time: it follows the catch-up policy instead."""
    lateness = now - scheduled - timedelta(milliseconds=job.jitter)
    if lateness <= MIN_GRACE:
        return False
    following = next_fire(rec, scheduled, count)
    return lateness > lateness_grace(None if following is None else following - scheduled)


def is_last(rec: Recurrence, scheduled: datetime, count: int) -> bool:
    """No fire time follows this one (a one-shot, or the last before `limit` or `endDate`)."""
    return next_fire(rec, scheduled, count + 1) is None


def status_of(
    job: Job, record: JobRecord, *, active: bool, running: bool, due: datetime | None
) -> JobStatus:
    if job.suspend:
        return "suspended"
    if record.paused:
        return "paused"
    if active:
        return "running" if running else "queued"
    if due is not None:
        return "scheduled"
    return "failed" if record.last_outcome == "failed" else "completed"


def merge_shared(record: JobRecord, shared: SharedJob) -> tuple[bool, bool]:
    """Copy another replica's view into ours: (phase, pause or one-shot changed; count grew)."""
    moved = shared.anchor_ms != record.anchor_ms or shared.paused != record.paused
    record.anchor_ms, record.first_seen_ms = shared.anchor_ms, shared.first_seen_ms
    record.paused = shared.paused
    counted = shared.execution_count > record.execution_count  # `limit` may be reached
    record.execution_count = max(record.execution_count, shared.execution_count)
    if (shared.last_finished_ms or 0) >= (record.last_finished_ms or 0):
        record.last_started_ms = shared.last_started_ms
        record.last_finished_ms, record.last_outcome = shared.last_finished_ms, shared.last_outcome
        record.last_error, record.retry_count = shared.last_error, shared.retry_count
    if shared.succeeded_hash is not None and shared.succeeded_hash != record.succeeded_hash:
        record.succeeded_hash, moved = shared.succeeded_hash, True
    return moved, counted
