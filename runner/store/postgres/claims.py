"""Claims, leases, fencing tokens and takeover: what a replica holds and how it keeps it."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
import structlog

from runner.store import OPEN_STATES, Occurrence, Replica, SharedJob
from runner.store.postgres.connection import StoreUnavailable, _Connections
from runner.store.postgres.schema import _JOB_COLUMNS, _OCC_COLUMNS, _OPEN, _SHARED_COLUMNS

log = structlog.get_logger("runner.store")

TAKEOVER_BATCH = 100

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
# another first sighting, or `limit` is reached counting the scheduled runs still open
# (manual triggers are outside `limit`). On a
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
                SELECT count(*) FROM occurrences
                WHERE job = %(job)s AND {_OPEN} AND trigger <> 'manual'
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
            execution_count = execution_count + CASE WHEN %(counted)s THEN 1 ELSE 0 END,
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


@dataclass
class Lease:
    """An occurrence this replica holds: its fencing token and until when it may start it."""

    fencing: int
    valid_until: float  # local monotonic seconds; the database's lease ends later


class _Claims(_Connections):
    """The claims and leases of a `PostgresStore`: its writes about occurrences, its keeper."""

    margin_s: float
    _claims: dict[tuple[str, int], asyncio.Future[bool]]
    _changed: int
    _expired: set[tuple[str, int]]

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
            log.warning(
                "run.fenced",
                job=key[0],
                scheduled_at=datetime.fromtimestamp(key[1] / 1000, UTC).isoformat(),
                replica=self.replica_id,
            )
        self.held.pop(key, None)

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
