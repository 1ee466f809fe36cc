"""Durable state: the records the scheduler keeps and the interface every backend implements.

Times are integer milliseconds since the epoch (UTC) everywhere in the store.
Backends: `sqlite` (one daemon) and `postgres` (replicas). May import `runner.errors`,
`runner.jobs` and `runner.timing`; never `runner.ductape`, the daemon or the CLI.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, fields
from operator import attrgetter
from typing import Literal, Protocol, runtime_checkable

from runner.errors import RunnerError

JobStatus = Literal["scheduled", "queued", "running", "suspended", "paused", "completed", "failed"]
OccurrenceState = Literal[
    "planned", "running", "succeeded", "failed", "skipped", "cancelled", "dry_run"
]
OPEN_STATES = ("planned", "running")
RAN_STATES = ("succeeded", "failed")  # these count toward `limit`; skipped ones do not


class StateError(RunnerError):
    """The state file cannot be read or written: which file, what is wrong, what to do."""

    def __init__(self, path: str, problem: str, advice: str) -> None:
        self.path, self.problem, self.advice = path, problem, advice
        super().__init__(f"state file {path}: {problem}; {advice}")


@dataclass(slots=True)
class JobRecord:
    """What the runner remembers about one job across restarts."""

    name: str
    definition_hash: str
    schedule_hash: str
    first_seen_ms: int
    anchor_ms: int = 0  # phase of `every` without start_at; moves when the schedule changes
    path: str = ""
    execution_count: int = 0
    last_scheduled_ms: int | None = None
    last_started_ms: int | None = None
    last_finished_ms: int | None = None
    last_outcome: str | None = None
    last_error: str | None = None
    next_fire_ms: int | None = None
    status: JobStatus = "scheduled"
    paused: bool = False
    retry_count: int = 0
    removed_ms: int | None = None
    succeeded_hash: str | None = None  # definition a one-shot succeeded with


# A record's values in column order, as a tuple (attrgetter: dataclasses.astuple
# deep-copies every field).
job_row = attrgetter(*(f.name for f in fields(JobRecord)))


@dataclass(slots=True)
class Occurrence:
    """One (job, scheduled instant): written before its call is made."""

    job: str
    scheduled_ms: int
    idempotency_key: str
    state: OccurrenceState = "planned"
    trigger: str = "schedule"  # schedule | catchup | manual
    reason: str | None = None
    attempts: int = 0
    last_error: str | None = None
    created_ms: int = 0
    started_ms: int | None = None
    finished_ms: int | None = None
    duration_ms: int | None = None
    next_attempt_ms: int | None = None


class Store(Protocol):
    """A state backend. SQLite is the default; every method is one transaction."""

    def close(self) -> None: ...

    def batch(self) -> AbstractContextManager[None]:
        """Group many writes into one transaction."""
        ...

    def load_jobs(self, strings: Mapping[str, str] | None = None) -> dict[str, JobRecord]:
        """Every job's record. A string value equal to a key of `strings` is given as
        that key's value: the caller's copy, already in memory."""
        ...

    def save_job(self, record: JobRecord) -> None: ...

    def save_jobs(self, records: list[JobRecord]) -> None:
        """save_job for many records (the start writes every changed job at once)."""
        ...

    def plan(
        self,
        occurrence: Occurrence,
        record: JobRecord,
        *,
        limit: int | None = None,
        forbid: bool = False,
        replace: bool = False,
    ) -> bool:
        """Insert the occurrence if absent and save its job, in one transaction.

        False (and nothing written) when (job, scheduled_ms) already exists. `limit` is
        the job's limit, `forbid` its `concurrency: forbid` and `replace` its
        `concurrency: replace` (older open occurrences are halted wherever they run),
        for backends shared by replicas (see `Claims`); SQLite has a single writer whose
        own count and runs are authoritative and ignores them.
        """
        ...

    def prepare(self, occurrences: list[Occurrence]) -> list[bool]:
        """Write scheduled occurrences ahead of their instants, all in one commit made
        now (issue 12, item 3: at the instant only the call remains). Each is `planned`
        with `next_attempt_ms` at its instant, so one resumed after a crash waits for it.
        For each, whether it was written (False: (job, scheduled_ms) exists, or this
        backend does not prepare: a shared one plans and claims at the instant)."""
        ...

    def unprepare(self, occurrence: Occurrence) -> None:
        """Delete a prepared occurrence that will not run as prepared (its job changed,
        left, paused or skips it), committed in this loop pass."""
        ...

    def update_occurrence(self, occurrence: Occurrence) -> None:
        """Write an occurrence's new state.

        Writing it as `running` is the write made before each call: when the occurrence
        is not on disk yet and cannot be written now (disk full, state file gone), it
        raises StateError and the call must not be made.
        """
        ...

    def finish(self, occurrence: Occurrence, record: JobRecord) -> None:
        """Write a final occurrence state and its job's counters atomically."""
        ...

    def written(self) -> Awaitable[None] | None:
        """Resolved once the writes made so far are durable; None when they already are
        (or the backend has no say: replicas' writers fence their own)."""
        ...

    def open_occurrences(self) -> list[Occurrence]: ...

    async def read_history(self, job: str, limit: int = 50) -> list[Occurrence]:
        """The job's latest occurrences, newest first, read without blocking the loop."""
        ...

    def prune(self, before_ms: int) -> int: ...


@runtime_checkable
class LastGoodFiles(Protocol):
    """Each job file's last accepted content, so a restart can run it while the file is
    invalid. Job files hold secret references (`${env:X}`), never values: the content
    is stored as read, and beside it the jobs validated from it (a restart whose files
    did not change skips parsing them). SQLite only for now (replicas each read their
    own folder)."""

    def load_last_good(self) -> dict[str, tuple[str, bytes]]:
        """path -> (digest, content)."""
        ...

    def save_last_good(self, path: str, digest: str, content: bytes) -> None: ...

    def forget_last_good(self, paths: list[str]) -> None: ...

    def validated_digests(self, key: str) -> dict[str, str]:
        """path -> digest, for the files whose validated jobs are kept in a form written
        under `key` (runner.jobs.stored): a restart rebuilds their jobs without parsing."""
        ...

    def validated_jobs(self, path: str, digest: str, key: str) -> bytes | None:
        """That stored form (read one file at a time: 100,000 jobs take 26 MB)."""
        ...

    def save_validated(self, path: str, digest: str, key: str, jobs: bytes) -> None:
        """Keep the validated jobs beside the file's stored content, if that is still
        the content with this digest."""
        ...


@dataclass
class SharedJob:
    """A job's fields that other replicas change: read back from a shared backend."""

    name: str
    definition_hash: str
    anchor_ms: int
    first_seen_ms: int
    paused: bool
    execution_count: int
    last_started_ms: int | None
    last_finished_ms: int | None
    last_outcome: str | None
    last_error: str | None
    retry_count: int
    succeeded_hash: str | None


class Replica(Protocol):
    """What the scheduler needs from it: callbacks from a shared backend's background work."""

    def adopt(self, occurrences: list[Occurrence], *, taken_over: bool = True) -> None:
        """Run occurrences this replica now holds but did not plan: taken over from a
        replica whose lease expired (same keys), or, `taken_over=False`, claimed after
        another replica planned them (a trigger there, or it fired first)."""
        ...

    def lease_lost(self, job: str, scheduled_ms: int) -> None:
        """Stop starting attempts of an occurrence whose lease could not be renewed."""
        ...

    def halt(self, job: str, scheduled_ms: int, reason: str) -> None:
        """Stop the run of an occurrence held here because another replica asked
        (`replaced`: a newer occurrence of a `concurrency: replace` job was planned)."""
        ...

    def shared(self, jobs: list[SharedJob]) -> None:
        """Apply pause state, counts and first sightings written by other replicas."""
        ...

    def store_available(self, available: bool) -> None:
        """The database went away or came back."""
        ...

    def known_jobs(self) -> set[str]: ...


class Claims(Protocol):
    """What a backend shared by several replicas adds to `Store` (PostgreSQL).

    `Store.plan` there only queues the claim (insert-if-absent with owner, lease and
    fencing token) and returns True; the scheduler awaits `claimed` before running.
    """

    def attach(self, replica: Replica) -> None: ...

    def writable(self) -> bool:
        """The database answers: new occurrences may be claimed."""
        ...

    async def claimed(self, occurrence: Occurrence) -> bool:
        """True when this replica won (or was handed) the occurrence."""
        ...

    def skipped_here(self, occurrence: Occurrence) -> str | None:
        """Why this replica recorded the occurrence as skipped instead of claiming it
        (`concurrency: forbid` with a run of the job open on any replica), else None."""
        ...

    def may_start(self, occurrence: Occurrence) -> bool:
        """This replica holds the occurrence's lease with time to spare."""
        ...

    def released(self, occurrence: Occurrence) -> None:
        """The scheduler is done with it (final, or left open for another replica)."""
        ...

    def set_paused(self, name: str, paused: bool) -> None: ...

    def status(self) -> tuple[bool, str]:
        """(available, what to tell the operator)."""
        ...
