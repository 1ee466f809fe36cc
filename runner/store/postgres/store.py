"""`PostgresStore`: the `Store` the scheduler calls, its start and stop, and the reads."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg

from runner.store import OPEN_STATES, JobRecord, Occurrence, Replica
from runner.store.postgres.claims import _UPDATE_OCC, Lease, _Claims
from runner.store.postgres.connection import _Write, default_replica_id, display_dsn
from runner.store.postgres.schema import (
    _JOB_COLUMNS,
    _OCC_PARAMS,
    _OPEN,
    _SELECT_OCC,
    _job_row,
    _occ_row,
    migrate,
)
from runner.timing.clock import Clock


class PostgresStore(_Claims):
    """State shared by replicas in one PostgreSQL database (psycopg 3, async).

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
    claim's verdict is awaited by the run task (`claimed`). Operator reads (`read_history`)
    are awaited on a connection of their own, within the same client-side timeout.
    """

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
            "counted": o.state in ("succeeded", "failed") and o.trigger != "manual",
            "job_started": r.last_started_ms,
            "job_finished": r.last_finished_ms,
            "retry_count": r.retry_count,
            "succeeded_hash": r.succeeded_hash,
            "status": r.status,
            "next_fire": r.next_fire_ms,
        }
        self._queue.put_nowait(_Write(lambda conn: self._finish(conn, key, params)))

    async def read_history(self, job: str, limit: int = 50) -> list[Occurrence]:
        """On the loop, never blocking it: a connection of its own, the client-side timeout
        of every database call (issue 18, bug 4: a blocking read on a dropped network
        stalled the loop for 40 s)."""
        sql = f"{_SELECT_OCC} WHERE job = %s ORDER BY scheduled_ms DESC LIMIT %s"

        async def work(conn: psycopg.AsyncConnection[Any]) -> list[tuple[Any, ...]]:
            cursor = await conn.execute(sql, (job, limit))
            return await cursor.fetchall()

        rows = await self._db("reader", work)
        return [Occurrence(*row) for row in rows]

    def prune(self, before_ms: int) -> int:
        """Queued; every replica prunes the same rows, harmlessly. Returns 0 (not counted)."""
        sql = (
            f"DELETE FROM occurrences WHERE finished_ms IS NOT NULL AND finished_ms < %s "
            f"AND NOT {_OPEN}"
        )
        self._queue.put_nowait(_Write(lambda conn: conn.execute(sql, (before_ms,))))
        return 0

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
