"""Starting and running occurrences: concurrency policy, the durable plan, runs and their settling.

Every run's bookkeeping happens in its task's done-callback, which asyncio calls even
for a task cancelled before its first step: an occurrence is always settled (issue 18,
bug 2). `Scheduler` (runner.daemon.scheduler) decides when; this decides how.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable
from datetime import datetime

import structlog

from runner.daemon.decisions import from_ms, is_last, iso, to_ms
from runner.daemon.runs import IDLE, Entry, Executor, Item, JobRuns, Run, RunControl
from runner.jobs.model import Job
from runner.store import OPEN_STATES, RAN_STATES, Claims, JobRecord, JobStatus, Occurrence, Store
from runner.timing.clock import Clock
from runner.timing.policy import idempotency_key

log = structlog.get_logger("runner.scheduler")

_REASONS: dict[str | None, str] = {
    "replaced": "replaced by a newer occurrence (concurrency replace)",
    "removed": "job removed; pending retries cancelled",
}


class Dispatch:
    """The half of `Scheduler` that turns a due instant into a run and settles it."""

    store: Store
    claims: Claims | None
    executor: Executor
    clock: Clock
    on_skip: Callable[[Job], None] | None
    entries: dict[str, Entry]
    records: dict[str, JobRecord]
    runs: dict[str, JobRuns]
    slots: asyncio.Semaphore
    _run_ids: itertools.count[int]
    # Occurrences written ahead of their instants, by job (at most one each: the job's
    # next due); see Scheduler._prepare_ahead.
    prepared: dict[str, Occurrence]

    # What the scheduling half provides.
    def _reserved(self, entry: Entry) -> int:
        raise NotImplementedError

    def _reschedule(self, entry: Entry, now: datetime, *, catch_up: bool) -> None:
        raise NotImplementedError

    def _status(self, entry: Entry) -> JobStatus:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    # ---- starting ------------------------------------------------------------------
    def _runs_of(self, name: str) -> JobRuns:
        """The job's own JobRuns, made now if the job held the shared idle one: call it
        before counting, holding or running anything (the idle one refuses changes)."""
        runs = self.runs.get(name)
        if runs is None:
            runs = self.runs[name] = JobRuns()
            entry = self.entries.get(name)
            if entry is not None:
                entry.runs = runs
        return runs

    def _hold(self, entry: Entry) -> None:
        """Hold or release the job's runs as its pause and `suspend` say."""
        held = entry.held
        runs = self._runs_of(entry.job.name) if held else entry.runs
        runs.hold(held)
        self._release_if_idle(entry.job.name, runs)

    def _release_if_idle(self, name: str, runs: JobRuns) -> None:
        """A job with nothing in flight and nothing counted goes back to the shared idle
        JobRuns (issue 12: memory per job stays what it was at start once runs end)."""
        if runs is IDLE or not runs.idle() or self.runs.get(name) is not runs:
            return
        del self.runs[name]
        entry = self.entries.get(name)
        if entry is not None and entry.runs is runs:
            entry.runs = IDLE

    def _skip(
        self, entry: Entry, scheduled_ms: int, reason: str, trigger: str = "schedule"
    ) -> Occurrence:
        if trigger == "schedule":
            self._unprepare(entry.job.name)  # the skipped one is written in its place
        occ = self._occurrence(entry, scheduled_ms, trigger)
        occ.state, occ.reason, occ.finished_ms = "skipped", reason, occ.created_ms
        if trigger != "manual":  # a manual run does not move the schedule
            entry.record.last_scheduled_ms = max(entry.record.last_scheduled_ms or 0, scheduled_ms)
        if self.store.plan(occ, entry.record):
            self._skipped(entry.job, scheduled_ms, reason)
        return occ

    def _skipped(self, job: Job, scheduled_ms: int, reason: str) -> None:
        """Say (log and metrics) that this replica decided to skip an occurrence."""
        log.info(
            "run.skipped", job=job.name, scheduled_at=iso(from_ms(scheduled_ms)), reason=reason
        )
        if self.on_skip is not None:
            self.on_skip(job)

    def _occurrence(self, entry: Entry, scheduled_ms: int, trigger: str) -> Occurrence:
        now_ms = to_ms(self.clock.now())
        key = idempotency_key(entry.job.name, scheduled_ms)
        return Occurrence(entry.job.name, scheduled_ms, key, trigger=trigger, created_ms=now_ms)

    def _start(self, entry: Entry, scheduled_ms: int, trigger: str) -> Occurrence:
        policy, runs = entry.job.concurrency, entry.runs
        # With replicas, a run waiting for (or having lost) its claim runs nothing here.
        busy = bool(runs.active) if self.claims is None else runs.won > 0
        if busy and policy == "forbid":
            lane = runs.lane()
            if lane is None or not self._waits_its_turn(entry, scheduled_ms, trigger):
                reason = "previous run still running (concurrency forbid)"
                return self._skip(entry, scheduled_ms, reason, trigger)
            # The job's last occurrence (an edited one-shot, the last before `limit` or
            # `endDate`): skipping would lose it for good, so it runs after the current one.
            occ = self._plan(entry, scheduled_ms, trigger)
            if occ is not None:
                lane.add([self._item(entry, occ)])
            return occ or self._occurrence(entry, scheduled_ms, trigger)
        if runs.active and policy == "replace":
            for run in list(runs.active.values()):
                run.control.halt("replaced")
                if run.task is not None:
                    run.task.cancel()
        occ = self._plan(
            entry, scheduled_ms, trigger, forbid=policy == "forbid", replace=policy == "replace"
        )
        if occ is not None:
            self._spawn(entry, [self._item(entry, occ)])
        return occ or self._occurrence(entry, scheduled_ms, trigger)

    def _waits_its_turn(self, entry: Entry, scheduled_ms: int, trigger: str) -> bool:
        if trigger == "manual":
            return False
        return is_last(entry.rec, from_ms(scheduled_ms), self._reserved(entry))

    def _start_chain(self, entry: Entry, instants: list[int], trigger: str) -> None:
        """Catch-up runs of one job go one after another, each its own occurrence."""
        planned = [o for o in (self._plan(entry, ms, trigger) for ms in instants) if o is not None]
        if planned:
            self._enqueue(entry, planned)

    def _plan(
        self,
        entry: Entry,
        scheduled_ms: int,
        trigger: str,
        *,
        forbid: bool = False,
        replace: bool = False,
    ) -> Occurrence | None:
        """Write the occurrence before anything is called, so a crash never forgets it.

        `forbid`: with replicas, the database skips it while a run of the job is open on
        any replica (this replica's own runs are checked before, by `_start`). `replace`:
        with replicas, the older open occurrences of the job are halted wherever they
        run (this replica's own runs were halted by `_start`)."""
        manual = trigger == "manual"
        written = self._prepared(entry, scheduled_ms) if trigger == "schedule" else None
        occ = self._occurrence(entry, scheduled_ms, trigger) if written is None else written
        if not manual:
            entry.record.last_scheduled_ms = max(entry.record.last_scheduled_ms or 0, scheduled_ms)
        entry.record.status = "queued"
        if written is not None:
            # On disk already: its job's row goes into the open transaction, committed no
            # later than the attempt's `running` write, so after a crash an occurrence on
            # disk in any other form than as written ahead has its job's
            # `last_scheduled_ms` with it (without it, a one-shot resumed there was planned
            # again at +1 ms and ran twice: tests/test_prepare_ahead.py, the crash suite).
            self.store.save_job(entry.record)
        limit = None if manual else entry.job.schedule.limit
        plan = self.store.plan
        while written is None and not plan(
            occ, entry.record, limit=limit, forbid=forbid, replace=replace
        ):
            replay = occ.scheduled_ms <= entry.runs.replay_until_ms  # the clock went back
            if not (manual or entry.one_shot or replay):
                log.warning(
                    "run.duplicate", job=entry.job.name, scheduled_at=iso(from_ms(scheduled_ms))
                )
                return None
            # The instant is taken by an earlier trigger, by an earlier definition of this
            # one-shot (edited, same start_at), or ran before the wall clock stepped back:
            # a new call, so a new instant and key.
            occ = self._occurrence(entry, occ.scheduled_ms + 1, trigger)
            if not manual:
                entry.record.last_scheduled_ms = occ.scheduled_ms
        if not manual:
            self._runs_of(entry.job.name).pending += 1
        return occ

    def _prepared(self, entry: Entry, scheduled_ms: int) -> Occurrence | None:
        """The occurrence written ahead for this instant (Scheduler._prepare_ahead), its
        first attempt now due; None when there is none, and the prepared one deleted when
        it was written for another instant."""
        occ = self.prepared.pop(entry.job.name, None)
        if occ is None:
            return None
        if occ.scheduled_ms != scheduled_ms:
            self.store.unprepare(occ)
            return None
        occ.next_attempt_ms = None  # its instant has come: the first attempt starts now
        return occ

    def _unprepare(self, name: str) -> None:
        """The job's occurrence written ahead will not run as written: delete it."""
        occ = self.prepared.pop(name, None)
        if occ is not None:
            self.store.unprepare(occ)

    # ---- running ---------------------------------------------------------------------
    def _enqueue(self, entry: Entry, occs: list[Occurrence]) -> None:
        """Catch-up, resumed and taken-over occurrences: behind the run in progress
        unless the job allows overlap (issue 18, bug 7), else in a run of their own."""
        items = [self._item(entry, occ) for occ in occs]
        lane = entry.runs.lane() if entry.job.concurrency != "allow" else None
        if lane is not None:
            lane.add(items)
        else:
            self._spawn(entry, items)

    def _item(self, entry: Entry, occ: Occurrence) -> Item:
        return Item(occ, entry.job, entry.loaded.digest)

    def _spawn(self, entry: Entry, items: list[Item]) -> Run:
        name = entry.job.name
        runs = self._runs_of(name)
        run = Run(next(self._run_ids), RunControl(held=runs.held))
        run.add(items)
        runs.add(run)
        run.task = asyncio.create_task(self._execute(runs, run), name=f"run:{name}")
        run.task.add_done_callback(lambda task: self._settle(name, runs, run, task))
        return run

    async def _execute(self, runs: JobRuns, run: Run) -> None:
        """Run the queued occurrences one by one; what is left is settled by `_settle`."""
        while run.queue and not run.control.stop.is_set():
            item = run.queue[0]
            run.busy = True
            if run.control.held:  # paused or suspended: its next occurrence waits (bug 9)
                await run.control.released()
                if run.control.stop.is_set():
                    break
            if self.claims is not None:
                if not await self._claim(runs, item):
                    run.queue.popleft()
                    run.busy = False
                    if item.occ.trigger != "manual":
                        runs.pending -= 1
                    continue
                if not self.claims.may_start(item.occ):
                    return  # no lease to spare: left open for whoever holds one next
            async with self.slots:
                run.started = True
                await self._run_one(run, item)
                run.queue.popleft()
                run.busy = False
                if not run.queue:
                    runs.drop(run.key)  # done: the job's status no longer counts it
                self._finished(runs, run, item)
                # The slot is free once the outcome is on disk (group commit): a crash
                # calls again at most the occurrences that hold a slot, same key.
                written = self.store.written()
                if written is not None:
                    await written

    async def _claim(self, runs: JobRuns, item: Item) -> bool:
        """Wait for the database's verdict on the claim; False when another replica won."""
        assert self.claims is not None
        if not await self.claims.claimed(item.occ):
            reason = self.claims.skipped_here(item.occ)
            if reason is not None:  # recorded skipped by this replica (forbid, cluster-wide)
                item.occ.state, item.occ.reason = "skipped", reason
                self._skipped(item.job, item.occ.scheduled_ms, reason)
                return False
            log.debug(
                "run.claimed_elsewhere",
                job=item.occ.job,
                scheduled_at=iso(from_ms(item.occ.scheduled_ms)),
            )
            return False
        item.won = True
        runs.won += 1
        return True

    async def _run_one(self, run: Run, item: Item) -> None:
        occ, control = item.occ, run.control
        now_ms = to_ms(self.clock.now())
        occ.started_ms = occ.started_ms or now_ms
        record = self.records[occ.job]
        record.status, record.last_started_ms = "running", now_ms
        current = self.entries.get(occ.job)
        deadline = current.due if current is not None else None
        # The executor writes the occurrence as running when an attempt starts.
        try:
            await self.executor(item.job, occ, deadline, control)
        except asyncio.CancelledError:
            if control.reason == "replaced":
                occ.state, occ.reason = "cancelled", _REASONS["replaced"]
            raise  # on shutdown the occurrence stays open and resumes after restart
        except Exception as exc:  # a bug must fail this occurrence, not strand it as running
            log.exception("run.crashed", job=occ.job, scheduled_at=iso(from_ms(occ.scheduled_ms)))
            # The exception's text may hold a resolved secret: it goes to the (redacted)
            # log only; what is stored and shown names its type.
            occ.state = "failed"
            occ.last_error = f"internal error: {type(exc).__name__} (see the daemon's log)"

    def _settle(self, name: str, runs: JobRuns, run: Run, task: asyncio.Task[None]) -> None:
        """The run's task is done (finished, cancelled, or crashed): settle what it left."""
        runs.drop(run.key)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("run.crashed", job=name, error=f"{type(exc).__name__}: {exc}")
        while run.queue:
            self._finished(runs, run, run.queue.popleft())
        if not runs.active and name not in self.entries and runs.pending <= 0:
            self.runs.pop(name, None)
        else:
            self._release_if_idle(name, runs)
        current = self.entries.get(name)
        if current is not None:
            current.record.status = self._status(current)

    def _finished(self, runs: JobRuns, run: Run, item: Item) -> None:
        occ, reason = item.occ, run.control.reason
        if occ.state in OPEN_STATES and reason in _REASONS:
            occ.state, occ.reason = "cancelled", _REASONS[reason]
            occ.next_attempt_ms = None
        if item.won:
            item.won = False
            runs.won -= 1
        counted = occ.trigger != "manual"  # manual runs are outside the schedule and `limit`
        if counted:
            runs.pending -= 1
        if occ.state in OPEN_STATES:
            if self.claims is not None:
                self.claims.released(occ)  # its lease decides who resumes it
            return  # interrupted by shutdown or a crash: left open on purpose
        record = self.records[occ.job]
        now_ms = to_ms(self.clock.now())
        occ.finished_ms = occ.finished_ms or now_ms
        if occ.started_ms is not None and occ.duration_ms is None:
            occ.duration_ms = now_ms - occ.started_ms
        if occ.state in RAN_STATES:
            record.execution_count += counted
            record.last_outcome, record.last_error = occ.state, occ.last_error
            record.last_finished_ms = now_ms
            record.retry_count = max(occ.attempts - 1, 0)
            if occ.state == "succeeded" and not item.job.schedule.recurring:
                record.succeeded_hash = item.digest  # the definition that ran (bug 5)
        current = self.entries.get(occ.job)
        if current is not None:
            if current.due is None:  # `limit` may have room again
                self._reschedule(current, self.clock.now(), catch_up=False)
            record.status = self._status(current)
        self.store.finish(occ, record)
        if self.claims is not None:
            self.claims.released(occ)

    def _resume_open(self, open_occurrences: list[Occurrence]) -> None:
        """Occurrences left planned or running by a crash or shutdown run again, same key."""
        resumed: dict[str, list[Occurrence]] = {}
        for occ in open_occurrences:
            entry = self.entries.get(occ.job)
            if entry is None:
                self._runs_of(occ.job).pending -= occ.trigger != "manual"
                if self.claims is not None:
                    self.claims.released(occ)  # a replica whose folder has it will take it
                    continue
                occ.state, occ.reason = "cancelled", "job no longer defined"
                occ.finished_ms = to_ms(self.clock.now())
                self.store.update_occurrence(occ)
                continue
            log.info(
                "run.resumed",
                job=occ.job,
                scheduled_at=iso(from_ms(occ.scheduled_ms)),
                attempts=occ.attempts,
            )
            resumed.setdefault(occ.job, []).append(occ)
        for name, occs in resumed.items():  # one job's open occurrences run in order
            self._enqueue(self.entries[name], occs)

    # ---- replicas sharing a database (runner.store.Replica) --------------------------

    def adopt(self, occurrences: list[Occurrence], *, taken_over: bool = True) -> None:
        """Run occurrences taken over from a replica whose lease expired (same keys), or
        claimed here after another replica planned them."""
        by_job: dict[str, list[Occurrence]] = {}
        for occ in occurrences:
            entry = self.entries.get(occ.job)
            if entry is None:
                assert self.claims is not None
                self.claims.released(occ)  # gone from our folder
                continue
            if self._won_here(entry, occ.scheduled_ms):
                continue  # our own run still has it (its finish is written under the new token)
            (log.warning if taken_over else log.info)(
                "run.taken_over" if taken_over else "run.claimed",
                job=occ.job,
                scheduled_at=iso(from_ms(occ.scheduled_ms)),
                trigger=occ.trigger,
                attempts=occ.attempts,
                idempotency_key=occ.idempotency_key,
            )
            by_job.setdefault(occ.job, []).append(occ)
        for name, occs in by_job.items():
            entry = self.entries[name]
            self._runs_of(name).pending += sum(occ.trigger != "manual" for occ in occs)
            self._enqueue(entry, occs)

    def _won_here(self, entry: Entry, scheduled_ms: int) -> bool:
        """A run of ours holds this occurrence and won its claim. One still waiting for
        the verdict (or about to learn it lost) does not count: it drops the occurrence,
        so skipping it here would leave it leased and run by nobody."""
        run = entry.runs.run_holding(scheduled_ms)
        return run is not None and any(
            item.won and item.occ.scheduled_ms == scheduled_ms for item in run.queue
        )

    def lease_lost(self, job: str, scheduled_ms: int) -> None:
        """No new attempt of that occurrence's run here; other runs of the job go on."""
        runs = self.runs.get(job)
        run = None if runs is None else runs.run_holding(scheduled_ms)
        if run is None:
            return
        log.warning("run.lease_lost", job=job, scheduled_at=iso(from_ms(scheduled_ms)))
        run.control.halt("lease_lost")

    def halt(self, job: str, scheduled_ms: int, reason: str) -> None:
        """Another replica planned a newer occurrence of this `replace` job: the run
        holding this one stops now and records it cancelled, as a local replace does."""
        runs = self.runs.get(job)
        run = None if runs is None else runs.run_holding(scheduled_ms)
        if run is None or run.control.stop.is_set() or reason != "replaced":
            return
        log.info("run.replaced", job=job, scheduled_at=iso(from_ms(scheduled_ms)), by="replica")
        run.control.halt("replaced")
        if run.task is not None:
            run.task.cancel()

    def _halt_all(self) -> list[asyncio.Task[None]]:
        """Shutdown: no run starts another attempt; the tasks still going. Occurrences
        written ahead of instants not yet come are deleted: after a restart the schedule
        and its catch-up policy decide about them, as about any other instant."""
        for name in list(self.prepared):
            self._unprepare(name)
        for runs in self.runs.values():
            runs.halt("shutdown")
        return [t for runs in self.runs.values() for t in runs.tasks.values()]

    async def abandon(self) -> int:
        """A forced exit: cancel every run now. Their occurrences stay open in the state
        and resume, with the same keys, at the next start (nothing is marked failed)."""
        tasks = self._halt_all()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)
        return len(tasks)

    async def drain(self, grace_s: float) -> int:
        """Stop retries, wait up to `grace_s` for attempts in flight; cancel the rest."""
        self.stop()
        tasks = self._halt_all()
        if not tasks:
            return 0
        _, pending = await asyncio.wait(tasks, timeout=grace_s)
        for task in pending:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*pending, return_exceptions=True)
        log.info("scheduler.drained", finished=len(tasks) - len(pending), cancelled=len(pending))
        return len(pending)
