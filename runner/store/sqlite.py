"""The SQLite state backend (WAL mode), with versioned migrations."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import fields, replace
from operator import attrgetter
from pathlib import Path
from typing import Any

import structlog

from runner.store import JobRecord, Occurrence, StateError, statefile

log = structlog.get_logger("runner.store")

# Group commit (issue 12, item 2): a transaction that holds only writes which can wait
# (attempt states, outcomes, job counters) commits COMMIT_WINDOW_S after it opened, on the
# loop's own monotonic clock (a test's fake clock does not move it), so the outcomes of a
# burst share commits, and so do an attempt's start and outcome and the next occurrence's
# plan when occurrences come a few milliseconds apart. One that holds a planned occurrence
# commits in the same loop pass, before its call. Each commit costs about 100 us of CPU
# (WAL frames); the window used to be counted in loop passes, which at a steady rate cost
# a dozen idle passes an occurrence and committed three times where once will do.
COMMIT_WINDOW_S = 0.01
# Runs waiting for their outcome to be on disk (`written`) that make a commit come sooner.
COMMIT_MAX_WAITING = 256
# The daemon's checkpoints (issue 12, item 2): SQLite's automatic one runs inside the
# commit that crosses 1,000 WAL pages, on the event loop, and fsyncs twice (the WAL, then
# the database): milliseconds at a fire instant. A thread of its own copies the WAL back
# every CHECKPOINT_EVERY_S instead, with a connection of its own (PASSIVE: it never waits
# for, nor blocks, the loop's writes; the fsyncs release the GIL).
CHECKPOINT_EVERY_S = 1.0
RECOVERED_AFTER_S = 3.0  # writes must succeed this long: a nearly full disk takes small ones
WRITE_ADVICE = (
    "free space on its file system or fix its permissions; "
    "nothing is started until writes succeed again"
)

# Each entry migrates from version i to i+1; never edit a released one, append.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE jobs (
        name TEXT PRIMARY KEY,
        definition_hash TEXT NOT NULL,
        schedule_hash TEXT NOT NULL,
        first_seen_ms INTEGER NOT NULL,
        anchor_ms INTEGER NOT NULL,
        path TEXT NOT NULL DEFAULT '',
        execution_count INTEGER NOT NULL DEFAULT 0,
        last_scheduled_ms INTEGER,
        last_started_ms INTEGER,
        last_finished_ms INTEGER,
        last_outcome TEXT,
        last_error TEXT,
        next_fire_ms INTEGER,
        status TEXT NOT NULL,
        paused INTEGER NOT NULL DEFAULT 0,
        retry_count INTEGER NOT NULL DEFAULT 0,
        removed_ms INTEGER,
        succeeded_hash TEXT
    );
    CREATE TABLE occurrences (
        job TEXT NOT NULL,
        scheduled_ms INTEGER NOT NULL,
        idempotency_key TEXT NOT NULL,
        state TEXT NOT NULL,
        trigger TEXT NOT NULL,
        reason TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        created_ms INTEGER NOT NULL,
        started_ms INTEGER,
        finished_ms INTEGER,
        duration_ms INTEGER,
        next_attempt_ms INTEGER,
        PRIMARY KEY (job, scheduled_ms)
    );
    CREATE INDEX occurrences_open ON occurrences (state) WHERE state IN ('planned', 'running');
    CREATE INDEX occurrences_finished ON occurrences (finished_ms);
    """,
    # 2: each job file's last accepted content (issue 11, item 2)
    """
    CREATE TABLE last_good_files (
        path TEXT PRIMARY KEY,
        digest TEXT NOT NULL,
        content BLOB NOT NULL
    );
    """,
    # 3: beside it, the file's validated jobs in a stored form (runner.jobs.stored) and
    # the key of the code that validated them (issue 12: a restart skips parsing)
    """
    ALTER TABLE last_good_files ADD COLUMN jobs BLOB;
    ALTER TABLE last_good_files ADD COLUMN jobs_key TEXT;
    """,
]

_JOB_COLUMNS = [f.name for f in fields(JobRecord)]
_OCC_COLUMNS = [f.name for f in fields(Occurrence)]
# attrgetter instead of dataclasses.astuple: astuple deep-copies every field (measured:
# 40% of a 100k-job start-up went there).
_job_row = attrgetter(*_JOB_COLUMNS)
_occ_row = attrgetter(*_OCC_COLUMNS)


def _upsert(table: str, columns: list[str], keys: tuple[str, ...]) -> str:
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in keys)
    marks = ", ".join("?" for _ in columns)
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks}) "
        f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}"
    )


def _update(table: str, columns: list[str], keys: tuple[str, ...]) -> tuple[str, attrgetter[Any]]:
    """An UPDATE of every non-key column, and the getter of its parameters (keys last).

    On the hot path a row almost always exists: an UPDATE costs about half an upsert
    (measured: 60 -> 39 us of SQLite work an occurrence), which tries the INSERT first.
    """
    rest = [c for c in columns if c not in keys]
    sets = ", ".join(f"{c} = ?" for c in rest)
    where = " AND ".join(f"{k} = ?" for k in keys)
    return f"UPDATE {table} SET {sets} WHERE {where}", attrgetter(*rest, *keys)


_SAVE_JOB = _upsert("jobs", _JOB_COLUMNS, ("name",))
_KNOWN = [_JOB_COLUMNS.index(c) for c in ("name", "definition_hash", "succeeded_hash")]
_REPEATED = [
    _JOB_COLUMNS.index(c)
    for c in ("schedule_hash", "first_seen_ms", "anchor_ms", "path", "next_fire_ms", "status")
]
_SAVE_OCC = _upsert("occurrences", _OCC_COLUMNS, ("job", "scheduled_ms"))
_UPDATE_JOB, _update_job_row = _update("jobs", _JOB_COLUMNS, ("name",))
_UPDATE_OCC, _update_occ_row = _update("occurrences", _OCC_COLUMNS, ("job", "scheduled_ms"))
_PLAN_OCC = (
    f"INSERT INTO occurrences ({', '.join(_OCC_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _OCC_COLUMNS)}) ON CONFLICT DO NOTHING"
)
_SELECT_OCC = f"SELECT {', '.join(_OCC_COLUMNS)} FROM occurrences"
# Only a prepared occurrence that no attempt has touched (see SqliteStore.prepare).
_UNPREPARE_OCC = (
    "DELETE FROM occurrences WHERE job = ? AND scheduled_ms = ? AND state = 'planned' "
    "AND attempts = 0"
)


class SqliteStore:
    """State in one SQLite file. WAL + synchronous=NORMAL survives a process crash
    (SIGKILL) without losing a committed transaction; only power loss can."""

    def __init__(
        self, path: str | Path, *, reset: bool = False, commit_window_s: float = 0.0
    ) -> None:
        """`commit_window_s`: how long writes that can wait are held for a shared commit
        (the daemon: COMMIT_WINDOW_S); 0 commits them on the next loop pass (the CLI, and
        tests on a fake clock, whose loop time does not move with their clock)."""
        self.path = str(path)
        self.commit_window_s = commit_window_s
        self.lost: str | None = None  # the file was deleted or replaced under us
        self._identity: tuple[int, int] | None = None
        if self.path != ":memory:":
            statefile.prepare(self.path, reset=reset)
        try:
            with statefile.private_files(self.path):
                self.db = self._connect()
        except sqlite3.Error as exc:
            raise statefile.open_error(self.path, exc) from None
        self._savepoints = 0
        self._closed = False
        self._generation = 0  # counts rollbacks of the tick transaction after a failed write
        self.failure: str | None = None  # why state writes fail now (None: they succeed)
        self._failed_at = self._last_failure = 0.0
        self._tick_plans: list[tuple[str, int]] = []  # planned in the open tick transaction
        # Attempts marked running in the open transaction, written at its commit unless a
        # later write of the same occurrence (its outcome, a retry) came first: see
        # `update_occurrence`.
        self._running: dict[tuple[str, int], Occurrence] = {}
        self._unsaved: set[tuple[str, int]] = set()  # planned, but their write was lost
        # What the open transaction wrote with _save_occ/_save_job, and what a transaction
        # that rolled back (a full disk, an I/O error) had written: written again by the
        # next commit, so an outcome is not lost for the file because its commit failed
        # (it would run again after a restart, same key).
        self._in_tx: dict[tuple[str, int], Occurrence] = {}
        self._in_tx_jobs: dict[str, JobRecord] = {}
        self._lost: dict[tuple[str, int], Occurrence] = {}
        self._lost_jobs: dict[str, JobRecord] = {}
        self._window: asyncio.TimerHandle | None = None  # the open transaction's commit
        self._commit_soon = False  # a commit is queued for this loop pass
        self._waiters: list[asyncio.Future[None]] = []  # see `written`
        self._checkpointer: _Checkpointer | None = None  # see checkpoint_in_background
        try:
            self.migrate()
        except sqlite3.Error as exc:
            self.db.close()
            raise statefile.open_error(self.path, exc) from None
        if self.path != ":memory:":
            self._identity = statefile.identity(self.path)

    def _connect(self) -> sqlite3.Connection:
        """Open in WAL mode, and check the file before trusting it (PRAGMA quick_check)."""
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA busy_timeout=5000")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            verdict = [row[0] for row in db.execute("PRAGMA quick_check(3)")]
        except BaseException:
            db.close()
            raise
        if verdict != ["ok"]:
            db.close()
            found = " ".join(" ".join(map(str, verdict)).split())  # rows hold newlines
            problem = f"is corrupt (quick_check: {found})"
            raise StateError(self.path, problem, statefile.RESET_ADVICE)
        return db

    def migrate(self) -> int:
        version: int = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise StateError(
                self.path,
                f"is at schema version {version}, newer than this runner ({len(MIGRATIONS)})",
                "upgrade the runner or use another state file",
            )
        for number in range(version, len(MIGRATIONS)):
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                self.db.executescript(MIGRATIONS[number])
                self.db.execute(f"PRAGMA user_version = {number + 1}")
        return len(MIGRATIONS)

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        if self._lost or self._lost_jobs:
            with self._guard(), self._tx():
                self._write_lost()
        self.commit()
        self._closed = True
        self.db.close()

    def checkpoint_in_background(self, every_s: float = CHECKPOINT_EVERY_S) -> None:
        """The daemon's mode: checkpoints in a thread, none in the loop's commits.

        Until this is called (the CLI, tests on a fake clock) SQLite checkpoints as it
        always does. A file-less (":memory:") store has no WAL to copy."""
        if self._checkpointer is not None or self.path == ":memory:":
            return
        self._checkpointer = _Checkpointer(self.path, every_s)
        self.db.execute("PRAGMA wal_autocheckpoint=0")
        # A WAL reset after each checkpoint truncates the file, so the next commit's
        # frames need new space: a full disk fails the next write, as it did with
        # SQLite's own checkpoints, instead of going unnoticed in reused WAL space.
        self.db.execute("PRAGMA journal_size_limit=0")
        self._checkpointer.start()

    def load_jobs(self, strings: Mapping[str, str] | None = None) -> dict[str, JobRecord]:
        # Row by row, not fetchall(): 100,000 rows at once were 22 MB more RSS after a
        # restart, freed but left in fragments (issue 12, memory per job).
        rows = self.db.execute(f"SELECT {', '.join(_JOB_COLUMNS)} FROM jobs")
        # Most values repeat across rows (a file's path, a start's first sighting, the
        # schedule hashes): one object each, not one per row (issue 12, memory per job).
        seen: dict[object, object] = {}
        share = seen.setdefault
        # A job's name and hashes as the loaded jobs hold them: the row's copies, replaced
        # by those later, were freed one by one among what stays, 17 MB of holes after a
        # 100,000-job restart (issue 12, memory per job).
        known = (strings or {}).get
        records = {}
        for row in rows:
            values = list(row)
            for i in _REPEATED:
                values[i] = share(values[i], values[i])
            for i in _KNOWN:
                values[i] = known(values[i], values[i])
            record = JobRecord(*values)
            records[record.name] = _fix_job(record)
        return records

    def save_job(self, record: JobRecord) -> None:
        with self._guard():
            self._tick_tx()
            self._save_job(record)

    def _save_job(self, record: JobRecord) -> None:
        if self.db.execute(_UPDATE_JOB, _update_job_row(record)).rowcount == 0:
            self.db.execute(_SAVE_JOB, _job_row(record))
        self._lost_jobs.pop(record.name, None)
        self._in_tx_jobs[record.name] = record

    def _save_occ(self, occurrence: Occurrence) -> None:
        key = (occurrence.job, occurrence.scheduled_ms)
        self._running.pop(key, None)
        if self.db.execute(_UPDATE_OCC, _update_occ_row(occurrence)).rowcount == 0:
            self.db.execute(_SAVE_OCC, _occ_row(occurrence))
        self._lost.pop(key, None)
        self._in_tx[key] = occurrence

    def _clear_tx_writes(self) -> None:
        self._in_tx.clear()
        self._in_tx_jobs.clear()

    def _write_lost(self) -> None:
        """Write again what a rolled-back transaction held (outcomes, job counters): the
        objects are the live ones, so this writes their state as it is now."""
        if not (self._lost or self._lost_jobs):
            return  # every commit asks: almost always nothing
        lost, lost_jobs = list(self._lost.values()), list(self._lost_jobs.values())
        for occurrence in lost:
            self._save_occ(occurrence)
        for record in lost_jobs:
            self._save_job(record)

    def save_jobs(self, records: list[JobRecord]) -> None:
        with self._guard():
            self._tick_tx()
            self.db.executemany(_SAVE_JOB, map(_job_row, records))

    def plan(
        self,
        occurrence: Occurrence,
        record: JobRecord,
        *,
        limit: int | None = None,
        forbid: bool = False,
        replace: bool = False,
    ) -> bool:
        key = (occurrence.job, occurrence.scheduled_ms)
        try:
            with self._unit():
                cursor = self.db.execute(_PLAN_OCC, _occ_row(occurrence))
                if cursor.rowcount != 1:
                    return False
                self._save_job(record)
        except sqlite3.Error as exc:
            self._write_failed(exc)
            self._unsaved.add(key)  # its run writes it before calling, or calls nothing
            return True
        if self.db.in_transaction:
            self._tick_plans.append(key)
            self._commit_this_pass()  # on disk before its run's first step
        return True

    def prepare(self, occurrences: list[Occurrence]) -> list[bool]:
        """Insert scheduled occurrences ahead of their instants, committed in this pass.

        One commit for all of them, where planning each at its instant committed once an
        instant (issue 12, item 3; a commit costs about 40 us of CPU alone, measured,
        and more in the daemon). Their jobs' rows are written at their instants, with no
        commit of their own; a start after a crash takes `last_scheduled_ms` from one
        still as written here (runner.daemon.scheduler). A failed write prepares nothing;
        a failed commit marks them unsaved, as for `plan`: each run writes its occurrence
        first, or calls nothing.
        """
        done = [False] * len(occurrences)
        if self.failure is not None or self.lost is not None:
            return done  # planned one by one at their instants, as writes recover
        try:
            with self._unit():
                for i, occurrence in enumerate(occurrences):
                    done[i] = self.db.execute(_PLAN_OCC, _occ_row(occurrence)).rowcount == 1
        except sqlite3.Error as exc:
            self._write_failed(exc)
            return [False] * len(occurrences)
        if self.db.in_transaction:
            for occurrence, written in zip(occurrences, done, strict=True):
                if written:
                    self._tick_plans.append((occurrence.job, occurrence.scheduled_ms))
            self._commit_this_pass()
        return done

    def unprepare(self, occurrence: Occurrence) -> None:
        key = (occurrence.job, occurrence.scheduled_ms)
        self._unsaved.discard(key)
        with self._guard(), self._unit():
            self.db.execute(_UNPREPARE_OCC, key)
        if self.db.in_transaction:
            self._commit_this_pass()

    def written(self) -> asyncio.Future[None] | None:
        """A future resolved when the writes made so far are committed (or failed and are
        recorded as such); None when there is nothing to wait for.

        A run keeps its concurrency slot until its outcome is written, so what a crash
        can lose is bounded as before: at most `max_concurrent_runs` occurrences are
        called again after a restart (same idempotency key).
        """
        if not self.db.in_transaction:
            return None
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        if len(self._waiters) >= COMMIT_MAX_WAITING:
            self._commit_this_pass()
        return waiter

    def _commit_this_pass(self) -> None:
        if not self._commit_soon:
            self._commit_soon = True
            asyncio.get_running_loop().call_soon(self.commit)

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def update_occurrence(self, occurrence: Occurrence) -> None:
        key = (occurrence.job, occurrence.scheduled_ms)
        if occurrence.state == "running" and (self.failure or self.lost or key in self._unsaved):
            self._write_now(_SAVE_OCC, _occ_row(occurrence))  # raises StateError
            self._unsaved.discard(key)
            return
        with self._guard():
            if self._tick_tx() and occurrence.state == "running":
                # Held until the transaction commits, which makes no difference to what a
                # crash keeps: a short call's outcome comes first and replaces it, so the
                # occurrence is written three times instead of four (issue 12, item 2).
                self._running[key] = replace(occurrence)
                return
            self._save_occ(occurrence)

    def _write_running(self) -> None:
        """The attempts still marked running in the open transaction, just before its commit."""
        held, self._running = self._running, {}
        for occurrence in held.values():
            self._save_occ(occurrence)

    def finish(self, occurrence: Occurrence, record: JobRecord) -> None:
        with self._guard(), self._unit():
            self._save_occ(occurrence)
            self._save_job(record)

    def _read_own_writes(self) -> None:
        """Attempts held as running are written before a read, which must see them."""
        if self._running:
            with self._guard():
                self._write_running()

    def get_occurrence(self, job: str, scheduled_ms: int) -> Occurrence | None:
        self._read_own_writes()
        row = self.db.execute(
            f"{_SELECT_OCC} WHERE job = ? AND scheduled_ms = ?", (job, scheduled_ms)
        ).fetchone()
        return Occurrence(*row) if row else None

    def open_occurrences(self) -> list[Occurrence]:
        self._read_own_writes()
        rows = self.db.execute(
            f"{_SELECT_OCC} WHERE state IN ('planned', 'running') ORDER BY scheduled_ms"
        ).fetchall()
        return [Occurrence(*row) for row in rows]

    async def read_history(self, job: str, limit: int = 50) -> list[Occurrence]:
        return self.history(job, limit)  # a local file: answers in microseconds

    def history(self, job: str, limit: int = 50) -> list[Occurrence]:
        self._read_own_writes()
        rows = self.db.execute(
            f"{_SELECT_OCC} WHERE job = ? ORDER BY scheduled_ms DESC LIMIT ?", (job, limit)
        ).fetchall()
        return [Occurrence(*row) for row in rows]

    def load_last_good(self) -> dict[str, tuple[str, bytes]]:
        rows = self.db.execute("SELECT path, digest, content FROM last_good_files").fetchall()
        return {path: (digest, bytes(content)) for path, digest, content in rows}

    def save_last_good(self, path: str, digest: str, content: bytes) -> None:
        self._tick_tx()
        self.db.execute(
            "INSERT INTO last_good_files (path, digest, content) VALUES (?, ?, ?) "
            "ON CONFLICT (path) DO UPDATE SET digest = excluded.digest, content = excluded.content,"
            " jobs = NULL, jobs_key = NULL",
            (path, digest, content),
        )

    def validated_digests(self, key: str) -> dict[str, str]:
        rows = self.db.execute(
            "SELECT path, digest FROM last_good_files WHERE jobs_key = ? AND jobs IS NOT NULL",
            (key,),
        ).fetchall()
        return dict(rows)

    def validated_jobs(self, path: str, digest: str, key: str) -> bytes | None:
        row = self.db.execute(
            "SELECT jobs FROM last_good_files WHERE path = ? AND digest = ? AND jobs_key = ?",
            (path, digest, key),
        ).fetchone()
        return None if row is None or row[0] is None else bytes(row[0])

    def save_validated(self, path: str, digest: str, key: str, jobs: bytes) -> None:
        with self._guard():
            self._tick_tx()
            self.db.execute(
                "UPDATE last_good_files SET jobs = ?, jobs_key = ? WHERE path = ? AND digest = ?",
                (jobs, key, path, digest),
            )

    def forget_last_good(self, paths: list[str]) -> None:
        self._tick_tx()
        self.db.executemany("DELETE FROM last_good_files WHERE path = ?", [(p,) for p in paths])

    def prune(self, before_ms: int) -> int:
        """Forget finished occurrences older than the retention horizon."""
        with self._guard():
            self._tick_tx()
            cursor = self.db.execute(
                "DELETE FROM occurrences WHERE finished_ms IS NOT NULL AND finished_ms < ? "
                "AND state NOT IN ('planned', 'running')",
                (before_ms,),
            )
            return cursor.rowcount
        return 0

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Many writes as one atomic unit (start-up, reloads, all that falls due at once)."""
        with self._tx():
            yield

    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        """An atomic unit: a savepoint inside this tick's transaction, or a transaction."""
        if not self._tick_tx():
            self.db.execute("BEGIN")
            try:
                yield
            except BaseException:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise
            if self.db.in_transaction:  # else a failed write rolled it back
                self.db.execute("COMMIT")
                self._clear_tx_writes()
            return
        name, generation = f"sp{self._savepoints}", self._generation
        self._savepoints += 1
        self.db.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            if generation == self._generation:
                self.db.execute(f"ROLLBACK TO {name}")
            raise
        finally:
            if generation == self._generation:  # else a failed write rolled it all back
                self._savepoints -= 1
                self.db.execute(f"RELEASE {name}")

    @contextlib.contextmanager
    def _unit(self) -> Iterator[None]:
        """Two statements that belong together, on the hot path (plan, finish).

        Inside the tick's transaction they simply join it: a savepoint would double
        the statements per occurrence (measured: 12 instead of 6), and both statements
        fail only together with the disk. Outside a loop, a transaction of their own.
        """
        if self._tick_tx():
            yield
            return
        with self._tx():
            yield

    def _tick_tx(self) -> bool:
        """Join, or open, the open transaction; False outside a loop.

        Writes share one transaction, committed `commit_window_s` after it opened, or in
        the same pass once it holds a planned occurrence (`plan` queues that commit with
        call_soon). A run task created after a plan is queued after that commit, so an
        occurrence is on disk before the task that calls Ductape for it takes its first
        step (conventions: written before the call). A crash can lose the writes of the
        last window: outcomes whose runs still hold their slot (`written`), and attempt
        states (the occurrence then resumes, same key).
        """
        if self.db.in_transaction:
            return True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        self.db.execute("BEGIN")
        self._commit_soon = False
        self._window = loop.call_later(self.commit_window_s, self._window_ends)
        return True

    def _window_ends(self) -> None:
        self._window = None
        self.commit()

    def _cancel_window(self) -> None:
        """The open transaction commits (or rolls back) before its window ends."""
        if self._window is not None:
            self._window.cancel()
            self._window = None

    def commit(self) -> None:
        """Commit the pending tick transaction, if any (a no-op once closed).

        A failed COMMIT loses the tick's writes: the occurrences planned in it are marked
        unsaved, so their runs write them first or call nothing (update_occurrence).
        """
        self._commit_soon = False
        self._cancel_window()
        if self._closed or not self.db.in_transaction:
            self._wake()
            return
        try:
            self._write_lost()
            self._write_running()
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._write_failed(exc)
            return
        self._clear_tx_writes()
        self._tick_plans.clear()
        self._wake()
        self._recovered()

    # ---- write failures (disk full, I/O errors, a read-only file) -----------------------

    def health(self) -> tuple[bool, str]:
        """(writable, what to tell the operator)."""
        if self.lost is not None:
            return False, f"state file {self.path} {self.lost}; {statefile.LOST_ADVICE}"
        if self.failure is not None:
            return False, f"state file {self.path}: {self.failure}; {WRITE_ADVICE}"
        return True, ""

    def check(self) -> None:
        """Called about once a second: is the file still there (a stat), and while writes
        fail, try one, to notice recovery."""
        if self._identity is not None and self.lost is None:
            self.lost = statefile.lost(self.path, self._identity)
            if self.lost is not None:
                log.error(
                    "state.file_lost",
                    path=self.path,
                    problem=self.lost,
                    advice=statefile.LOST_ADVICE,
                )
        checkpoint_error = self._checkpoint_error()
        if checkpoint_error is not None and self.failure is None:
            self._write_failed(sqlite3.OperationalError(checkpoint_error))
        if self.failure is not None and not self.db.in_transaction:
            with contextlib.suppress(StateError):
                self._write_now("PRAGMA user_version = " + str(len(MIGRATIONS)), ())
        if (self._lost or self._lost_jobs) and self.failure is None:
            with self._guard():
                self._tick_tx()  # its commit writes them again, even if nothing else comes

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """A write whose failure is recorded (unhealthy, logged once), not raised."""
        try:
            yield
        except sqlite3.Error as exc:
            self._write_failed(exc)

    def _write_now(self, sql: str, params: tuple[object, ...]) -> None:
        """One write in a transaction of its own, committed now; StateError if it fails."""
        if self.lost is not None:
            raise StateError(self.path, self.lost, statefile.LOST_ADVICE)
        checkpoint_error = self._checkpoint_error()
        if checkpoint_error is not None:
            # The WAL may still take this write, but it cannot be copied back (a full
            # disk): nothing is written, nor started, until the file system has room.
            self._last_failure = time.monotonic()
            raise StateError(self.path, f"cannot write: {checkpoint_error}", WRITE_ADVICE)
        if self.db.in_transaction:
            self.commit()  # the tick's writes go first (and may fail on their own)
        try:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute(sql, params)
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._write_failed(exc)
            raise StateError(self.path, f"cannot write: {exc}", WRITE_ADVICE) from None
        self._recovered()

    def _checkpoint_error(self) -> str | None:
        """Why the checkpoint thread cannot copy the WAL back (a full disk), if it cannot."""
        checkpointer = self._checkpointer
        if checkpointer is None or checkpointer.error is None:
            return None
        return f"checkpoint: {checkpointer.error}"

    def _write_failed(self, exc: sqlite3.Error) -> None:
        """Roll the tick's transaction back (SQLite may have already) and go unhealthy."""
        self._cancel_window()
        if self.db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")
        self._generation += 1
        self._savepoints = 0
        self._running.clear()  # rolled back with the rest of the transaction
        self._lost.update(self._in_tx)
        self._lost_jobs.update(self._in_tx_jobs)
        self._clear_tx_writes()
        self._unsaved.update(self._tick_plans)
        self._tick_plans.clear()
        self._wake()  # their writes are lost and the failure recorded: nothing to wait for
        self._last_failure = time.monotonic()
        if self.failure is None:
            self.failure, self._failed_at = f"writes fail: {exc}", self._last_failure
            log.error("state.write_failed", path=self.path, error=str(exc), advice=WRITE_ADVICE)

    def _recovered(self) -> None:
        """A write succeeded: healthy again once none has failed for RECOVERED_AFTER_S."""
        now = time.monotonic()
        if self._checkpoint_error() is not None:
            self._last_failure = now  # the WAL cannot be copied back yet: still failing
            return
        if self.failure is not None and now - self._last_failure >= RECOVERED_AFTER_S:
            self.failure = None
            log.warning(
                "state.write_recovered", path=self.path, failed_s=round(now - self._failed_at, 1)
            )


class _Checkpointer:
    """Copies the WAL into the database every `every_s`, on a thread of its own."""

    def __init__(self, path: str, every_s: float) -> None:
        self.path, self.every_s = path, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
        self.checkpoints = 0
        self.error: str | None = None  # the last checkpoint's failure (disk full, I/O)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        db: sqlite3.Connection | None = None
        try:
            while not self._stop.wait(self.every_s):
                try:
                    if db is None:  # mode=rw: never create a file that went away
                        uri = f"file:{urllib.parse.quote(self.path)}?mode=rw"
                        db = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=1)
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.checkpoints += 1
                    self.error = _no_room(self.path)
                except sqlite3.Error as exc:
                    # Read by SqliteStore.check on the loop: the store goes unhealthy as
                    # for a failed write (the WAL may still have room for the loop's own
                    # writes on a full disk, but it can no longer be copied back).
                    self.error = str(exc)
        finally:
            if db is not None:
                db.close()


# Below this, the file system counts as full: the WAL reuses the space its last restart
# freed, so SQLite itself would say so only once the database file must grow.
MIN_FREE_BYTES = 256 * 1024


def _no_room(path: str) -> str | None:
    """'database or disk is full' when the state file's file system has (almost) no room."""
    try:
        fs = os.statvfs(Path(path).absolute().parent)
    except OSError:
        return None
    if fs.f_bavail * fs.f_frsize < MIN_FREE_BYTES:
        return (
            f"database or disk is full (under {MIN_FREE_BYTES // 1024} KiB free on its file system)"
        )
    return None


def _fix_job(record: JobRecord) -> JobRecord:
    record.paused = bool(record.paused)
    return record
