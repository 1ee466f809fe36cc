"""The writer: each tick applies every write queued meanwhile in a few batched statements,
then claims as many unowned occurrences as this replica has room for (issue 14).

A tick runs its steps in this order, each one statement over all its rows: plain
writes (pause, prune) one by one; plans (insert-if-absent, unowned); attempt updates;
final states with their jobs' counters; the claim (`DRAIN`, up to the room left:
`claim_limit` minus the leases held); job rows; and, when nothing more can be claimed,
the verdicts still awaited (`RESOLVE`). Per occurrence, that is the order its writes
are queued in. Job rows come last so that claimed runs start without waiting for
them (at a burst, as many rows as occurrences); a plan checked against the job row
before this tick's is what happened when each claim wrote its job row after itself,
and a job row queued before a finish of its job takes that finish's status and next
run, so the last one queued still wins.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
import structlog

from runner.store import Occurrence, SharedJob
from runner.store.postgres import batch_sql as sql
from runner.store.postgres.connection import Lease, _Connections, _Write
from runner.store.postgres.names import StoreRejected, StoreUnavailable, display_dsn
from runner.store.postgres.schema import _JOB_COLUMNS

log = structlog.get_logger("runner.store")

MAX_TICK = 5000  # writes taken from the queue per tick
PLAN_CHUNK = 250  # plans per statement
RETRY_RESOLVE_S = 0.1  # verdicts still open because another replica was claiming them
SPILL_S = 0.1  # how long the replica that planned an occurrence has it to itself
HOLD_S = 0.05  # an attempt's update waits at most this long for its outcome (one tick)

Key = tuple[str, int]
_STATUS, _NEXT = _JOB_COLUMNS.index("status"), _JOB_COLUMNS.index("next_fire_ms")


@dataclass
class _Verdict:
    """A claim this replica's scheduler waits for; `applied` once its plan is written."""

    done: asyncio.Future[bool]
    applied: bool = False


@dataclass
class _Tick:
    """One tick's writes, by kind; rows of one kind become one statement."""

    plain: list[_Write] = field(default_factory=list)
    jobs: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    plans: list[tuple[Any, ...]] = field(default_factory=list)
    updates: dict[Key, tuple[Any, ...]] = field(default_factory=dict)
    finishes: dict[Key, tuple[Any, ...]] = field(default_factory=dict)

    def add(self, write: _Write) -> None:
        if write.kind == "plain":
            self.plain.append(write)
        elif write.kind == "job":
            self.jobs[write.row[0]] = write.row  # the last one queued wins
        elif write.kind == "plan":
            self.plans.append(write.row)
        elif write.kind == "update":
            self.updates[write.row[0], write.row[1]] = write.row
        elif write.kind == "finish":
            self.updates.pop((write.row[0], write.row[1]), None)  # the final write says it all
            self.finishes[write.row[0], write.row[1]] = write.row
            job = self.jobs.get(write.row[0])
            if job is not None:  # queued before this finish, written after it: its
                status, next_fire = write.row[-2:]  # status and next run are older
                self.jobs[write.row[0]] = (*job[:_STATUS], status, *job[_STATUS + 1 :])
                job = self.jobs[write.row[0]]
                self.jobs[write.row[0]] = (*job[:_NEXT], next_fire, *job[_NEXT + 1 :])


class _Writer(_Connections):
    """The writer task of a `PostgresStore` and its claim of unowned occurrences."""

    claim_limit: int
    _waiting: dict[Key, _Verdict]
    _unclaimed: bool  # unowned occurrences may be there for us to claim
    _poked: bool
    _rows: asyncio.Lock  # our leased rows: the keeper's renewal never interleaves with writes
    _known: tuple[set[str], str]  # the job names last passed to DRAIN, and joined
    _skips: dict[Key, str]  # recorded skipped here (forbid) instead of claimed: why
    _held: dict[Key, tuple[Any, ...]]  # attempt updates held for one tick
    _hold_timer: bool

    async def _write_forever(self) -> None:
        while True:
            writes = [await self._queue.get()]
            while len(writes) < MAX_TICK and not self._queue.empty():
                writes.append(self._queue.get_nowait())
            try:
                await self._tick(writes)
            finally:
                for _ in writes:
                    self._queue.task_done()

    async def _tick(self, writes: list[_Write]) -> None:
        tick = _Tick()
        for write in writes:
            if write.kind == "poke":
                self._poked = False
            else:
                tick.add(write)
        for write in tick.plain:
            run = write.run
            assert run is not None
            result = await self._land(lambda conn, _, run=run: run(conn), [write])
            if write.done is not None and not write.done.done():
                write.done.set_result(bool(result))
        # A burst's plans in chunks, the oldest first, with a claim after the first: its
        # runs start while the rest is written (their job rows still come after all).
        plans = sorted(tick.plans, key=lambda row: (row[1], row[0]))
        for first in range(0, len(plans), PLAN_CHUNK):
            chunk = sorted(plans[first : first + PLAN_CHUNK], key=lambda row: (row[0], row[1]))
            await self._land(self._plan, chunk, self._refuse)
            if first == 0 and len(plans) > PLAN_CHUNK:
                await self._claim_room()
        updates = self._hold_updates(tick)
        if updates:
            await self._land(self._update, updates, rows_lock=True)
        if tick.finishes:
            finishes = list(tick.finishes.values())
            await self._land(self._finish, finishes, self._unhold, rows_lock=True)
        await self._claim_room()
        if tick.jobs:  # last: the runs claimed above need not wait for them
            await self._land(self._save_jobs, [tick.jobs[name] for name in sorted(tick.jobs)])
        await self._resolve_rest()

    def _hold_updates(self, tick: _Tick) -> list[tuple[Any, ...]]:
        """This tick's attempt updates wait for the next tick, and those of the last tick
        are written now, unless a later write about the same occurrence came meanwhile.

        No run waits for an attempt's update (`written` is None here), and most short
        calls finish within a tick or two: their final state then says it all, and the
        "running" row version is never written (measured: writing no attempt update at
        all took the database's CPU in a 2,000-occurrence burst from 0.88 to 0.70 s).
        Held ones are written within `HOLD_S` even when nothing else comes."""
        due, self._held = self._held, dict(tick.updates)
        for key in tick.updates.keys() | tick.finishes.keys():
            due.pop(key, None)
        if self._held and not self._hold_timer:
            self._hold_timer = True
            asyncio.get_running_loop().call_later(HOLD_S, self._release_held)
        return list(due.values())

    def _release_held(self) -> None:
        self._hold_timer = False
        if self._held:
            self._poke()

    def _poke(self) -> None:
        """Wake the writer for a claim even though nothing was queued."""
        if not self._poked:
            self._poked = True
            self._queue.put_nowait(_Write(kind="poke"))

    async def _land(
        self,
        step: Callable[..., Awaitable[Any]],
        rows: Sequence[Any],
        dropped: Callable[[Sequence[Any]], None] | None = None,
        *,
        rows_lock: bool = False,
    ) -> Any:
        """Run one step until it lands; a statement refused for its content is split to
        find the row at fault, which alone is dropped (never retried as an outage).
        `rows_lock`: it writes our leased rows, which the keeper's renewal also locks."""
        while True:
            try:
                if not rows_lock:
                    return await self._db("writer", lambda conn: _call(step, conn, rows))
                async with self._rows:  # held per attempt: the keeper never waits on retries
                    return await self._db("writer", lambda conn: _call(step, conn, rows))
            except StoreRejected as exc:
                if len(rows) > 1:
                    for row in rows:
                        await self._land(step, [row], dropped, rows_lock=rows_lock)
                    return None
                log.error(
                    "store.write_rejected",
                    state=display_dsn(self.dsn),
                    reason=exc.reason,
                    decision="dropped: the same write cannot succeed on retry",
                )
                if dropped is not None:
                    dropped(rows)
                return None
            except StoreUnavailable:
                await self.clock.sleep(min(1.0, self.lease_s / 6))

    # ---- the steps ------------------------------------------------------------------------

    async def _save_jobs(
        self, conn: psycopg.AsyncConnection[Any], rows: Sequence[tuple[Any, ...]]
    ) -> None:
        params = sql.arrays(_JOB_COLUMNS, "r", rows)
        cursor = await conn.execute(sql.SAVE_JOBS, params)
        anchors = {row[0]: row[_JOB_COLUMNS.index("anchor_ms")] for row in rows}
        moved = [SharedJob(*row) for row in await cursor.fetchall()]
        moved = [job for job in moved if job.anchor_ms != anchors.get(job.name)]
        if moved and self.replica is not None:
            self.replica.shared(moved)  # another replica saw these definitions first

    async def _plan(
        self, conn: psycopg.AsyncConnection[Any], rows: Sequence[tuple[Any, ...]]
    ) -> None:
        params = sql.arrays(sql.PLAN_COLUMNS, "c", rows)
        params |= {"me": self.replica_id, "spill": SPILL_S, "forbid_reason": sql.FORBID_REASON}
        params["replaced_reason"] = sql.REPLACED_REASON
        cursor = await conn.execute(sql.PLAN, params)
        for job, scheduled_ms, ok, skipped, _, _ in await cursor.fetchall():
            verdict = self._waiting.get((job, scheduled_ms))
            if verdict is None:
                continue  # a record (skip), or already claimed by this replica
            if skipped:  # we decided: forbid, with a run of the job open somewhere
                self._skips[job, scheduled_ms] = sql.FORBID_REASON
                self._settle((job, scheduled_ms), False)
            elif ok:
                verdict.applied = True
            else:
                self._settle((job, scheduled_ms), False)  # refused: paused, limit, phase
        self._unclaimed = True

    def _refuse(self, rows: Sequence[tuple[Any, ...]]) -> None:
        for row in rows:
            self._settle((row[0], row[1]), False)

    async def _update(
        self, conn: psycopg.AsyncConnection[Any], rows: Sequence[tuple[Any, ...]]
    ) -> None:
        params = sql.arrays(sql.UPDATE_COLUMNS, "u", rows) | {"me": self.replica_id}
        await conn.execute(sql.UPDATE, params)

    async def _finish(
        self, conn: psycopg.AsyncConnection[Any], rows: Sequence[tuple[Any, ...]]
    ) -> None:
        params = sql.arrays(sql.FINISH_COLUMNS, "f", rows) | {"me": self.replica_id}
        cursor = await conn.execute(sql.FINISH, params)
        landed = {(job, ms) for job, ms in await cursor.fetchall()}
        for row in rows:
            key = (row[0], row[1])
            if key not in landed:
                # Taken over (or already final): the other replica's result is the record.
                log.warning(
                    "run.fenced",
                    job=key[0],
                    scheduled_at=datetime.fromtimestamp(key[1] / 1000, UTC).isoformat(),
                    replica=self.replica_id,
                )
        self._unhold(rows)

    def _unhold(self, rows: Sequence[tuple[Any, ...]]) -> None:
        for row in rows:
            self.held.pop((row[0], row[1]), None)

    # ---- claiming what there is room for ------------------------------------------------------

    async def _claim_room(self) -> None:
        if self.replica is None or not self.available:
            return  # the keeper reconnects, then looks again (`_recheck`)
        room = self.claim_limit - len(self.held)
        if self._unclaimed and room > 0:
            known = self._known_names(self.replica.known_jobs())
            claimed = await self._land(lambda conn, _: self._drain(conn, known, room), [None])
            if claimed is not None and len(claimed) < room:
                self._unclaimed = False  # all there was: what we still wait for is elsewhere

    async def _resolve_rest(self) -> None:
        waiting = any(verdict.applied for verdict in self._waiting.values())
        if self.available and not self._unclaimed and waiting:
            await self._land(self._resolve, [None])

    def _known_names(self, known: set[str]) -> str:
        """The job names for `DRAIN`, joined once per change of the job set (profiled:
        encoding 2,000 names at every claim was a fifth of a replica's time in a burst)."""
        if known != self._known[0]:
            self._known = (known, " ".join(sorted(known)))
        return self._known[1]

    async def _drain(
        self, conn: psycopg.AsyncConnection[Any], known: str, room: int
    ) -> list[Occurrence]:
        sent = self.clock.monotonic()
        params = {"me": self.replica_id, "known": known, "demand": room, "lease": self.lease_s}
        # Planned afresh each time: with the names as a constant, PostgreSQL tests each
        # row against a hash of them; a prepared (generic) plan compares each row with
        # every name. Measured, 2,000 jobs, 64 claimed per statement: 3-4 ms against 11-14.
        cursor = await conn.execute(sql.DRAIN, params, prepare=False)
        claimed, others = [], []
        for row in await cursor.fetchall():
            occ = Occurrence(*row[:-1])
            key = (occ.job, occ.scheduled_ms)
            self.held[key] = Lease(row[-1], sent + self.lease_s)
            claimed.append(occ)
            if key in self._waiting:
                self._settle(key, True)
            else:
                others.append(occ)  # planned by another replica (a trigger, a lag)
        if others and self.replica is not None:
            self.replica.adopt(others, taken_over=False)
        return claimed

    async def _resolve(self, conn: psycopg.AsyncConnection[Any], _: object) -> None:
        keys = [key for key, verdict in self._waiting.items() if verdict.applied]
        cursor = await conn.execute(sql.RESOLVE, sql.arrays(["job", "scheduled_ms"], "k", keys))
        known = self.replica.known_jobs() if self.replica is not None else set()
        open_left = False
        for job, scheduled_ms, owner, parked in await cursor.fetchall():
            if owner == "" and job in known:
                # Being claimed by another replica right now (look again soon), or its
                # job is paused (resuming wakes every replica).
                open_left = open_left or not parked
            else:
                self._settle((job, scheduled_ms), False)  # another replica's, or gone
        if open_left:
            asyncio.get_running_loop().call_later(RETRY_RESOLVE_S, self._recheck)

    def _recheck(self) -> None:
        self._unclaimed = True
        self._poke()

    def _settle(self, key: Key, won: bool) -> None:
        verdict = self._waiting.pop(key, None)
        if verdict is not None and not verdict.done.done():
            verdict.done.set_result(won)


async def _call(
    step: Callable[..., Awaitable[Any]], conn: psycopg.AsyncConnection[Any], rows: Sequence[Any]
) -> Any:
    return await step(conn, rows)
