"""The scheduler: the job set, a heap of next fire instants, and the loop that fires them.

The loop sleeps until the earliest deadline or a wake-up (a job added, changed,
removed, paused or triggered). The sleep is capped (`max_sleep_s`, 1 s in the daemon)
only so that a wall-clock step is noticed within a second (asyncio sleeps on the
monotonic clock, which a step does not move) and the watchdog is fed from the loop.
The pure decisions (missed instants, catch-up, lateness, status) live in
runner.daemon.decisions, what a clock step does to each schedule in runner.timing.steps;
starting and settling runs in runner.daemon.dispatch; what is in flight per job in
runner.daemon.runs.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable, Collection
from datetime import datetime, timedelta

import structlog

from runner.daemon.clocksteps import ClockSteps
from runner.daemon.decisions import (
    Missed,
    from_ms,
    is_late,
    iso,
    merge_shared,
    plan_catchup,
    recurrence_of,
    scan_missed,
    schedule_hash,
    shared_ms,
    status_of,
    to_ms,
)
from runner.daemon.dispatch import Dispatch
from runner.daemon.runs import IDLE, Entry, Executor, HaltReason, JobRuns, RunControl
from runner.jobs.loader import LoadedJob
from runner.jobs.model import Job
from runner.store import (
    Claims,
    JobRecord,
    JobStatus,
    Occurrence,
    SharedJob,
    Store,
    job_row,
)
from runner.timing.clock import Clock
from runner.timing.firetimes import next_fire
from runner.timing.policy import MIN_GRACE, idempotency_key, jitter_delay_ms
from runner.timing.steps import shifted

__all__ = ["Entry", "Executor", "HaltReason", "RunControl", "Scheduler", "from_ms", "to_ms"]

log = structlog.get_logger("runner.scheduler")

# The event loop's timers count whole milliseconds (uvloop's libuv truncates its clock to
# the millisecond; asyncio rounds its poll timeout up to one), so a timer set for an
# instant fires up to about a millisecond after it (0.4 ms at the median, measured). The
# daemon's loop (`landing_s`) asks to wake EARLY_S before a deadline and then holds the
# thread for what is left, at most LANDING_S (issue 12, item 3: fire precision).
EARLY_S = 0.001
LANDING_S = 0.0015
# The daemon writes the occurrences due within this much of now ahead, in one commit
# (issue 12, item 3), and again once less than half of it is covered: at 1,000 instants
# a second, one commit for about 20 of them instead of one each. A deadline not covered
# yet wakes the loop PREPARE_WAKE_S before it, to write it then. At most PREPARE_BATCH
# are written in one pass (4.2 ms median with its commit, on a 100,000-job state file,
# measured); the rest follow in the next passes.
PREPARE_AHEAD_S = 0.04
PREPARE_WAKE_S = 0.03
PREPARE_BATCH = 512


class Scheduler(ClockSteps, Dispatch):
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
        landing_s: float = 0.0,
        prepare_ahead_s: float = 0.0,
    ) -> None:
        """`landing_s`: 0 sleeps to each deadline on the loop's timers; the daemon's
        LANDING_S wakes EARLY_S before it and holds the thread for the rest.
        `prepare_ahead_s`: 0 writes each occurrence at its instant; the daemon's
        PREPARE_AHEAD_S writes those due that soon ahead, together (`_prepare_ahead`)."""
        self.store = store
        self.landing_s = landing_s
        self.prepare_ahead_s = prepare_ahead_s if claims is None else 0.0
        self.prepared = {}
        self._prepared_until_ms = 0
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
        self.runs: dict[str, JobRuns] = {}  # by job name: outlives edits and removals
        # Counts changes to the job set (each definition added, replaced or removed): a
        # plan made when it had this value still holds while it does (runner.daemon.watch).
        self.definitions = 0
        # (fire at, version, job name, scheduled at): the version is unique and increasing,
        # so it also orders items due at the same millisecond by when they were planned
        # (no separate sequence number: one int fewer a job, issue 12 memory per job).
        self.heap: list[tuple[int, int, str, int]] = []
        self.slots = asyncio.Semaphore(max_concurrent)
        self.wake = asyncio.Event()
        self.heartbeat = clock.monotonic()
        self.stopping = False
        self._versions = itertools.count(1)
        self._run_ids = itertools.count(1)
        if claims is not None:
            claims.attach(self)

    # ---- the job set -------------------------------------------------------------

    def start(self, jobs: dict[str, LoadedJob], *, keep: Collection[str] | None = None) -> None:
        """Load remembered state, add every job, and resume occurrences left open.

        With `keep` (the folder was read), a recorded job that is neither in `jobs` nor
        in `keep` was deleted while the daemon was down: it is marked removed.
        """
        # Records keyed and named by the strings the jobs hold, not copies read from the
        # state (issue 12: memory per job).
        strings = {loaded.job.name: loaded.job.name for loaded in jobs.values()}
        strings.update((loaded.digest, loaded.digest) for loaded in jobs.values())
        self.records = self.store.load_jobs(strings)
        del strings
        # Each record as read, kept as the hash of its row, not the row: 100,000 tuples of
        # 18 values lived through the start and left its memory in fragments (issue 12:
        # 11 MB more RSS after a 100,000-job restart). Two different rows with equal
        # 64-bit hashes would leave that row unwritten until the job's next write; what
        # the scheduler holds is right either way.
        stored = {name: hash(job_row(record)) for name, record in self.records.items()}
        left_open = self.store.open_occurrences()
        for occ in left_open:  # they count toward `limit` before anything new is planned
            if occ.trigger != "manual":
                self._runs_of(occ.job).pending += 1
            record = self.records.get(occ.job)
            if record is not None and _written_ahead(occ):
                # Written ahead of its instant, its job's row without it (`_prepare_ahead`;
                # the row is written once its instant comes, `Dispatch._prepared`): the
                # schedule goes on after it, and it runs at its instant (it waits for
                # `next_attempt_ms`), so it is neither planned again nor forgotten.
                record.last_scheduled_ms = max(record.last_scheduled_ms or 0, occ.scheduled_ms)
        now = self.clock.now()
        for loaded in jobs.values():
            self._upsert(loaded, now, save=False)
        # One write of the rows that changed (a restart changes few), not a statement per
        # job, and no debug line per job: 100,000 of each were a fifth of the scheduler's
        # start (issue 12).
        self.store.save_jobs(
            [r for name, r in self.records.items() if stored.get(name) != hash(job_row(r))]
        )
        del stored
        if keep is not None:
            self._mark_removed(set(jobs) | set(keep))
        self._resume_open(left_open)

    def _mark_removed(self, defined: set[str]) -> None:
        """Issue 11, item 3: without this, `plan` kept proposing to remove such a job."""
        now_ms = to_ms(self.clock.now())
        for record in self.records.values():
            if record.name in defined or record.removed_ms is not None:
                continue
            record.removed_ms, record.next_fire_ms = now_ms, None
            self.store.save_job(record)
            log.info("job.removed", job=record.name, running=0, while_stopped=True)

    def upsert(self, loaded: LoadedJob) -> str:
        """Add a job or apply its new definition; returns added, updated or unchanged."""
        outcome = self._upsert(loaded, self.clock.now(), save=True)
        if outcome != "unchanged":
            due = self.entries[loaded.job.name].due
            log.debug("job.upserted", job=loaded.job.name, outcome=outcome, next_run_at=iso(due))
        return outcome

    def _upsert(self, loaded: LoadedJob, now: datetime, *, save: bool) -> str:
        self.definitions += 1
        name = loaded.job.name
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
        # Equal strings the job already holds, not the copies read from the state (a
        # restart's 100,000 records held their own: issue 12, memory per job).
        record.name, record.schedule_hash = name, sched_hash
        record.definition_hash = loaded.digest
        record.path = loaded.path
        self.records[name] = record
        # The runs in flight stay where they are: only the definition changes. A job
        # with none holds the shared idle JobRuns until it counts or runs something.
        runs = self.runs.get(name, IDLE)
        rec = recurrence_of(loaded.job, record.anchor_ms)
        if runs.shift_ms:
            rec = shifted(rec, runs.shift_ms)
        entry = Entry(loaded, record, rec, runs)
        self.entries[name] = entry
        self._hold(entry)
        self._reschedule(entry, now, catch_up=not new_schedule)
        if save:
            self.store.save_job(record)
        return outcome

    def remove(self, name: str) -> bool:
        """Take a job out of the schedule: a running attempt finishes, the rest is cancelled."""
        entry = self.entries.pop(name, None)
        if entry is None:
            return False
        self._unprepare(name)
        self.definitions += 1
        entry.runs.halt("removed")
        entry.record.removed_ms = to_ms(self.clock.now())
        entry.record.next_fire_ms = None
        self.store.save_job(entry.record)
        log.info("job.removed", job=name, running=len(entry.runs.active))
        self.wake.set()
        return True

    def pause(self, name: str) -> JobRecord:
        return self._set_paused(name, True)

    def resume(self, name: str) -> JobRecord:
        return self._set_paused(name, False)

    def _set_paused(self, name: str, paused: bool) -> JobRecord:
        """A runtime pause (shared with other replicas); a file's `suspend` still wins.

        A paused job starts no attempt: its pending retries and queued runs wait for
        `resume`; an attempt in flight finishes (issue 18, bug 9).
        """
        entry = self._entry(name)
        entry.record.paused = paused
        self._hold(entry)
        self._reschedule(entry, self.clock.now(), catch_up=False)
        self.store.save_job(entry.record)
        if self.claims is not None:
            self.claims.set_paused(name, paused)
        log.info("job.paused" if paused else "job.resumed", job=name, next_run_at=iso(entry.due))
        return entry.record

    def trigger(self, name: str) -> Occurrence:
        """Run a job now, outside its schedule (still subject to its concurrency policy).

        Its instant never coincides with one of the schedule's (that would share the
        scheduled run's key and drop it) nor with an earlier trigger's.
        """
        entry = self._entry(name)
        now_ms = max(to_ms(self.clock.now()), entry.runs.last_manual_ms + 1)
        while self._is_fire_instant(entry, now_ms):
            now_ms += 1
        self._runs_of(name).last_manual_ms = now_ms
        return self._start(entry, now_ms, "manual")

    def _is_fire_instant(self, entry: Entry, ms: int) -> bool:
        if ms in (entry.record.last_scheduled_ms, entry.record.next_fire_ms):
            return True
        fire = next_fire(entry.rec, from_ms(ms - 1))
        return fire is not None and to_ms(fire) == ms

    def _entry(self, name: str) -> Entry:
        entry = self.entries.get(name)
        if entry is None:
            raise KeyError(name)
        return entry

    def _new_record(self, loaded: LoadedJob, now: datetime, sched_hash: str) -> JobRecord:
        now_ms = shared_ms(now)
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

    # ---- computing the next occurrence ---------------------------------------------

    def _reserved(self, entry: Entry) -> int:
        """Executions that count toward `limit`: finished runs plus those in flight."""
        return entry.record.execution_count + entry.runs.pending

    def _reschedule(self, entry: Entry, now: datetime, *, catch_up: bool) -> None:
        entry.version = next(self._versions)  # older heap items for this job are now stale
        entry.due = None
        if self.prepared:
            self._unprepare(entry.job.name)  # written for the stale item, if any
        if entry.held or self._one_shot_done(entry):
            self._set_due(entry, None)
            return
        after = self._after(entry)
        horizon = now - MIN_GRACE
        if catch_up and after < horizon:
            count = entry.record.execution_count
            first = next_fire(entry.rec, after, count)
            if first is None or first > horizon:
                # Nothing missed (most jobs at a start): no scan (issue 12).
                reserved = self._reserved(entry)
                self._set_due(
                    entry, first if reserved == count else next_fire(entry.rec, after, reserved)
                )
                return
            missed = scan_missed(entry.rec, after, horizon, count)
            if missed.kept:
                after = max(self._catch_up(entry, missed, now), after)
            elif self._reserved(entry) == count:
                self._set_due(entry, missed.beyond)  # already computed by the scan
                return
        elif not catch_up:
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

    def _catch_up(self, entry: Entry, missed: Missed, now: datetime) -> datetime:
        """Apply the catch-up policy to missed instants; returns where the schedule resumes."""
        limit = entry.job.schedule.limit
        room = None if limit is None else limit - self._reserved(entry)
        plan = plan_catchup(entry.job, entry.rec, missed, now, entry.record.execution_count, room)
        log.warning(
            "schedule.catchup",
            job=entry.job.name,
            missed=plan.total,
            run=len(plan.run),
            skipped=plan.total - len(plan.run),
            policy=entry.job.catchup.policy,
            reason=plan.reason,
            **({"missed_at_least": True} if missed.truncated else {}),
        )
        for moment in plan.skip:
            self._skip(entry, to_ms(moment), f"missed: {plan.reason}")
        for moment in plan.over_limit:
            self._skip(entry, to_ms(moment), "missed: limit reached")
        self._start_chain(entry, [to_ms(m) for m in plan.run], "catchup")
        return plan.after

    def _set_due(self, entry: Entry, due: datetime | None) -> None:
        entry.due = due
        due_ms = None if due is None else shared_ms(due)
        entry.record.next_fire_ms = due_ms
        entry.record.status = self._status(entry)
        if due is None or due_ms is None:
            return
        job = entry.job
        fire_at = due_ms  # the same int twice in the heap item when there is no jitter
        if job.jitter:
            following = next_fire(entry.rec, due, self._reserved(entry) + 1)
            gap = None if following is None else to_ms(following) - due_ms
            fire_at = due_ms + jitter_delay_ms(job.name, due, job.jitter, gap)
        heapq.heappush(self.heap, (fire_at, entry.version, job.name, due_ms))
        self.wake.set()

    def _status(self, entry: Entry) -> JobStatus:
        runs = entry.runs
        active = bool(runs.active)
        running = active and runs.running  # most jobs have nothing in flight
        return status_of(entry.job, entry.record, active=active, running=running, due=entry.due)

    # ---- firing ----------------------------------------------------------------------

    def next_deadline_ms(self) -> int | None:
        while self.heap:
            fire_at, version, name, _ = self.heap[0]
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
                _, _, name, scheduled_ms = heapq.heappop(self.heap)
                self._due(self.entries[name], scheduled_ms, now)
                fired += 1
        return fired

    def _due(self, entry: Entry, scheduled_ms: int, now: datetime) -> None:
        if is_late(entry.job, entry.rec, from_ms(scheduled_ms), now, entry.record.execution_count):
            # Late: downtime, a stalled loop or a forward clock step. Catch up by policy.
            entry.record.last_scheduled_ms = scheduled_ms - 1
            self._reschedule(entry, now, catch_up=True)
            return
        self._start(entry, scheduled_ms, "schedule")
        self._reschedule(entry, now, catch_up=False)

    def shared(self, jobs: list[SharedJob]) -> None:
        """Apply what other replicas wrote: pause state, counts, results, first sighting."""
        now = self.clock.now()
        for shared in jobs:
            record = self.records.get(shared.name)
            if record is None or shared.definition_hash != record.definition_hash:
                continue  # another version of the job (folders sync at their own pace)
            if shared.paused != record.paused:
                log.info(
                    "job.paused" if shared.paused else "job.resumed", job=record.name, by="replica"
                )
            moved, counted = merge_shared(record, shared)
            entry = self.entries.get(shared.name)
            if entry is None or entry.record is not record:
                continue
            self._hold(entry)
            if moved or (counted and entry.job.schedule.limit is not None):
                entry.rec = shifted(recurrence_of(entry.job, record.anchor_ms), entry.runs.shift_ms)
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
            if self.landing_s:
                now = self._land(now)
                mono = self.clock.monotonic()  # both clocks after the hold, for the step check
            fired = self.fire_due(now)
            if self.prepare_ahead_s:
                if fired:  # after the first steps of the runs just started: calls go first
                    asyncio.get_running_loop().call_soon(self._prepare_ahead)
                else:
                    self._prepare_ahead()
            self.heartbeat = mono
            if self.on_tick is not None:
                self.on_tick()
            last_wall, last_mono = now, mono
            await self.clock.sleep(self._sleep_for(self.clock.now()), self.wake)

    def _prepare_ahead(self, more: bool = False) -> None:
        """Write the occurrences due within `prepare_ahead_s` now, in one commit, so that
        at each instant only the call is left (issue 12, item 3).

        Each heap item in the window is popped and pushed back (the heap stays the one
        order of what is due). A job's prepared occurrence is deleted again whenever its
        heap item goes stale (`_reschedule`, `remove`), when its instant is skipped
        (`_skip`), and on shutdown. Not prepared: jobs with a `limit` (counted at the
        instant), a forbid job with a run in flight (likely skipped), instants a clock
        step makes run again, and everything when replicas share the store (claimed at
        the instant). `more`: the rest of a window a full batch left.
        """
        if self.stopping:
            return
        now_ms = to_ms(self.clock.now())
        ahead_ms = round(self.prepare_ahead_s * 1000)
        if not more and self._prepared_until_ms - now_ms > ahead_ms // 2:
            return  # the last batch still covers more than half the window
        until = now_ms + ahead_ms
        heap = self.heap
        kept: list[tuple[int, int, str, int]] = []
        todo: list[Occurrence] = []
        while heap and heap[0][0] <= until:
            if len(todo) == PREPARE_BATCH:
                until = heap[0][0] - 1  # the rest of the window in the next pass
                asyncio.get_running_loop().call_soon(self._prepare_ahead, True)
                break
            item = heapq.heappop(heap)
            _, version, name, due_ms = item
            entry = self.entries.get(name)
            if entry is None or entry.version != version:
                continue  # stale: dropped, as next_deadline_ms drops it
            kept.append(item)
            if name not in self.prepared and self._preparable(entry, due_ms):
                key = idempotency_key(name, due_ms)
                todo.append(
                    Occurrence(name, due_ms, key, created_ms=now_ms, next_attempt_ms=due_ms)
                )
        for item in kept:
            heapq.heappush(heap, item)
        self._prepared_until_ms = until
        if todo:
            for occ, written in zip(todo, self.store.prepare(todo), strict=True):
                if written:
                    self.prepared[occ.job] = occ

    def _preparable(self, entry: Entry, due_ms: int) -> bool:
        job = entry.job
        if job.schedule.limit is not None or due_ms <= entry.runs.replay_until_ms:
            return False
        return not (job.concurrency == "forbid" and entry.runs.active)

    def _land(self, now: datetime) -> datetime:
        """Woken just before a deadline: wait for it here, not on a millisecond timer.

        The thread is held: nothing else runs on the loop meanwhile. Only a deadline
        under `landing_s` away is waited for, so the hold stays short; one further
        away, or past, is left to the loop's timers and to `fire_due`.
        """
        deadline = self.next_deadline_ms()
        if deadline is None:
            return now
        left = deadline / 1000 - now.timestamp()
        if not 0 < left <= self.landing_s:
            return now
        try:
            self.clock.land(left)
        except OSError as exc:
            # Seen under libfaketime (its clock_nanosleep refuses the absolute deadline
            # time.sleep passes): a precision aid must not stop the schedule. The loop's
            # timers alone from now on, as before landing.
            self.landing_s = 0.0
            log.warning("scheduler.landing_off", error=str(exc), decision="timers alone")
        return self.clock.now()

    def _sleep_for(self, now: datetime) -> float:
        if self.claims is not None and not self.claims.writable():
            return self.max_sleep_s  # store_available(True) wakes the loop
        deadline = self.next_deadline_ms()
        if deadline is None:
            return self.max_sleep_s
        # From the exact time, not the millisecond `to_ms` truncates to: that slept up to
        # 1 ms past every deadline (0.3 ms of the median lateness, measured; issue 12).
        left = deadline / 1000 - now.timestamp()
        if self.prepare_ahead_s and self._prepared_until_ms < deadline and left > PREPARE_WAKE_S:
            return min(left - PREPARE_WAKE_S, self.max_sleep_s)  # to write it ahead
        early = EARLY_S if self.landing_s else 0.0
        return min(max(left - early, 0.0), self.max_sleep_s)

    def stop(self) -> None:
        self.stopping = True
        self.wake.set()


def _written_ahead(occ: Occurrence) -> bool:
    """Prepared by `Scheduler._prepare_ahead` and not started: planned, no attempt yet, its
    first attempt due at its instant (one planned at its instant has none due)."""
    return (
        occ.trigger == "schedule"
        and occ.state == "planned"
        and occ.attempts == 0
        and occ.next_attempt_ms == occ.scheduled_ms
    )
