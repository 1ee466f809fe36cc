"""The PostgreSQL state backend: several replicas share one database and claim each occurrence.

Protocol (README "Several replicas on PostgreSQL"):

- claim: `INSERT ... ON CONFLICT DO NOTHING` of (job, scheduled_ms) with `owner` (this
  replica), `lease_until` (database time) and `fencing` (a sequence number). Inserted:
  this replica runs it. Also refused when the job is paused, its `limit` is reached
  (counted in the database, under the job row's lock) or, for the same definition, the
  occurrence comes from another first sighting than the one stored.
- lease: renewed every lease/3 for every open occurrence held; writes about an
  occurrence are fenced (`WHERE owner = me AND fencing = token`), so a replica that lost
  it changes nothing.
- takeover: open occurrences whose lease expired are re-owned with a new fencing token
  and run again with the same idempotency key.
- degraded: any failed or slow database call marks the replica unavailable; it claims
  nothing, and stops starting attempts of an occurrence once its lease is closer to
  expiry than lease/3. It reconnects on its own and says so (`store.recovered`).

The scheduler calls `Store` methods synchronously from the event loop: here they queue
the write for one writer task (in order, one transaction each) and return at once; the
claim's verdict is awaited by the run task (`claimed`). Only `history` and
`get_occurrence` (operator requests) read synchronously, with a 2 s timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, fields
from operator import attrgetter
from typing import Any

import psycopg
import structlog
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from runner.errors import RunnerError
from runner.store import OPEN_STATES, JobRecord, Occurrence, Replica, SharedJob
from runner.timing.clock import Clock

log = structlog.get_logger("runner.store")

SCHEMES = ("postgresql://", "postgres://")
MIGRATION_LOCK = 0x64756374  # pg_advisory_xact_lock key: replicas migrate one at a time
TAKEOVER_BATCH = 100
READ_TIMEOUT_S = 2.0

# Each entry migrates from version i to i+1; never edit a released one, append.
MIGRATIONS: list[str] = [
    """
    CREATE SEQUENCE fencing;
    CREATE SEQUENCE job_changes;
    CREATE TABLE jobs (
        name TEXT PRIMARY KEY,
        definition_hash TEXT NOT NULL,
        schedule_hash TEXT NOT NULL,
        first_seen_ms BIGINT NOT NULL,
        anchor_ms BIGINT NOT NULL,
        path TEXT NOT NULL DEFAULT '',
        execution_count BIGINT NOT NULL DEFAULT 0,
        last_scheduled_ms BIGINT,
        last_started_ms BIGINT,
        last_finished_ms BIGINT,
        last_outcome TEXT,
        last_error TEXT,
        next_fire_ms BIGINT,
        status TEXT NOT NULL,
        paused BOOLEAN NOT NULL DEFAULT false,
        retry_count INTEGER NOT NULL DEFAULT 0,
        removed_ms BIGINT,
        succeeded_hash TEXT,
        changed BIGINT NOT NULL DEFAULT nextval('job_changes')
    );
    CREATE INDEX jobs_changed ON jobs (changed);
    CREATE TABLE occurrences (
        job TEXT NOT NULL,
        scheduled_ms BIGINT NOT NULL,
        idempotency_key TEXT NOT NULL,
        state TEXT NOT NULL,
        trigger TEXT NOT NULL,
        reason TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        created_ms BIGINT NOT NULL,
        started_ms BIGINT,
        finished_ms BIGINT,
        duration_ms BIGINT,
        next_attempt_ms BIGINT,
        owner TEXT NOT NULL,
        fencing BIGINT NOT NULL,
        lease_until TIMESTAMPTZ,
        PRIMARY KEY (job, scheduled_ms)
    );
    CREATE INDEX occurrences_open ON occurrences (lease_until)
        WHERE state IN ('planned', 'running');
    CREATE INDEX occurrences_finished ON occurrences (finished_ms);
    """,
]

_JOB_COLUMNS = [f.name for f in fields(JobRecord)]
_OCC_COLUMNS = [f.name for f in fields(Occurrence)]
_SHARED_COLUMNS = [f.name for f in fields(SharedJob)]
_job_row = attrgetter(*_JOB_COLUMNS)
_occ_row = attrgetter(*_OCC_COLUMNS)
_OCC_PARAMS = [f"o_{c}" for c in _OCC_COLUMNS]
_SELECT_OCC = f"SELECT {', '.join(_OCC_COLUMNS)} FROM occurrences"
_OPEN = "state IN ('planned', 'running')"

# Written by whichever replica saves the job last; the shared fields (count, pause,
# results) are only written by `finish` and `set_paused`, never overwritten from memory.
# The first sighting of a definition is kept: every replica must fire at the same phase.
_SAVE_JOB = f"""
    INSERT INTO jobs ({", ".join(_JOB_COLUMNS)}) VALUES ({", ".join("%s" for _ in _JOB_COLUMNS)})
    ON CONFLICT (name) DO UPDATE SET
        anchor_ms = CASE WHEN jobs.definition_hash = excluded.definition_hash
            THEN jobs.anchor_ms ELSE excluded.anchor_ms END,
        first_seen_ms = CASE WHEN jobs.definition_hash = excluded.definition_hash
            THEN jobs.first_seen_ms ELSE excluded.first_seen_ms END,
        definition_hash = excluded.definition_hash, schedule_hash = excluded.schedule_hash,
        path = excluded.path, last_scheduled_ms = excluded.last_scheduled_ms,
        next_fire_ms = excluded.next_fire_ms, status = excluded.status,
        removed_ms = excluded.removed_ms
    RETURNING {", ".join(_SHARED_COLUMNS)}
"""
# One statement (autocommit): a replica cut off mid-way never leaves a lock behind.
# Refused when, under the job row's lock, the job is paused, the same definition has
# another first sighting, or `limit` is reached counting the runs still open. On a
# conflict with an open occurrence this replica already owns (a retried write whose
# first try committed), it returns our token again.
_CLAIM = f"""
    WITH job AS (
        SELECT paused, execution_count, definition_hash, anchor_ms FROM jobs
        WHERE name = %(job)s FOR UPDATE
    ), verdict AS (
        SELECT NOT %(check)s OR job.paused IS NULL OR (
            NOT job.paused
            AND NOT (job.definition_hash = %(definition)s AND job.anchor_ms <> %(anchor)s)
            AND (%(limit)s::bigint IS NULL OR job.execution_count + (
                SELECT count(*) FROM occurrences WHERE job = %(job)s AND {_OPEN}
            ) < %(limit)s::bigint)
        ) AS ok
        FROM (SELECT 1) AS one LEFT JOIN job ON true
    )
    INSERT INTO occurrences ({", ".join(_OCC_COLUMNS)}, owner, fencing, lease_until)
    SELECT {", ".join(f"%(o_{c})s" for c in _OCC_COLUMNS)}, %(owner)s, nextval('fencing'),
        CASE WHEN %(leased)s THEN now() + make_interval(secs => %(lease)s) END
    WHERE (SELECT ok FROM verdict)
    ON CONFLICT (job, scheduled_ms) DO UPDATE SET owner = occurrences.owner
        WHERE occurrences.owner = %(owner)s AND occurrences.state IN ('planned', 'running')
    RETURNING fencing
"""
# One statement: the occurrence's final state (fenced) and, if it was ours, its job's
# shared counters, incremented in SQL.
_FINISH = """
    WITH occ AS (
        UPDATE occurrences SET state = %(state)s, reason = %(reason)s,
            attempts = %(attempts)s, last_error = %(error)s, started_ms = %(started)s,
            finished_ms = %(finished)s, duration_ms = %(duration)s,
            next_attempt_ms = %(next_attempt)s, lease_until = NULL
        WHERE job = %(job)s AND scheduled_ms = %(scheduled)s AND owner = %(owner)s
            AND fencing = %(fencing)s AND state IN ('planned', 'running')
        RETURNING 1
    ), counted AS (
        UPDATE jobs SET
            execution_count = execution_count + CASE WHEN %(ran)s THEN 1 ELSE 0 END,
            last_outcome = CASE WHEN %(ran)s THEN %(state)s ELSE last_outcome END,
            last_error = CASE WHEN %(ran)s THEN %(error)s ELSE last_error END,
            last_started_ms = CASE WHEN %(ran)s THEN %(job_started)s ELSE last_started_ms END,
            last_finished_ms = CASE WHEN %(ran)s THEN %(job_finished)s ELSE last_finished_ms END,
            retry_count = CASE WHEN %(ran)s THEN %(retry_count)s ELSE retry_count END,
            succeeded_hash = COALESCE(%(succeeded_hash)s, succeeded_hash),
            status = %(status)s, next_fire_ms = %(next_fire)s,
            changed = CASE WHEN %(ran)s THEN nextval('job_changes') ELSE changed END
        WHERE name = %(job)s AND EXISTS (SELECT 1 FROM occ)
        RETURNING 1
    )
    SELECT count(*) FROM occ
"""
_UPDATE_OCC = """
    UPDATE occurrences SET state = %s, reason = %s, attempts = %s, last_error = %s,
        started_ms = %s, next_attempt_ms = %s
    WHERE job = %s AND scheduled_ms = %s AND owner = %s AND fencing = %s
        AND state IN ('planned', 'running')
"""
_TAKEOVER = f"""
    UPDATE occurrences SET owner = %s, fencing = nextval('fencing'),
        lease_until = now() + make_interval(secs => %s)
    WHERE (job, scheduled_ms) IN (
        SELECT job, scheduled_ms FROM occurrences
        WHERE {_OPEN} AND (lease_until < now() OR owner = %s) AND job = ANY(%s)
        ORDER BY scheduled_ms LIMIT {TAKEOVER_BATCH} FOR UPDATE SKIP LOCKED)
    RETURNING {", ".join(_OCC_COLUMNS)}, fencing
"""


class StoreUnavailable(RunnerError):
    """The PostgreSQL state database does not answer (in time)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"state database unavailable: {reason}")


def is_dsn(state: str) -> bool:
    return state.startswith(SCHEMES)


def display_dsn(dsn: str) -> str:
    """The DSN without its password, for logs and status."""
    params = conninfo_to_dict(dsn)
    params.pop("password", None)
    host, db = params.get("host", "localhost"), params.get("dbname", "")
    return f"postgresql://{params.get('user', '')}@{host}:{params.get('port', 5432)}/{db}"


def default_replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass
class Lease:
    """An occurrence this replica holds: its fencing token and until when it may start it."""

    fencing: int
    valid_until: float  # local monotonic seconds; the database's lease ends later


@dataclass
class _Write:
    """One queued write: a coroutine over a connection, run in its own transaction."""

    run: Callable[[psycopg.AsyncConnection[Any]], Awaitable[Any]]
    done: asyncio.Future[Any] | None = None


class PostgresStore:
    """State shared by replicas in one PostgreSQL database (psycopg 3, async)."""

    def __init__(
        self,
        dsn: str,
        clock: Clock,
        *,
        replica_id: str | None = None,
        lease_s: float = 30.0,
        timeout_s: float | None = None,
    ) -> None:
        self.dsn = dsn
        self.clock = clock
        self.replica_id = replica_id or default_replica_id()
        self.lease_s = lease_s
        self.margin_s = lease_s / 3
        self.timeout_s = timeout_s or min(5.0, lease_s / 4)
        self.held: dict[tuple[str, int], Lease] = {}
        self.replica: Replica | None = None
        self.available = True
        self.down_since: float | None = None
        self.down_reason = ""
        self._claims: dict[tuple[str, int], asyncio.Future[bool]] = {}
        self._queue: asyncio.Queue[_Write] = asyncio.Queue()
        self._jobs: dict[str, JobRecord] = {}
        self._open: list[Occurrence] = []
        self._conns: dict[str, psycopg.AsyncConnection[Any]] = {}
        self._reader: psycopg.Connection[Any] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._changed = 0
        self._expired: set[tuple[str, int]] = set()
        self._abandoned: set[asyncio.Future[Any]] = set()

    # ---- start and stop ----------------------------------------------------------------

    async def open(self, known_jobs: set[str]) -> None:
        """Connect, migrate, read the jobs, and take over expired occurrences of `known_jobs`."""
        conn = await self._conn("writer")
        await migrate(conn)
        cursor = await conn.execute(f"SELECT {', '.join(_JOB_COLUMNS)}, changed FROM jobs")
        for row in await cursor.fetchall():
            self._jobs[row[0]] = JobRecord(*row[:-1])
            self._changed = max(self._changed, row[-1])
        # Ours from a previous life (same replica_id) need not wait for their lease.
        self._open = await self._take_over(conn, known=known_jobs, mine=True)

    def start(self) -> None:
        """The writer and the lease keeper; call once the scheduler is attached and started."""
        self._tasks = [
            asyncio.create_task(self._write_forever(), name="store-writer"),
            asyncio.create_task(self._keep_forever(), name="store-keeper"),
        ]

    async def aclose(self, flush_s: float = 5.0) -> None:
        """Flush queued writes (up to `flush_s`), hand our open leases back, disconnect."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), flush_s)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            conn = await self._conn("writer")
            await asyncio.wait_for(
                conn.execute(
                    f"UPDATE occurrences SET lease_until = now() WHERE owner = %s AND {_OPEN}",
                    (self.replica_id,),
                ),
                self.timeout_s,
            )
        for conn in self._conns.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 1.0)
        self._conns.clear()
        if self._abandoned:  # calls given up on: psycopg ends them within ~10 s
            await asyncio.wait(set(self._abandoned), timeout=11)
        self.close()

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    # ---- Store: the scheduler's synchronous calls ----------------------------------------

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        yield  # writes are queued in order already; each is its own transaction

    def load_jobs(self) -> dict[str, JobRecord]:
        return dict(self._jobs)

    def open_occurrences(self) -> list[Occurrence]:
        """Those taken over at `open`: ours from a previous life, or whose lease expired."""
        return list(self._open)

    def save_job(self, record: JobRecord) -> None:
        row = _job_row(record)
        self._queue.put_nowait(_Write(lambda conn: self._save_job(conn, row)))

    def plan(self, occurrence: Occurrence, record: JobRecord, *, limit: int | None = None) -> bool:
        """Queue the claim; True at once, the verdict comes through `claimed`."""
        key = (occurrence.job, occurrence.scheduled_ms)
        final = occurrence.state not in OPEN_STATES  # a skipped one: recorded, never run
        check = occurrence.trigger != "manual" and not final
        params: dict[str, Any] = dict(zip(_OCC_PARAMS, _occ_row(occurrence), strict=True))
        params |= {
            "job": occurrence.job,
            "check": check,
            "definition": record.definition_hash,
            "anchor": record.anchor_ms,
            "limit": limit if check else None,
            "owner": self.replica_id,
            "leased": not final,
            "lease": self.lease_s,
        }
        job_row = _job_row(record)
        done = None if final else asyncio.get_running_loop().create_future()
        if done is not None:
            self._claims[key] = done
        self._queue.put_nowait(_Write(lambda conn: self._claim(conn, key, params, job_row), done))
        return True

    def update_occurrence(self, occurrence: Occurrence) -> None:
        lease = self.held.get((occurrence.job, occurrence.scheduled_ms))
        if lease is None:
            return  # not ours (any more): fencing would refuse it anyway
        o = occurrence
        params = (
            *(o.state, o.reason, o.attempts, o.last_error, o.started_ms, o.next_attempt_ms),
            *(o.job, o.scheduled_ms, self.replica_id, lease.fencing),
        )
        self._queue.put_nowait(_Write(lambda conn: conn.execute(_UPDATE_OCC, params)))

    def finish(self, occurrence: Occurrence, record: JobRecord) -> None:
        key = (occurrence.job, occurrence.scheduled_ms)
        lease = self.held.get(key)
        if lease is None:
            return
        o, r = occurrence, record
        params = {
            "state": o.state,
            "reason": o.reason,
            "attempts": o.attempts,
            "error": o.last_error,
            "started": o.started_ms,
            "finished": o.finished_ms,
            "duration": o.duration_ms,
            "next_attempt": o.next_attempt_ms,
            "job": o.job,
            "scheduled": o.scheduled_ms,
            "owner": self.replica_id,
            "fencing": lease.fencing,
            "ran": o.state in ("succeeded", "failed"),
            "job_started": r.last_started_ms,
            "job_finished": r.last_finished_ms,
            "retry_count": r.retry_count,
            "succeeded_hash": r.succeeded_hash,
            "status": r.status,
            "next_fire": r.next_fire_ms,
        }
        self._queue.put_nowait(_Write(lambda conn: self._finish(conn, key, params)))

    def get_occurrence(self, job: str, scheduled_ms: int) -> Occurrence | None:
        rows = self._read(f"{_SELECT_OCC} WHERE job = %s AND scheduled_ms = %s", job, scheduled_ms)
        return Occurrence(*rows[0]) if rows else None

    def history(self, job: str, limit: int = 50) -> list[Occurrence]:
        rows = self._read(
            f"{_SELECT_OCC} WHERE job = %s ORDER BY scheduled_ms DESC LIMIT %s", job, limit
        )
        return [Occurrence(*row) for row in rows]

    def prune(self, before_ms: int) -> int:
        """Queued; every replica prunes the same rows, harmlessly. Returns 0 (not counted)."""
        sql = (
            f"DELETE FROM occurrences WHERE finished_ms IS NOT NULL AND finished_ms < %s "
            f"AND NOT {_OPEN}"
        )
        self._queue.put_nowait(_Write(lambda conn: conn.execute(sql, (before_ms,))))
        return 0

    # ---- Claims: what the scheduler asks as a replica --------------------------------------

    def attach(self, replica: Replica) -> None:
        self.replica = replica

    def writable(self) -> bool:
        return self.available

    async def claimed(self, occurrence: Occurrence) -> bool:
        key = (occurrence.job, occurrence.scheduled_ms)
        done = self._claims.pop(key, None)  # one verdict per plan; a takeover comes later
        if done is None:
            return key in self.held  # resumed or taken over: already ours
        won: bool = await asyncio.shield(done)
        return won

    def may_start(self, occurrence: Occurrence) -> bool:
        lease = self.held.get((occurrence.job, occurrence.scheduled_ms))
        if lease is None or not self.available:
            return False
        return self.clock.monotonic() < lease.valid_until - self.margin_s

    def released(self, occurrence: Occurrence) -> None:
        key = (occurrence.job, occurrence.scheduled_ms)
        self._claims.pop(key, None)
        if occurrence.state in OPEN_STATES:
            self.held.pop(key, None)  # left open: its lease lapses and a replica takes it
        # A final one stays held until its finish is written (renewed meanwhile).

    def set_paused(self, name: str, paused: bool) -> None:
        sql = "UPDATE jobs SET paused = %s, changed = nextval('job_changes') WHERE name = %s"
        self._queue.put_nowait(_Write(lambda conn: conn.execute(sql, (paused, name))))

    def status(self) -> tuple[bool, str]:
        where = display_dsn(self.dsn)
        if self.available:
            return True, f"state database {where} reachable; replica {self.replica_id}"
        assert self.down_since is not None
        away = self.clock.monotonic() - self.down_since
        return False, (
            f"state database {where} unreachable for {away:.0f} s ({self.down_reason}): "
            f"replica {self.replica_id} starts no occurrence"
        )

    # ---- the writes ---------------------------------------------------------------------------

    async def _save_job(self, conn: psycopg.AsyncConnection[Any], row: tuple[Any, ...]) -> None:
        cursor = await conn.execute(_SAVE_JOB, row)
        stored = SharedJob(*(await cursor.fetchone() or ()))
        anchor = row[_JOB_COLUMNS.index("anchor_ms")]
        if stored.anchor_ms != anchor and self.replica is not None:
            self.replica.shared([stored])  # another replica saw this definition first

    async def _claim(
        self,
        conn: psycopg.AsyncConnection[Any],
        key: tuple[str, int],
        params: dict[str, Any],
        job_row: tuple[Any, ...],
    ) -> bool:
        sent = self.clock.monotonic()
        row = await (await conn.execute(_CLAIM, params)).fetchone()
        if row is None:
            return False  # claimed by another replica first, or refused (see _CLAIM)
        if params["leased"]:
            self.held[key] = Lease(row[0], sent + self.lease_s)
        await self._save_job(conn, job_row)
        return True

    async def _finish(
        self, conn: psycopg.AsyncConnection[Any], key: tuple[str, int], params: dict[str, Any]
    ) -> None:
        row = await (await conn.execute(_FINISH, params)).fetchone()
        if not row or row[0] != 1:
            # Taken over (or already final): the other replica's result is the record.
            log.warning("run.fenced", job=key[0], scheduled_ms=key[1], replica=self.replica_id)
        self.held.pop(key, None)

    async def _write_forever(self) -> None:
        """One writer, in queue order, one transaction per write, retried until it lands."""
        while True:
            write = await self._queue.get()
            while True:
                try:
                    result = await self._db("writer", write.run)
                    break
                except StoreUnavailable:
                    await self.clock.sleep(min(1.0, self.lease_s / 6))
            if write.done is not None and not write.done.done():
                write.done.set_result(bool(result))
            self._queue.task_done()

    # ---- the lease keeper ---------------------------------------------------------------------

    async def _keep_forever(self) -> None:
        """Every lease/3: renew our leases, take over expired ones, read others' changes."""
        while True:
            with contextlib.suppress(StoreUnavailable):
                await self._db("keeper", self._renew)
                known = self.replica.known_jobs() if self.replica is not None else set()
                taken = await self._db("keeper", functools.partial(self._take_over, known=known))
                shared = await self._db("keeper", self._read_shared)
                if self.replica is not None:
                    if taken:
                        self.replica.adopt(taken)
                    if shared:
                        self.replica.shared(shared)
            self._expire()
            await self.clock.sleep(self._keeper_sleep())

    def _keeper_sleep(self) -> float:
        if self.available:
            return self.lease_s / 3
        return min(1.0, self.lease_s / 6)  # reconnect soon; check expiries often

    async def _renew(self, conn: psycopg.AsyncConnection[Any]) -> None:
        if not self.held:
            await conn.execute("SELECT 1")
            return
        sent = self.clock.monotonic()
        tokens = [lease.fencing for lease in self.held.values()]
        cursor = await conn.execute(
            "UPDATE occurrences SET lease_until = now() + make_interval(secs => %s) "
            "WHERE owner = %s AND fencing = ANY(%s) RETURNING fencing",
            (self.lease_s, self.replica_id, tokens),
        )
        renewed = {row[0] for row in await cursor.fetchall()}
        for key, lease in list(self.held.items()):
            if lease.fencing in renewed:
                lease.valid_until = sent + self.lease_s
            elif lease.fencing in tokens:  # re-owned by another replica meanwhile
                self.held.pop(key, None)
                self._lost(key)

    async def _take_over(
        self, conn: psycopg.AsyncConnection[Any], *, known: set[str], mine: bool = False
    ) -> list[Occurrence]:
        if not known:
            return []
        sent = self.clock.monotonic()
        owner = self.replica_id if mine else ""
        params = (self.replica_id, self.lease_s, owner, sorted(known))
        cursor = await conn.execute(_TAKEOVER, params)
        taken = []
        for row in await cursor.fetchall():
            occ = Occurrence(*row[:-1])
            self.held[(occ.job, occ.scheduled_ms)] = Lease(row[-1], sent + self.lease_s)
            taken.append(occ)
        return taken

    async def _read_shared(self, conn: psycopg.AsyncConnection[Any]) -> list[SharedJob]:
        cursor = await conn.execute(
            f"SELECT {', '.join(_SHARED_COLUMNS)}, changed FROM jobs WHERE changed > %s "
            "ORDER BY changed",
            (self._changed,),
        )
        rows = await cursor.fetchall()
        if rows:
            self._changed = rows[-1][-1]
        return [SharedJob(*row[:-1]) for row in rows]

    def _expire(self) -> None:
        """Leases we could not renew in time: start nothing more under them."""
        now = self.clock.monotonic()
        self._expired &= set(self.held)
        for key, lease in list(self.held.items()):
            if now >= lease.valid_until - self.margin_s and key not in self._expired:
                self._expired.add(key)
                self._lost(key)
            elif now < lease.valid_until - self.margin_s:
                self._expired.discard(key)

    def _lost(self, key: tuple[str, int]) -> None:
        if self.replica is not None:
            self.replica.lease_lost(*key)

    # ---- connections and failure -----------------------------------------------------------------

    async def _conn(self, name: str) -> psycopg.AsyncConnection[Any]:
        conn = self._conns.get(name)
        if conn is None or conn.closed:
            conn = await psycopg.AsyncConnection.connect(
                self.dsn,
                autocommit=True,
                connect_timeout=max(1, round(self.timeout_s)),
                application_name=f"ductape-runner {self.replica_id}",
                # Should a transaction ever wait on us across a dead network, the
                # server ends it rather than keep its locks from the other replicas.
                options=f"-c idle_in_transaction_session_timeout={int(self.timeout_s * 1000)}",
            )
            self._conns[name] = conn
        return conn

    async def _db(
        self, name: str, work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[Any]]
    ) -> Any:
        """Run `work` (single autocommit statements) on connection `name`, within the timeout.

        A call that does not answer in time is abandoned, not awaited: psycopg's own
        cancellation can wait 10 s on a dead network (it closes the connection itself).
        """
        task = asyncio.ensure_future(self._transaction(name, work))
        try:
            done, _ = await asyncio.wait({task}, timeout=self.timeout_s)
        except asyncio.CancelledError:
            self._abandon(name, task)
            raise
        if not done:
            self._abandon(name, task)
            self._down(f"no answer within {self.timeout_s:g} s")
            raise StoreUnavailable("timeout")
        try:
            result = task.result()
        except (psycopg.Error, OSError) as exc:
            await self._drop(name)
            self._down(f"{type(exc).__name__}: {str(exc).strip()[:200]}")
            raise StoreUnavailable(type(exc).__name__) from exc
        self._up()
        return result

    async def _transaction(
        self, name: str, work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[Any]]
    ) -> Any:
        conn = await self._conn(name)
        return await work(conn)  # autocommit: every write is one statement

    def _abandon(self, name: str, task: asyncio.Future[Any]) -> None:
        conn = self._conns.pop(name, None)
        task.cancel()
        self._abandoned.add(task)

        def reap(done: asyncio.Future[Any]) -> None:
            self._abandoned.discard(done)
            if not done.cancelled():
                done.exception()  # retrieved: never "exception was never retrieved"
            if conn is not None and not conn.closed:
                closing = asyncio.ensure_future(conn.close())
                self._abandoned.add(closing)
                closing.add_done_callback(self._abandoned.discard)

        task.add_done_callback(reap)

    async def _drop(self, name: str) -> None:
        conn = self._conns.pop(name, None)
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 0.5)

    def _down(self, reason: str) -> None:
        if not self.available:
            return
        self.available, self.down_since, self.down_reason = False, self.clock.monotonic(), reason
        log.error(
            "store.unavailable",
            state=display_dsn(self.dsn),
            reason=reason,
            replica=self.replica_id,
            held=len(self.held),
            decision="claiming nothing; attempts stop when leases near expiry",
        )
        if self.replica is not None:
            self.replica.store_available(False)

    def _up(self) -> None:
        if self.available:
            return
        away = self.clock.monotonic() - (self.down_since or 0.0)
        self.available, self.down_since = True, None
        log.warning("store.recovered", state=display_dsn(self.dsn), away_s=round(away, 1))
        if self.replica is not None:
            self.replica.store_available(True)

    # ---- synchronous reads (control API) ---------------------------------------------------------

    def _read(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        if not self.available:
            raise StoreUnavailable(self.down_reason)
        try:
            if self._reader is None or self._reader.closed:
                self._reader = psycopg.connect(
                    make_conninfo(
                        self.dsn,
                        connect_timeout=2,
                        options=f"-c statement_timeout={int(READ_TIMEOUT_S * 1000)}",
                    ),
                    autocommit=True,
                )
            return self._reader.execute(sql, params).fetchall()
        except psycopg.Error as exc:
            self.close()
            raise StoreUnavailable(type(exc).__name__) from exc


async def migrate(conn: psycopg.AsyncConnection[Any]) -> int:
    """Apply pending migrations, one replica at a time; returns the schema version."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        await conn.execute("CREATE TABLE IF NOT EXISTS runner_schema (version integer NOT NULL)")
        row = await (await conn.execute("SELECT version FROM runner_schema")).fetchone()
        version = 0 if row is None else int(row[0])
        if row is None:
            await conn.execute("INSERT INTO runner_schema VALUES (0)")
        if version > len(MIGRATIONS):
            raise RuntimeError(
                f"state database is at schema version {version}, newer than this runner "
                f"({len(MIGRATIONS)}): upgrade the runner"
            )
        for number in range(version, len(MIGRATIONS)):
            await conn.execute(MIGRATIONS[number].encode())
            await conn.execute("UPDATE runner_schema SET version = %s", (number + 1,))
    return len(MIGRATIONS)
