"""The scheduler loop: a heap of next fire instants, catch-up, concurrency and limits.

The loop sleeps until the earliest deadline or a wake-up (a job added, changed,
removed, paused or triggered); it never polls on a tick. The sleep is capped
(`max_sleep_s`) only so that a wall-clock step is noticed and the watchdog is fed
from the loop itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol

import structlog

from runner.jobs.loader import LoadedJob
from runner.jobs.model import Job
from runner.store import (
    OPEN_STATES,
    RAN_STATES,
    Claims,
    JobRecord,
    JobStatus,
    Occurrence,
    SharedJob,
    Store,
)
from runner.timing.clock import Clock
from runner.timing.firetimes import Recurrence, next_fire
from runner.timing.policy import (
    MIN_GRACE,
    CatchupDecision,
    decide_catchup,
    idempotency_key,
    jitter_delay_ms,
    lateness_grace,
)

log = structlog.get_logger("runner.scheduler")

MAX_MISSED_SCAN = 100_000  # fire times examined when catching up, at most
MAX_SKIPPED_ROWS = 100  # skipped occurrences written per catch-up; the rest are only counted
CLOCK_JUMP = timedelta(seconds=2)


def to_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


HaltReason = Literal["removed", "shutdown", "replaced", "lease_lost"]


class RunControl:
    """Lets the scheduler stop an occurrence's pending retries without killing its attempt."""

    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self.reason: HaltReason | None = None

    def halt(self, reason: HaltReason) -> None:
        self.reason = reason
        self.stop.set()


class Executor(Protocol):
    """Runs every attempt of one occurrence; leaves `occ` final, or pending on shutdown."""

    async def __call__(
        self, job: Job, occ: Occurrence, deadline: datetime | None, control: RunControl
    ) -> None: ...


@dataclass
class Entry:
    """A job as the scheduler holds it."""

    loaded: LoadedJob
    record: JobRecord
    rec: Recurrence
    due: datetime | None = None
    version: int = 0
    tasks: dict[int, asyncio.Task[None]] = field(default_factory=dict)
    controls: dict[int, RunControl] = field(default_factory=dict)
    queued: int = 0
    pending: int = 0  # occurrences planned or running, not yet finished
    won: int = 0  # replicas: tasks that won their claim (the others run nothing here)

    @property
    def job(self) -> Job:
        return self.loaded.job

    @property
    def one_shot(self) -> bool:
        return not self.job.schedule.recurring


def schedule_hash(job: Job) -> str:
    text = job.schedule.model_dump_json() + job.dst.model_dump_json()
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def recurrence_of(job: Job, anchor_ms: int) -> Recurrence:
    s = job.schedule
    return Recurrence(
        cron=s.cron,
        every_ms=s.every,
        start_at=s.start_at,
        anchor=from_ms(anchor_ms),
        end_date=s.end_date,
        limit=s.limit,
        tz=s.tz,
        dst_skipped=job.dst.skipped,
        dst_repeated=job.dst.repeated,
    )


class Scheduler:
    """Owns the schedule: which occurrence fires when, and what happens to it."""

    def __init__(
        self,
        store: Store,
        executor: Executor,
        clock: Clock,
        *,
        max_concurrent: int = 64,
        max_sleep_s: float = 30.0,
        on_tick: Callable[[], None] | None = None,
        on_skip: Callable[[Job], None] | None = None,
        claims: Claims | None = None,
    ) -> None:
        self.store = store
        # Only a backend shared by replicas (PostgreSQL) has claims: None keeps the
        # single-replica path exactly as it was.
        self.claims = claims
        self.executor = executor
        self.clock = clock
        self.max_sleep_s = max_sleep_s
        self.on_tick = on_tick
        self.on_skip = on_skip
        self.entries: dict[str, Entry] = {}
        self.records: dict[str, JobRecord] = {}
        self.heap: list[tuple[int, int, str, int, int]] = []
        self.slots = asyncio.Semaphore(max_concurrent)
        self.wake = asyncio.Event()
        self.heartbeat = clock.monotonic()
        self.stopping = False
        self._seq = itertools.count()
        self._versions = itertools.count(1)
        self._open_counts: dict[str, int] = {}
        if claims is not None:
            claims.attach(self)

    # ---- the job set -------------------------------------------------------------

    def start(self, jobs: dict[str, LoadedJob]) -> None:
        """Load remembered state, add every job, and resume occurrences left open."""
        self.records = self.store.load_jobs()
        left_open = self.store.open_occurrences()
        for occ in left_open:  # they count toward `limit` before anything new is planned
            self._open_counts[occ.job] = self._open_counts.get(occ.job, 0) + 1
        for loaded in jobs.values():
            self.upsert(loaded)
        self._resume_open(left_open)

    def upsert(self, loaded: LoadedJob) -> str:
        """Add a job or apply its new definition; returns added, updated or unchanged."""
        name, now = loaded.job.name, self.clock.now()
        entry = self.entries.get(name)
        if entry is not None and entry.loaded.digest == loaded.digest:
            entry.loaded = loaded  # same definition, maybe a renamed file
            entry.record.path = loaded.path
            return "unchanged"
        sched_hash = schedule_hash(loaded.job)
        record = self.records.get(name) or self._new_record(loaded, now, sched_hash)
        outcome = "added" if entry is None else "updated"
        record.removed_ms = None
        new_schedule = record.schedule_hash != sched_hash
        new_one_shot = not loaded.job.schedule.recurring and record.definition_hash != loaded.digest
        if new_schedule or new_one_shot:
            self._restart_schedule(record, loaded, now, sched_hash)
        record.definition_hash = loaded.digest
        record.path = loaded.path
        self.records[name] = record
        entry = self._replace_entry(entry, loaded, record)
        self._reschedule(entry, now, catch_up=not new_schedule)
        self.store.save_job(record)
        log.debug("job.upserted", job=name, outcome=outcome, next_run_at=_iso(entry.due))
        return outcome

    def remove(self, name: str) -> bool:
        """Take a job out of the schedule: a running attempt finishes, retries are cancelled."""
        entry = self.entries.pop(name, None)
        if entry is None:
            return False
        for control in entry.controls.values():
            control.halt("removed")
        entry.record.removed_ms = to_ms(self.clock.now())
        entry.record.next_fire_ms = None
        self.store.save_job(entry.record)
        log.info("job.removed", job=name, running=len(entry.tasks))
        self.wake.set()
        return True

    def pause(self, name: str) -> JobRecord:
        return self._set_paused(name, True)

    def resume(self, name: str) -> JobRecord:
        return self._set_paused(name, False)

    def _set_paused(self, name: str, paused: bool) -> JobRecord:
        """A runtime pause (shared with other replicas); a file's `suspend` still wins."""
        entry = self._entry(name)
        entry.record.paused = paused
        self._reschedule(entry, self.clock.now(), catch_up=False)
        self.store.save_job(entry.record)
        if self.claims is not None:
            self.claims.set_paused(name, paused)
        log.info("job.paused" if paused else "job.resumed", job=name, next_run_at=_iso(entry.due))
        return entry.record

    def trigger(self, name: str) -> Occurrence:
        """Run a job now, outside its schedule (still subject to its concurrency policy)."""
        entry = self._entry(name)
        now_ms = to_ms(self.clock.now())
        while self.store.get_occurrence(name, now_ms) is not None:
            now_ms += 1  # two triggers within a millisecond stay two occurrences
        return self._start(entry, now_ms, "manual")

    def _entry(self, name: str) -> Entry:
        entry = self.entries.get(name)
        if entry is None:
            raise KeyError(name)
        return entry

    def _new_record(self, loaded: LoadedJob, now: datetime, sched_hash: str) -> JobRecord:
        now_ms = to_ms(now)
        return JobRecord(
            name=loaded.job.name,
            definition_hash=loaded.digest,
            schedule_hash=sched_hash,
            first_seen_ms=now_ms,
            anchor_ms=now_ms,
            path=loaded.path,
        )

    def _restart_schedule(
        self, record: JobRecord, loaded: LoadedJob, now: datetime, sched_hash: str
    ) -> None:
        # A changed schedule counts from now and keeps the execution count and the
        # `every` phase (first sighting); a changed one-shot is a new one-shot.
        record.schedule_hash = sched_hash
        if loaded.job.schedule.recurring:
            record.last_scheduled_ms = to_ms(now) - 1
        else:
            record.anchor_ms, record.last_scheduled_ms = to_ms(now), None
        record.succeeded_hash = None

    def _replace_entry(self, old: Entry | None, loaded: LoadedJob, record: JobRecord) -> Entry:
        entry = Entry(loaded, record, recurrence_of(loaded.job, record.anchor_ms))
        if old is not None:
            entry.tasks, entry.controls = old.tasks, old.controls
            entry.queued, entry.pending = old.queued, old.pending
            entry.won = old.won
        else:
            entry.pending = self._open_counts.pop(loaded.job.name, 0)
        self.entries[loaded.job.name] = entry
        return entry

    # ---- computing the next occurrence ---------------------------------------------

    def _reserved(self, entry: Entry) -> int:
        """Executions that count toward `limit`: finished runs plus those in flight."""
        return entry.record.execution_count + entry.pending

    def _reschedule(self, entry: Entry, now: datetime, *, catch_up: bool) -> None:
        entry.version = next(self._versions)  # older heap items for this job are now stale
        entry.due = None
        record = entry.record
        if entry.job.suspend or record.paused or self._one_shot_done(entry):
            self._set_due(entry, None)
            return
        after = self._after(entry)
        if catch_up:
            after, upcoming = self._catch_up(entry, after, now)
            if upcoming is not None and self._reserved(entry) == entry.record.execution_count:
                self._set_due(entry, upcoming)  # already computed by the missed-scan
                return
        else:
            after = max(after, now - timedelta(milliseconds=1))
        self._set_due(entry, next_fire(entry.rec, after, self._reserved(entry)))

    def _after(self, entry: Entry) -> datetime:
        """Fire times after this instant are still to come (or were missed)."""
        last = entry.record.last_scheduled_ms
        if last is not None:
            return from_ms(last)
        start = entry.job.schedule.start_at
        first = from_ms(entry.record.anchor_ms)
        if entry.one_shot and start is not None:
            first = min(first, start)  # a one-shot in the past is missed, not forgotten
        return first - timedelta(milliseconds=1)

    def _one_shot_done(self, entry: Entry) -> bool:
        # Survives restarts and edits that do not touch the definition.
        return entry.one_shot and entry.record.succeeded_hash == entry.record.definition_hash

    def _catch_up(
        self, entry: Entry, after: datetime, now: datetime
    ) -> tuple[datetime, datetime | None]:
        """Apply the catch-up policy to instants in (after, now - grace].

        Returns the new `after` and, when nothing was missed, the next fire time.
        """
        missed, total, beyond = self._missed(entry, after, now - MIN_GRACE)
        if not missed:
            return after, beyond
        decision = decide_catchup(missed, entry.job.catchup, now)
        upcoming = next_fire(entry.rec, missed[-1], entry.record.execution_count)
        if entry.job.catchup.policy == "latest" and upcoming is not None and upcoming <= now:
            # An occurrence is due right now: it is the latest, nothing to catch up.
            decision = CatchupDecision([], missed, "superseded by the occurrence due now")
        limit = entry.job.schedule.limit
        room = len(decision.run) if limit is None else max(limit - self._reserved(entry), 0)
        run, over = decision.run[:room], decision.run[room:]
        log.warning(
            "schedule.catchup",
            job=entry.job.name,
            missed=total,
            run=len(run),
            skipped=total - len(run),
            policy=entry.job.catchup.policy,
            reason=decision.reason,
        )
        for moment in decision.skip[-MAX_SKIPPED_ROWS:]:
            self._skip(entry, to_ms(moment), f"missed: {decision.reason}")
        for moment in over:
            self._skip(entry, to_ms(moment), "missed: limit reached")
        self._start_chain(entry, [to_ms(m) for m in run], "catchup")
        return max(missed[-1], after), None

    def _missed(
        self, entry: Entry, after: datetime, horizon: datetime
    ) -> tuple[list[datetime], int, datetime | None]:
        """Fire times in (after, horizon] (the last few hundred), their count, and the next one."""
        kept: deque[datetime] = deque(maxlen=MAX_SKIPPED_ROWS + 100)
        total, cursor, moment = 0, after, None
        for _ in range(MAX_MISSED_SCAN):
            moment = next_fire(entry.rec, cursor, entry.record.execution_count)
            if moment is None or moment > horizon:
                break
            kept.append(moment)
            total, cursor = total + 1, moment
        return list(kept), total, moment

    def _set_due(self, entry: Entry, due: datetime | None) -> None:
        entry.due = due
        entry.record.next_fire_ms = None if due is None else to_ms(due)
        entry.record.status = self._status(entry)
        if due is None:
            return
        gap = None
        if entry.job.jitter:
            following = next_fire(entry.rec, due, self._reserved(entry) + 1)
            gap = None if following is None else to_ms(following) - to_ms(due)
        fire_at = to_ms(due) + jitter_delay_ms(entry.job.name, due, entry.job.jitter, gap)
        heapq.heappush(
            self.heap, (fire_at, next(self._seq), entry.job.name, entry.version, to_ms(due))
        )
        self.wake.set()

    def _status(self, entry: Entry) -> JobStatus:
        record = entry.record
        if entry.job.suspend:
            return "suspended"
        if record.paused:
            return "paused"
        if entry.tasks:
            return "running" if len(entry.tasks) > entry.queued else "queued"
        if entry.due is not None:
            return "scheduled"
        return "failed" if record.last_outcome == "failed" else "completed"

    # ---- firing ----------------------------------------------------------------------

    def next_deadline_ms(self) -> int | None:
        while self.heap:
            fire_at, _, name, version, _ = self.heap[0]
            entry = self.entries.get(name)
            if entry is not None and entry.version == version:
                return fire_at
            heapq.heappop(self.heap)  # stale: the job changed or left
        return None

    def fire_due(self, now: datetime) -> int:
        """Start every occurrence whose fire time has come; returns how many were due."""
        if self.claims is not None and not self.claims.writable():
            return 0  # the database is away: claim nothing; late ones follow catch-up later
        now_ms, fired = to_ms(now), 0
        # One transaction for everything due now: committed before any run task starts
        # (they only run once this loop yields), so each occurrence is still on disk
        # before its call is made.
        with self.store.batch():
            while (deadline := self.next_deadline_ms()) is not None and deadline <= now_ms:
                _, _, name, _, scheduled_ms = heapq.heappop(self.heap)
                self._due(self.entries[name], scheduled_ms, now)
                fired += 1
        return fired

    def _due(self, entry: Entry, scheduled_ms: int, now: datetime) -> None:
        if self._late(entry, from_ms(scheduled_ms), now):
            # Late: downtime, a stalled loop or a forward clock step. Catch up by policy.
            entry.record.last_scheduled_ms = scheduled_ms - 1
            self._reschedule(entry, now, catch_up=True)
            return
        self._start(entry, scheduled_ms, "schedule")
        self._reschedule(entry, now, catch_up=False)

    def _late(self, entry: Entry, scheduled: datetime, now: datetime) -> bool:
        lateness = now - scheduled - timedelta(milliseconds=entry.job.jitter)
        if lateness <= MIN_GRACE:
            return False
        following = next_fire(entry.rec, scheduled, entry.record.execution_count)
        return lateness > lateness_grace(None if following is None else following - scheduled)

    def _skip(
        self, entry: Entry, scheduled_ms: int, reason: str, trigger: str = "schedule"
    ) -> Occurrence:
        occ = self._occurrence(entry, scheduled_ms, trigger)
        occ.state, occ.reason, occ.finished_ms = "skipped", reason, occ.created_ms
        if trigger != "manual":  # a manual run does not move the schedule
            entry.record.last_scheduled_ms = max(entry.record.last_scheduled_ms or 0, scheduled_ms)
        if self.store.plan(occ, entry.record):
            log.info(
                "run.skipped",
                job=entry.job.name,
                scheduled_at=_iso(from_ms(scheduled_ms)),
                reason=reason,
            )
            if self.on_skip is not None:
                self.on_skip(entry.job)
        return occ

    def _occurrence(self, entry: Entry, scheduled_ms: int, trigger: str) -> Occurrence:
        now_ms = to_ms(self.clock.now())
        key = idempotency_key(entry.job.name, scheduled_ms)
        return Occurrence(entry.job.name, scheduled_ms, key, trigger=trigger, created_ms=now_ms)

    def _start(self, entry: Entry, scheduled_ms: int, trigger: str) -> Occurrence:
        policy = entry.job.concurrency
        # With replicas, a task waiting for (or having lost) its claim runs nothing here.
        busy = bool(entry.tasks) if self.claims is None else entry.won > 0
        if busy and policy == "forbid":
            return self._skip(
                entry, scheduled_ms, "previous run still running (concurrency forbid)", trigger
            )
        if entry.tasks and policy == "replace":
            for key, task in list(entry.tasks.items()):
                entry.controls[key].halt("replaced")
                task.cancel()
        occ = self._plan(entry, scheduled_ms, trigger)
        if occ is not None:
            self._spawn(entry, [occ])
        return occ or self._occurrence(entry, scheduled_ms, trigger)

    def _start_chain(self, entry: Entry, instants: list[int], trigger: str) -> None:
        """Catch-up runs of one job go one after another, each its own occurrence."""
        planned = [o for o in (self._plan(entry, ms, trigger) for ms in instants) if o is not None]
        if planned:
            self._spawn(entry, planned)

    def _plan(self, entry: Entry, scheduled_ms: int, trigger: str) -> Occurrence | None:
        """Write the occurrence before anything is called, so a crash never forgets it."""
        occ = self._occurrence(entry, scheduled_ms, trigger)
        if trigger != "manual":
            entry.record.last_scheduled_ms = max(entry.record.last_scheduled_ms or 0, scheduled_ms)
        entry.record.status = "queued"
        limit = None if trigger == "manual" else entry.job.schedule.limit
        if not self.store.plan(occ, entry.record, limit=limit):
            log.warning("run.duplicate", job=entry.job.name, scheduled_ms=scheduled_ms)
            return None
        entry.pending += 1
        return occ

    def _spawn(self, entry: Entry, occs: list[Occurrence]) -> None:
        key = occs[0].scheduled_ms
        control = RunControl()
        entry.controls[key] = control
        entry.queued += 1
        task = asyncio.create_task(
            self._execute(entry, occs, control, key), name=f"run:{entry.job.name}"
        )
        entry.tasks[key] = task

    async def _execute(
        self, entry: Entry, occs: list[Occurrence], control: RunControl, key: int
    ) -> None:
        started, won = False, False
        lost: list[Occurrence] = []
        try:
            if self.claims is not None:
                lost = await self._claim(entry, occs)
                won = len(lost) < len(occs)
                entry.won += won
            async with self.slots:
                entry.queued -= 1
                started = True
                for occ in occs:
                    if control.stop.is_set():
                        break
                    if lost and any(occ is o for o in lost):
                        continue
                    if self.claims is not None and not self.claims.may_start(occ):
                        break  # no lease to spare: left open for whoever holds one next
                    await self._run_one(entry, occ, control)
        finally:
            if not started:
                entry.queued -= 1
            entry.won -= won
            entry.tasks.pop(key, None)
            entry.controls.pop(key, None)
            for occ in occs:
                if lost and any(occ is o for o in lost):
                    entry.pending -= 1
                    continue
                self._finished(entry, occ, control)
                if self.claims is not None:
                    self.claims.released(occ)

    async def _claim(self, entry: Entry, occs: list[Occurrence]) -> list[Occurrence]:
        """Wait for the database's verdict on each claim; the ones another replica won."""
        assert self.claims is not None
        lost = []
        for occ in occs:
            if not await self.claims.claimed(occ):
                log.debug("run.claimed_elsewhere", job=occ.job, scheduled_ms=occ.scheduled_ms)
                lost.append(occ)
        return lost

    async def _run_one(self, entry: Entry, occ: Occurrence, control: RunControl) -> None:
        now_ms = to_ms(self.clock.now())
        occ.started_ms = occ.started_ms or now_ms
        entry.record.status, entry.record.last_started_ms = "running", now_ms
        # The executor writes the occurrence as running when an attempt starts.
        try:
            await self.executor(entry.job, occ, entry.due, control)
        except asyncio.CancelledError:
            if control.reason == "replaced":
                occ.state, occ.reason = (
                    "cancelled",
                    "replaced by a newer occurrence (concurrency replace)",
                )
            raise  # on shutdown the occurrence stays open and resumes after restart
        except Exception as exc:  # a bug must fail this occurrence, not strand it as running
            log.exception("run.crashed", job=entry.job.name, scheduled_ms=occ.scheduled_ms)
            occ.state, occ.last_error = "failed", f"internal error: {type(exc).__name__}: {exc}"

    def _finished(self, entry: Entry, occ: Occurrence, control: RunControl) -> None:
        if occ.state in OPEN_STATES and control.reason == "removed":
            occ.state, occ.reason = "cancelled", "job removed; pending retries cancelled"
        if occ.state in OPEN_STATES:
            if self.claims is not None:
                entry.pending -= 1  # its lease decides who resumes it, maybe another replica
            return  # interrupted by shutdown or a crash: left open on purpose
        entry.pending -= 1
        record = entry.record
        now_ms = to_ms(self.clock.now())
        occ.finished_ms = occ.finished_ms or now_ms
        if occ.started_ms is not None and occ.duration_ms is None:
            occ.duration_ms = now_ms - occ.started_ms
        if occ.state in RAN_STATES:
            record.execution_count += 1
            record.last_outcome, record.last_error = occ.state, occ.last_error
            record.last_finished_ms = now_ms
            record.retry_count = max(occ.attempts - 1, 0)
            if occ.state == "succeeded" and entry.one_shot:
                record.succeeded_hash = record.definition_hash
        current = self.entries.get(entry.job.name)
        if current is not None and current.record is record:
            if current.due is None and not current.tasks:
                self._reschedule(current, self.clock.now(), catch_up=False)
            record.status = self._status(current)
        self.store.finish(occ, record)

    def _resume_open(self, open_occurrences: list[Occurrence]) -> None:
        """Occurrences left planned or running by a crash or shutdown run again, same key."""
        resumed: dict[str, list[Occurrence]] = {}
        for occ in open_occurrences:
            entry = self.entries.get(occ.job)
            if entry is None and self.claims is not None:
                self.claims.released(occ)  # a replica whose folder has the job will take it
                continue
            if entry is None:
                occ.state, occ.reason = "cancelled", "job no longer defined"
                occ.finished_ms = to_ms(self.clock.now())
                self.store.update_occurrence(occ)
                continue
            log.info(
                "run.resumed", job=occ.job, scheduled_ms=occ.scheduled_ms, attempts=occ.attempts
            )
            resumed.setdefault(occ.job, []).append(occ)
        for name, occs in resumed.items():  # one job's open occurrences run in order
            self._spawn(self.entries[name], occs)

    # ---- replicas sharing a database (runner.store.Replica) --------------------------

    def adopt(self, occurrences: list[Occurrence]) -> None:
        """Run occurrences taken over from a replica whose lease expired (same keys)."""
        by_job: dict[str, list[Occurrence]] = {}
        for occ in occurrences:
            entry = self.entries.get(occ.job)
            if entry is None or occ.scheduled_ms in entry.tasks:
                # Gone from our folder, or our own task still has it (its finish is
                # written under the new token): nothing to start.
                if entry is None:
                    assert self.claims is not None
                    self.claims.released(occ)
                continue
            log.warning(
                "run.taken_over", job=occ.job, scheduled_ms=occ.scheduled_ms, attempts=occ.attempts
            )
            by_job.setdefault(occ.job, []).append(occ)
        for name, occs in by_job.items():
            entry = self.entries[name]
            entry.pending += len(occs)
            self._spawn(entry, occs)

    def lease_lost(self, job: str, scheduled_ms: int) -> None:
        """No new attempt of this job's runs here: an attempt in flight may still finish."""
        entry = self.entries.get(job)
        if entry is None:
            return
        log.warning("run.lease_lost", job=job, scheduled_ms=scheduled_ms)
        for control in entry.controls.values():
            control.halt("lease_lost")

    def shared(self, jobs: list[SharedJob]) -> None:
        """Apply what other replicas wrote: pause state, counts, results, first sighting."""
        now = self.clock.now()
        for shared in jobs:
            record = self.records.get(shared.name)
            if record is None or shared.definition_hash != record.definition_hash:
                continue  # another version of the job (folders sync at their own pace)
            moved, counted = _merge_shared(record, shared)
            entry = self.entries.get(shared.name)
            if entry is None or entry.record is not record:
                continue
            if moved or (counted and entry.job.schedule.limit is not None):
                entry.rec = recurrence_of(entry.job, record.anchor_ms)
                self._reschedule(entry, now, catch_up=False)

    def store_available(self, available: bool) -> None:
        self.wake.set()  # back: fire what is due; away: the loop stops claiming

    def known_jobs(self) -> set[str]:
        return set(self.entries)

    # ---- the loop ----------------------------------------------------------------------

    async def run(self) -> None:
        """Fire due occurrences, then sleep until the next deadline or a wake-up."""
        last_wall, last_mono = self.clock.now(), self.clock.monotonic()
        while not self.stopping:
            self.wake.clear()
            now, mono = self.clock.now(), self.clock.monotonic()
            self._check_clock(last_wall, last_mono, now, mono)
            self.fire_due(now)
            self.heartbeat = mono
            if self.on_tick is not None:
                self.on_tick()
            last_wall, last_mono = now, mono
            await self.clock.sleep(self._sleep_for(self.clock.now()), self.wake)

    def _sleep_for(self, now: datetime) -> float:
        if self.claims is not None and not self.claims.writable():
            return self.max_sleep_s  # store_available(True) wakes the loop
        deadline = self.next_deadline_ms()
        if deadline is None:
            return self.max_sleep_s
        return min(max((deadline - to_ms(now)) / 1000, 0.0), self.max_sleep_s)

    def _check_clock(
        self, last_wall: datetime, last_mono: float, now: datetime, mono: float
    ) -> None:
        drift = (now - last_wall) - timedelta(seconds=mono - last_mono)
        if abs(drift) < CLOCK_JUMP:
            return
        direction = "forward" if drift > timedelta(0) else "backward"
        decision = (
            "overdue occurrences follow each job's catchup policy"
            if direction == "forward"
            else "occurrences already run are not repeated; waiting for the clock to catch up"
        )
        log.warning(
            "clock.jump",
            direction=direction,
            seconds=round(drift.total_seconds(), 3),
            decision=decision,
        )

    def stop(self) -> None:
        self.stopping = True
        self.wake.set()

    async def drain(self, grace_s: float) -> int:
        """Stop retries, wait up to `grace_s` for attempts in flight; cancel the rest."""
        self.stop()
        tasks = [t for e in self.entries.values() for t in e.tasks.values()]
        for entry in self.entries.values():
            for control in entry.controls.values():
                control.halt("shutdown")
        if not tasks:
            return 0
        _, pending = await asyncio.wait(tasks, timeout=grace_s)
        for task in pending:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*pending, return_exceptions=True)
        log.info("scheduler.drained", finished=len(tasks) - len(pending), cancelled=len(pending))
        return len(pending)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _merge_shared(record: JobRecord, shared: SharedJob) -> tuple[bool, bool]:
    """Copy another replica's view into ours: (phase, pause or one-shot changed; count grew)."""
    moved = shared.anchor_ms != record.anchor_ms or shared.paused != record.paused
    if shared.paused != record.paused:
        log.info("job.paused" if shared.paused else "job.resumed", job=record.name, by="replica")
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
