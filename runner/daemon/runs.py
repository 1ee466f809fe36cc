"""What is in flight for a job: runs (one task each), their queues of occurrences, their controls.

Per job name, not per definition: an edit replaces the job's definition while its runs
go on, so the counters live here, shared by every version (issue 18, bug 1). Each
queued item carries the definition it runs, so a success is credited to the definition
that ran, not to whatever the file says when it finishes (bug 5).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from types import MappingProxyType
from typing import Literal, Protocol

from runner.jobs.loader import LoadedJob
from runner.jobs.model import Job
from runner.store import JobRecord, Occurrence
from runner.timing.firetimes import Recurrence

HaltReason = Literal["removed", "shutdown", "replaced", "lease_lost"]


class RunControl:
    """Lets the scheduler stop a run's pending retries, and hold its next attempt.

    `halt` is final for the run: no further attempt starts. `hold` (a paused or
    suspended job) makes the next attempt wait until `release`; an attempt in flight
    is never interrupted by either.
    """

    def __init__(self, *, held: bool = False) -> None:
        self.stop = asyncio.Event()
        self.reason: HaltReason | None = None
        self.resumed = asyncio.Event()
        if not held:
            self.resumed.set()

    @property
    def held(self) -> bool:
        return not self.resumed.is_set()

    def halt(self, reason: HaltReason) -> None:
        self.reason = self.reason or reason
        self.stop.set()

    async def released(self) -> None:
        """Wait until the hold is lifted or the run is halted, whichever comes first."""
        if not self.held or self.stop.is_set():
            return
        waits = [
            asyncio.ensure_future(self.resumed.wait()),
            asyncio.ensure_future(self.stop.wait()),
        ]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    def hold(self, held: bool) -> None:
        if held:
            self.resumed.clear()
        else:
            self.resumed.set()


class Executor(Protocol):
    """Runs every attempt of one occurrence; leaves `occ` final, or open on shutdown."""

    async def __call__(
        self, job: Job, occ: Occurrence, deadline: datetime | None, control: RunControl
    ) -> None: ...


@dataclass(slots=True)
class Item:
    """One occurrence waiting in (or at the head of) a run, with the definition it runs."""

    occ: Occurrence
    job: Job
    digest: str
    won: bool = False  # replicas: this replica won its claim and has not finished it


@dataclass(eq=False, slots=True)
class Run:
    """One task: its occurrences run one after another, in order of their instants."""

    key: int
    control: RunControl
    queue: deque[Item] = field(default_factory=deque)
    task: asyncio.Task[None] | None = None
    started: bool = False  # holds an execution slot, or has held one
    busy: bool = False  # the head item is being claimed or run

    def add(self, items: list[Item]) -> None:
        """Queue more occurrences behind the one in progress, keeping instant order."""
        head = [self.queue.popleft()] if self.busy and self.queue else []
        merged = sorted([*self.queue, *items], key=lambda item: item.occ.scheduled_ms)
        self.queue = deque(head + merged)


# What `JobRuns.active` is while nothing runs: one read-only mapping for every job, not
# an empty dict each (100,000 jobs held 6 MB of them: issue 12, memory per job).
_NOTHING_ACTIVE: Mapping[int, Run] = MappingProxyType({})


@dataclass(slots=True)
class JobRuns:
    """Everything in flight for one job name, whichever version of its definition."""

    # Runs in flight by key; replaced (never changed in place) by add() and drop().
    active: Mapping[int, Run] = field(default_factory=lambda: _NOTHING_ACTIVE)
    pending: int = 0  # scheduled or catch-up occurrences planned or running (count to limit)
    won: int = 0  # replicas: occurrences whose claim this replica won, not finished yet
    held: bool = False  # paused or suspended: no attempt starts until released
    last_manual_ms: int = 0
    # Wall-clock steps (runner.timing.steps): how far an `every` phase has moved, and up
    # to which instant a cron job going on at a new time may reuse an instant it ran.
    shift_ms: int = 0
    replay_until_ms: int = -1

    def add(self, run: Run) -> None:
        # Copied, not changed in place: the empty one is shared, and a job has few runs.
        self.active = {**self.active, run.key: run}

    def drop(self, key: int) -> None:
        """Forget a run (no error if it was dropped already)."""
        if key in self.active:
            rest = {k: run for k, run in self.active.items() if k != key}
            self.active = rest or _NOTHING_ACTIVE

    @property
    def tasks(self) -> dict[int, asyncio.Task[None]]:
        return {key: run.task for key, run in self.active.items() if run.task is not None}

    @property
    def running(self) -> bool:
        return any(run.started for run in self.active.values())

    def hold(self, held: bool) -> None:
        self.held = held
        for run in self.active.values():
            run.control.hold(held)

    def halt(self, reason: HaltReason) -> None:
        for run in self.active.values():
            run.control.halt(reason)

    def lane(self) -> Run | None:
        """The run that later occurrences queue behind (forbid): the oldest still going."""
        live = [run for run in self.active.values() if not run.control.stop.is_set()]
        return min(live, key=lambda run: run.key) if live else None

    def run_holding(self, scheduled_ms: int) -> Run | None:
        for run in self.active.values():
            if any(item.occ.scheduled_ms == scheduled_ms for item in run.queue):
                return run
        return None

    def idle(self) -> bool:
        """Nothing in flight and every counter at its start: a fresh JobRuns is the same."""
        return (
            not self.active
            and not self.pending
            and not self.won
            and not self.held
            and not self.last_manual_ms
            and not self.shift_ms
            and self.replay_until_ms == -1
        )


class _IdleRuns(JobRuns):
    """The JobRuns of every job with nothing in flight and nothing counted (issue 12:
    100,000 cron jobs held 12 MB of them, and the dict that named them 3.7 MB). Shared,
    so it refuses every change: the scheduler gives a job a JobRuns of its own
    (`Dispatch._runs_of`) before it counts, holds or runs anything, and takes it back
    when the job is idle again (`Dispatch._settle`)."""

    __slots__ = ()

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"the shared idle runs are read-only (setting {name})")

    def hold(self, held: bool) -> None:
        if held:
            raise AttributeError("the shared idle runs are read-only (hold)")


IDLE: JobRuns = object.__new__(_IdleRuns)
for _field in fields(JobRuns):  # a fresh JobRuns' values
    object.__setattr__(IDLE, _field.name, getattr(JobRuns(), _field.name))
assert IDLE.idle()


@dataclass(slots=True)
class Entry:
    """A job as the scheduler holds it: its current definition and its next instant."""

    loaded: LoadedJob
    record: JobRecord
    rec: Recurrence
    runs: JobRuns
    due: datetime | None = None
    version: int = 0

    @property
    def job(self) -> Job:
        return self.loaded.job

    @property
    def one_shot(self) -> bool:
        return not self.job.schedule.recurring

    @property
    def tasks(self) -> dict[int, asyncio.Task[None]]:
        return self.runs.tasks

    @property
    def held(self) -> bool:
        return self.job.suspend or self.record.paused
