"""Connections, the one writer task, failure (unavailable/recovered) and synchronous reads."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import psycopg
import structlog
from psycopg.abc import Buffer
from psycopg.conninfo import make_conninfo
from psycopg.types.string import StrDumperUnknown

from runner.store import Replica
from runner.store.postgres.names import StoreRejected, StoreUnavailable, display_dsn
from runner.timing.clock import Clock

log = structlog.get_logger("runner.store")

READ_TIMEOUT_S = 2.0


# Errors of the statement itself; connection problems are OperationalError/InterfaceError.
_REJECTED = (
    psycopg.DataError,
    psycopg.IntegrityError,
    psycopg.ProgrammingError,
    psycopg.NotSupportedError,
)


class _NulSafeStr(StrDumperUnknown):
    """Text columns refuse NUL (issue 18, bug 3): every string sent replaces it by U+FFFD."""

    def dump(self, obj: str) -> Buffer | None:
        return super().dump(obj.replace("\x00", "\ufffd"))


@dataclass
class Lease:
    """An occurrence this replica holds: its fencing token and until when it may start it."""

    fencing: int
    valid_until: float  # local monotonic seconds; the database's lease ends later


@dataclass
class _Write:
    """One queued write. `plain`: a coroutine over a connection, in its own transaction;
    the other kinds (`job`, `plan`, `update`, `finish`) are rows the writer batches, and
    `poke` only wakes it (runner.store.postgres.writer)."""

    run: Callable[[psycopg.AsyncConnection[Any]], Awaitable[Any]] | None = None
    done: asyncio.Future[Any] | None = None
    kind: str = "plain"
    row: tuple[Any, ...] = ()


class _Connections:
    """The connections of a `PostgresStore`, its writer task, and how it goes down and up."""

    dsn: str
    clock: Clock
    replica_id: str
    lease_s: float
    timeout_s: float
    held: dict[tuple[str, int], Lease]
    replica: Replica | None
    available: bool
    down_since: float | None
    down_reason: str
    _queue: asyncio.Queue[_Write]
    _conns: dict[str, psycopg.AsyncConnection[Any]]
    _reader: psycopg.Connection[Any] | None
    _abandoned: set[asyncio.Future[Any]]
    _stale: set[str]  # connections to replace before their next use (after an outage)

    # ---- connections and failure -----------------------------------------------------------------

    async def _conn(self, name: str) -> psycopg.AsyncConnection[Any]:
        if name in self._stale:
            self._stale.discard(name)
            await self._drop(name)
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
            conn.adapters.register_dumper(str, _NulSafeStr)
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
        except _REJECTED as exc:
            self._up(name)  # it answered: the database is there, the statement is wrong
            raise StoreRejected(f"{type(exc).__name__}: {str(exc).strip()[:200]}") from exc
        except psycopg.errors.TransactionRollback as exc:
            # A deadlock or serialization failure: the database is there and rolled the
            # statement back; the caller retries it, nothing is down.
            raise StoreUnavailable(type(exc).__name__) from exc
        except (psycopg.Error, OSError) as exc:
            await self._drop(name)
            self._down(f"{type(exc).__name__}: {str(exc).strip()[:200]}")
            raise StoreUnavailable(type(exc).__name__) from exc
        self._up(name)
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

    def _up(self, name: str) -> None:
        if self.available:
            return
        away = self.clock.monotonic() - (self.down_since or 0.0)
        self.available, self.down_since = True, None
        # The others' connections outlived the outage and may not have survived it: each
        # is replaced when its (only) user next takes it, never under a call in flight.
        self._stale = {other for other in self._conns if other not in (name, "listener")}
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

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
