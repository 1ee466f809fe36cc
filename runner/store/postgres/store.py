"""`PostgresStore`: the `Store` the scheduler calls, its start and stop, and the reads."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Iterator, Mapping
from typing import Any

import psycopg
import structlog

from runner.store import OPEN_STATES, JobRecord, Occurrence, Replica
from runner.store.postgres.batch_sql import CHANNEL, HAND_BACK
from runner.store.postgres.claims import HEARTBEAT, _Claims
from runner.store.postgres.connection import Lease, _Write
from runner.store.postgres.names import default_replica_id, display_dsn
from runner.store.postgres.schema import (
    _JOB_COLUMNS,
    _OPEN,
    _SELECT_OCC,
    _job_row,
    _occ_row,
    migrate,
)
from runner.store.postgres.writer import _Verdict
from runner.timing.clock import Clock

log = structlog.get_logger("runner.store")


class PostgresStore(_Claims):
    """State shared by replicas in one PostgreSQL database (psycopg 3, async).

    Protocol (README "Several replicas on PostgreSQL", issue 14):

    - plan: every replica that fires an occurrence inserts it if absent, unowned, keyed
      by (job, scheduled_ms); refused when the job is paused, its `limit` is reached
      (counted in the database) or, for the same definition, the occurrence comes from
      another first sighting than the one stored.
    - claim: each replica takes as many unowned occurrences as it has room for
      (`claim_limit` minus the leases it holds), oldest first, `FOR UPDATE SKIP LOCKED`,
      setting `owner`, `lease_until` (database time) and `fencing` (a sequence number).
      An occurrence this replica planned itself answers its `claimed`; one planned by
      another replica (a trigger, a replica ahead of us) is handed over through `adopt`.
    - lease: renewed every lease/3 for every open occurrence held; writes about an
      occurrence are fenced (`WHERE owner = me AND fencing = token`), so a replica that
      lost it changes nothing.
    - takeover: open occurrences whose lease expired are re-owned with a new fencing token
      and run again with the same idempotency key.
    - degraded: any failed or slow database call marks the replica unavailable; it claims
      nothing, and stops starting attempts of an occurrence once its lease is closer to
      expiry than lease/3. It reconnects on its own and says so (`store.recovered`).

    The scheduler calls `Store` methods synchronously from the event loop: here they queue
    the write for one writer task, which applies everything queued meanwhile in a few
    statements per tick (runner.store.postgres.writer); the claim's verdict is awaited by
    the run task (`claimed`). Operator reads (`read_history`) are awaited on a connection
    of their own, within the same client-side timeout.
    """

    def __init__(
        self,
        dsn: str,
        clock: Clock,
        *,
        replica_id: str | None = None,
        lease_s: float = 30.0,
        timeout_s: float | None = None,
        claim_limit: int = 64,
    ) -> None:
        self.dsn = dsn
        self.clock = clock
        self.replica_id = replica_id or default_replica_id()
        self.lease_s = lease_s
        self.margin_s = lease_s / 3
        self.timeout_s = timeout_s or min(5.0, lease_s / 4)
        self.claim_limit = claim_limit
        self.held: dict[tuple[str, int], Lease] = {}
        self.replica: Replica | None = None
        self.available = True
        self.down_since: float | None = None
        self.down_reason = ""
        self._claims: dict[tuple[str, int], asyncio.Future[bool]] = {}
        self._finishes = itertools.count()
        self._queue: asyncio.Queue[_Write] = asyncio.Queue()
        self._jobs: dict[str, JobRecord] = {}
        self._open: list[Occurrence] = []
        self._conns: dict[str, psycopg.AsyncConnection[Any]] = {}
        self._reader: psycopg.Connection[Any] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._changed = 0
        self._expired: set[tuple[str, int]] = set()
        self._abandoned: set[asyncio.Future[Any]] = set()
        self._waiting: dict[tuple[str, int], _Verdict] = {}
        self._unclaimed = True
        self._poked = False
        self._rows = asyncio.Lock()
        self._stale: set[str] = set()
        self._known: tuple[set[str], str] = (set(), "")
        self._skips: dict[tuple[str, int], str] = {}
        self._news = asyncio.Event()
        self._halts_told = False
        self._held = {}
        self._hold_timer = False
        self._elect_told = False
        self._lead_until = 0.0
        self._leader_wait = lease_s / 3
        self._term = 0

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
        await conn.execute(HEARTBEAT, self._heartbeat(fresh=True) | {"jobs": len(known_jobs)})
        # Names of replicas long gone (a default id changes at every start).
        await conn.execute("DELETE FROM replicas WHERE seen_at < now() - interval '7 days'")
        await self._elect(conn)

    def start(self) -> None:
        """The writer, the lease keeper and the listener; call once the scheduler is
        attached and started."""
        self._tasks = [
            asyncio.create_task(self._write_forever(), name="store-writer"),
            asyncio.create_task(self._keep_forever(), name="store-keeper"),
            asyncio.create_task(self._news_forever(), name="store-news"),
            asyncio.create_task(self._listen_forever(), name="store-listener"),
        ]
        self._poke()  # unowned occurrences left by others

    async def aclose(self, flush_s: float = 5.0) -> None:
        """Flush queued writes (up to `flush_s`), hand our open leases back, disconnect.

        Occurrences never attempted go back unowned (any replica claims them at once);
        the others get an expired lease (the next replica's keeper takes them over)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._flushed(), flush_s)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            conn = await self._conn("writer")
            await asyncio.wait_for(conn.execute(HAND_BACK, {"me": self.replica_id}), self.timeout_s)
            await asyncio.wait_for(self._resign(conn), self.timeout_s)
            stopped = "UPDATE replicas SET stopped_at = now() WHERE id = %s"
            await asyncio.wait_for(conn.execute(stopped, (self.replica_id,)), self.timeout_s)
        for conn in self._conns.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 1.0)
        self._conns.clear()
        if self._abandoned:  # calls given up on: psycopg ends them within ~10 s
            await asyncio.wait(set(self._abandoned), timeout=11)
        self.close()

    async def _flushed(self) -> None:
        """Everything queued is written, attempt updates held for a tick included."""
        await self._queue.join()
        while self._held:
            self._poke()
            await self._queue.join()

    # ---- Store: the scheduler's synchronous calls ----------------------------------------

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        yield  # writes are queued in order already; each is its own transaction

    def load_jobs(self, strings: Mapping[str, str] | None = None) -> dict[str, JobRecord]:
        # Read at `open`, before the jobs were known: keyed now by the caller's strings.
        known = (strings or {}).get
        return {known(name, name): record for name, record in self._jobs.items()}

    def open_occurrences(self) -> list[Occurrence]:
        """Those taken over at `open`: ours from a previous life, or whose lease expired."""
        return list(self._open)

    def save_job(self, record: JobRecord) -> None:
        self._queue.put_nowait(_Write(kind="job", row=_job_row(record)))

    def save_jobs(self, records: list[JobRecord]) -> None:
        for record in records:
            self.save_job(record)

    def plan(
        self,
        occurrence: Occurrence,
        record: JobRecord,
        *,
        limit: int | None = None,
        forbid: bool = False,
        replace: bool = False,
    ) -> bool:
        """Queue the plan; True at once, the verdict comes through `claimed`."""
        key = (occurrence.job, occurrence.scheduled_ms)
        final = occurrence.state not in OPEN_STATES  # a skipped one: recorded, never run
        check = occurrence.trigger != "manual" and not final
        row = (
            *_occ_row(occurrence),
            *(check, record.definition_hash, record.anchor_ms, limit if check else None),
            not final,
            forbid and check,
            replace and not final,
        )
        if not final:
            done = asyncio.get_running_loop().create_future()
            self._claims[key] = done
            self._waiting[key] = _Verdict(done)
        self._queue.put_nowait(_Write(kind="job", row=_job_row(record)))
        self._queue.put_nowait(_Write(kind="plan", row=row))
        return True

    def prepare(self, occurrences: list[Occurrence]) -> list[bool]:
        """Never ahead: replicas plan and claim each occurrence at its instant."""
        return [False] * len(occurrences)

    def unprepare(self, occurrence: Occurrence) -> None:
        """Nothing is prepared here."""

    def update_occurrence(self, occurrence: Occurrence) -> None:
        lease = self.held.get((occurrence.job, occurrence.scheduled_ms))
        if lease is None:
            return  # not ours (any more): fencing would refuse it anyway
        o = occurrence
        row = (
            *(o.job, o.scheduled_ms, lease.fencing, o.state, o.reason, o.attempts),
            *(o.last_error, o.started_ms, o.next_attempt_ms),
        )
        self._queue.put_nowait(_Write(kind="update", row=row))

    def written(self) -> None:
        """The batched writer's own ticks decide; a run does not wait for them."""
        return None

    def finish(self, occurrence: Occurrence, record: JobRecord) -> None:
        lease = self.held.get((occurrence.job, occurrence.scheduled_ms))
        if lease is None:
            return
        o, r = occurrence, record
        ran = o.state in ("succeeded", "failed")
        row = (
            *(o.job, o.scheduled_ms, lease.fencing, o.state, o.reason, o.attempts),
            *(o.last_error, o.started_ms, o.next_attempt_ms, o.finished_ms, o.duration_ms),
            *(next(self._finishes), ran, ran and o.trigger != "manual"),
            *(r.last_started_ms, r.last_finished_ms, r.retry_count, r.succeeded_hash),
            *(r.status, r.next_fire_ms),
        )
        self._queue.put_nowait(_Write(kind="finish", row=row))

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
        """Queued: returns 0, and the writer logs `history.pruned` with what it deleted.
        Only the leader prunes (runner.store.postgres.leader)."""
        if not self.leading():
            return 0
        sql = (
            f"DELETE FROM occurrences WHERE finished_ms IS NOT NULL AND finished_ms < %s "
            f"AND NOT {_OPEN}"
        )

        async def work(conn: psycopg.AsyncConnection[Any]) -> int:
            deleted = (await conn.execute(sql, (before_ms,))).rowcount
            if deleted:
                log.info("history.pruned", occurrences=deleted, replica=self.replica_id)
            return deleted

        self._queue.put_nowait(_Write(work))
        return 0

    def set_paused(self, name: str, paused: bool) -> None:
        """Shared at once: the other replicas are told (NOTIFY) and read it back."""
        sql = (
            "UPDATE jobs SET paused = %(paused)s, changed = nextval('job_changes') "
            f"WHERE name = %(name)s RETURNING pg_notify('{CHANNEL}', 'jobs ' || %(me)s)"
        )
        params = {"paused": paused, "name": name, "me": self.replica_id}
        self._queue.put_nowait(_Write(lambda conn: conn.execute(sql, params)))
        if not paused:
            self._recheck()  # its occurrences may be claimed again

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
