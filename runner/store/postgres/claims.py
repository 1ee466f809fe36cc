"""Claims, leases, fencing tokens and takeover: what a replica holds and how it keeps it."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
from datetime import UTC, datetime
from typing import Any

import psycopg
import structlog

from runner import __version__
from runner.store import OPEN_STATES, Occurrence, Replica, SharedJob
from runner.store.postgres.batch_sql import CHANNEL, REPLACED_REASON
from runner.store.postgres.connection import Lease
from runner.store.postgres.leader import _Leadership
from runner.store.postgres.names import StoreUnavailable
from runner.store.postgres.schema import _OCC_COLUMNS, _OPEN, _SHARED_COLUMNS
from runner.store.postgres.writer import SPILL_S

log = structlog.get_logger("runner.store")

TAKEOVER_BATCH = 100
__all__ = ["HEARTBEAT", "TAKEOVER_BATCH", "Lease"]

# Who shares the database (`status --state`): written at start, renewed with the leases,
# stopped_at set by a clean stop. A replica not seen for a lease is presumed dead.
HEARTBEAT = """
    INSERT INTO replicas (id, host, pid, version, jobs, lease_s)
    VALUES (%(me)s, %(host)s, %(pid)s, %(version)s, %(jobs)s, %(lease)s)
    ON CONFLICT (id) DO UPDATE SET host = excluded.host, pid = excluded.pid,
        version = excluded.version, jobs = excluded.jobs, lease_s = excluded.lease_s,
        seen_at = now(), stopped_at = NULL,
        started_at = CASE WHEN %(fresh)s THEN now() ELSE replicas.started_at END
    WHERE %(fresh)s OR replicas.stopped_at IS NULL  -- a renewal still in flight at a stop
"""

_TAKEOVER = f"""
    UPDATE occurrences SET owner = %s, fencing = nextval('fencing'),
        lease_until = now() + make_interval(secs => %s)
    WHERE (job, scheduled_ms) IN (
        SELECT job, scheduled_ms FROM occurrences
        WHERE {_OPEN} AND owner <> '' AND (lease_until < now() OR owner = %s)
            AND job = ANY(%s)
        ORDER BY scheduled_ms LIMIT {TAKEOVER_BATCH} FOR UPDATE SKIP LOCKED)
    RETURNING {", ".join(_OCC_COLUMNS)}, fencing
"""


# A halted occurrence whose owner is gone is not run again by whoever takes it over: it
# is recorded cancelled at once (a newer occurrence of its `replace` job replaced it).
_CANCEL_HALTED = f"""
    UPDATE occurrences SET state = 'cancelled', reason = %s, owner = %s,
        fencing = nextval('fencing'), lease_until = NULL,
        finished_ms = (extract(epoch FROM now()) * 1000)::bigint
    WHERE {_OPEN} AND halt IS NOT NULL AND owner <> '' AND (lease_until < now() OR owner = %s)
        AND job = ANY(%s)
"""


class _Claims(_Leadership):
    """The claims and leases of a `PostgresStore`: its writes about occurrences, its keeper."""

    margin_s: float
    _claims: dict[tuple[str, int], asyncio.Future[bool]]
    _changed: int
    _expired: set[tuple[str, int]]
    _news: asyncio.Event  # another replica paused or resumed a job: read the jobs now
    _halts_told: bool  # another replica halted occurrences, maybe ours: read them now
    _elect_told: bool  # the leader stepped down: elect now

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

    def skipped_here(self, occurrence: Occurrence) -> str | None:
        return self._skips.pop((occurrence.job, occurrence.scheduled_ms), None)

    def may_start(self, occurrence: Occurrence) -> bool:
        lease = self.held.get((occurrence.job, occurrence.scheduled_ms))
        if lease is None or not self.available:
            return False
        return self.clock.monotonic() < lease.valid_until - self.margin_s

    def released(self, occurrence: Occurrence) -> None:
        key = (occurrence.job, occurrence.scheduled_ms)
        self._claims.pop(key, None)
        self._waiting.pop(key, None)
        if occurrence.state in OPEN_STATES:
            self.held.pop(key, None)  # left open: its lease lapses and a replica takes it
        # A final one stays held until its finish is written (renewed meanwhile).

    # ---- the lease keeper ---------------------------------------------------------------------

    async def _keep_forever(self) -> None:
        """Every lease/3: renew our leases, take over expired ones, read others' changes,
        and look for unowned occurrences (should a notification have been missed)."""
        while True:
            with contextlib.suppress(StoreUnavailable):
                async with self._rows:
                    await self._db("keeper", self._renew)
                known = self.replica.known_jobs() if self.replica is not None else set()
                taken = await self._db("keeper", functools.partial(self._take_over, known=known))
                await self._read_news()
                taken = self._to_waiting_runs(taken)
                if taken and self.replica is not None:
                    self.replica.adopt(taken)
                self._recheck()
                await self._db("keeper", self._elect)
            self._expire()
            await self.clock.sleep(min(self._keeper_sleep(), self._leader_wait))

    async def _read_news(self, conn_name: str = "keeper") -> None:
        shared = await self._db(conn_name, self._read_shared)
        if shared and self.replica is not None:
            self.replica.shared(shared)

    async def _news_forever(self) -> None:
        """Pause and resume on another replica reach this one as soon as it says so, and
        so does a halt of a run held here (a `replace` job's newer occurrence)."""
        while True:
            await self._news.wait()
            self._news.clear()
            halts, self._halts_told = self._halts_told, False
            elect, self._elect_told = self._elect_told, False
            with contextlib.suppress(StoreUnavailable):
                if halts:
                    await self._db("news", self._read_halts)
                if elect:  # the leader stepped down: one of us takes over now
                    await self._db("news", self._elect)
                await self._read_news("news")  # its own connection: the keeper may be busy
            self._recheck()  # a resumed job's occurrences may be claimed now

    async def _read_halts(self, conn: psycopg.AsyncConnection[Any]) -> None:
        cursor = await conn.execute(
            f"SELECT job, scheduled_ms, fencing, halt FROM occurrences "
            f"WHERE owner = %s AND halt IS NOT NULL AND {_OPEN}",
            (self.replica_id,),
        )
        for job, scheduled_ms, fencing, reason in await cursor.fetchall():
            lease = self.held.get((job, scheduled_ms))
            if lease is not None and lease.fencing == fencing:
                self._halt((job, scheduled_ms), reason)

    def _halt(self, key: tuple[str, int], reason: str) -> None:
        if self.replica is not None:
            self.replica.halt(key[0], key[1], reason)

    async def _listen_forever(self) -> None:
        """LISTEN on its own connection: `claim <replica>` (unowned occurrences were
        planned) and `jobs <replica>` (a pause or resume). Losing it only delays: the
        keeper looks every lease/3 regardless."""
        while True:
            with contextlib.suppress(psycopg.Error, OSError):
                conn = await self._connect_listener()
                async with conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self._news.set()  # what was missed while not listening
                    async for notice in conn.notifies():
                        self._notice(notice.payload)
            await self.clock.sleep(1.0)

    async def _connect_listener(self) -> psycopg.AsyncConnection[Any]:
        connecting = asyncio.ensure_future(
            psycopg.AsyncConnection.connect(
                self.dsn, autocommit=True, connect_timeout=max(1, round(self.timeout_s))
            )
        )
        try:
            conn = await asyncio.shield(connecting)
        except asyncio.CancelledError:  # stopped while connecting: close what comes
            connecting.add_done_callback(self._abandon_listener)
            raise
        self._conns["listener"] = conn  # closed by `aclose`, which cancels this task
        return conn

    def _abandon_listener(self, connecting: asyncio.Future[psycopg.AsyncConnection[Any]]) -> None:
        if not connecting.cancelled() and connecting.exception() is None:
            closing = asyncio.ensure_future(connecting.result().close())
            self._abandoned.add(closing)
            closing.add_done_callback(self._abandoned.discard)

    def _notice(self, payload: str) -> None:
        what, _, sender = payload.partition(" ")
        if sender == self.replica_id:
            return
        if what == "claim":
            # The replica that planned them claims first what it has room for; the
            # rest spills over to the others a moment later.
            asyncio.get_running_loop().call_later(SPILL_S * 1.5, self._recheck)
        elif what == "jobs":
            self._news.set()
        elif what == "halt":
            self._halts_told = True
            self._news.set()
        elif what == "leader":
            self._elect_told = True
            self._news.set()

    def _keeper_sleep(self) -> float:
        if self.available:
            return self.lease_s / 3
        return min(1.0, self.lease_s / 6)  # reconnect soon; check expiries often

    async def _renew(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Renew our leases (a halt asked meanwhile comes back with them) and say we live."""
        await conn.execute(HEARTBEAT, self._heartbeat(fresh=False))
        if not self.held:
            return
        sent = self.clock.monotonic()
        tokens = [lease.fencing for lease in self.held.values()]
        cursor = await conn.execute(
            "UPDATE occurrences SET lease_until = now() + make_interval(secs => %s) "
            "WHERE owner = %s AND fencing = ANY(%s) RETURNING fencing, halt",
            (self.lease_s, self.replica_id, tokens),
        )
        rows = await cursor.fetchall()
        renewed = {row[0] for row in rows}
        halts = {fencing: halt for fencing, halt in rows if halt}
        for key, lease in list(self.held.items()):
            if lease.fencing in renewed:
                lease.valid_until = sent + self.lease_s
                if lease.fencing in halts:  # its notification was missed
                    self._halt(key, halts[lease.fencing])
            elif lease.fencing in tokens:  # re-owned by another replica meanwhile
                self.held.pop(key, None)
                self._lost(key)

    def _heartbeat(self, *, fresh: bool) -> dict[str, Any]:
        jobs = len(self.replica.known_jobs()) if self.replica is not None else 0
        return {
            "me": self.replica_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "version": __version__,
            "jobs": jobs,
            "lease": self.lease_s,
            "fresh": fresh,
        }

    def _to_waiting_runs(self, taken: list[Occurrence]) -> list[Occurrence]:
        """Taken over while this replica's own run of it still waits for the verdict
        (it was busy, so it had not learnt the dead replica's claim): that run gets it.
        Returns the others, for `adopt`."""
        others = []
        for occ in taken:
            key = (occ.job, occ.scheduled_ms)
            if key not in self._waiting:
                others.append(occ)
                continue
            log.warning(
                "run.taken_over",
                job=occ.job,
                scheduled_at=datetime.fromtimestamp(occ.scheduled_ms / 1000, UTC).isoformat(),
                trigger=occ.trigger,
                attempts=occ.attempts,
                idempotency_key=occ.idempotency_key,
            )
            self._settle(key, True)
        return others

    async def _take_over(
        self, conn: psycopg.AsyncConnection[Any], *, known: set[str], mine: bool = False
    ) -> list[Occurrence]:
        if not known:
            return []
        sent = self.clock.monotonic()
        owner = self.replica_id if mine else ""
        jobs = sorted(known)
        await conn.execute(_CANCEL_HALTED, (REPLACED_REASON, self.replica_id, owner, jobs))
        params = (self.replica_id, self.lease_s, owner, jobs)
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
