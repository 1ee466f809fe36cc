"""Read-only reads of the shared state for commands run outside the daemon (`next`, `plan`,
`status --state`, `history --state`)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import psycopg
from psycopg.conninfo import make_conninfo

from runner.store import JobRecord, Occurrence
from runner.store.postgres.names import StoreUnavailable, display_dsn
from runner.store.postgres.schema import _JOB_COLUMNS, _OCC_COLUMNS, _OPEN

ReplicaState = Literal["alive", "stopped", "lost"]

_QUOTED = re.compile(r'"[^"]*"')

# Database time decides, as it does for leases: a replica renews `seen_at` every lease/3.
# The leader is the holder of an unexpired `chores` lease (the same migration made both).
_REPLICAS = """
    SELECT id, host, pid, version, jobs, started_at, seen_at, lease_s, stopped_at,
        CASE WHEN stopped_at IS NOT NULL THEN 'stopped'
             WHEN seen_at >= now() - make_interval(secs => lease_s) THEN 'alive'
             ELSE 'lost' END,
        EXISTS (SELECT 1 FROM leaders l
                WHERE l.duty = 'chores' AND l.holder = id AND l.lease_until > now())
    FROM replicas ORDER BY id
"""
_SELECT_OCC_OWNED = f"SELECT {', '.join(_OCC_COLUMNS)}, owner FROM occurrences"


@dataclass(frozen=True, slots=True)
class ReplicaRow:
    """A replica as it last wrote itself into `replicas`, and what that makes it now."""

    id: str
    host: str
    pid: int
    version: str
    jobs: int
    started_at: datetime
    seen_at: datetime
    lease_s: float
    stopped_at: datetime | None
    state: ReplicaState
    leader: bool = False  # holds the leader's lease (runner.store.postgres.leader)


@dataclass(frozen=True, slots=True)
class Owned:
    """An occurrence and the replica holding it ('' while no replica has claimed it)."""

    occurrence: Occurrence
    owner: str


@dataclass(frozen=True, slots=True)
class Cluster:
    """The shared state in one snapshot: who shares it, the jobs, the open occurrences."""

    replicas: list[ReplicaRow]
    jobs: dict[str, JobRecord]
    open: list[Owned]


def read_jobs(dsn: str, timeout_s: float = 5.0) -> dict[str, JobRecord]:
    """Every job's shared record, as the replicas wrote it; {} before any replica ran."""
    with _snapshot(dsn, timeout_s) as conn:
        return _jobs(conn) if _exists(conn, "jobs") else {}


def read_cluster(dsn: str, timeout_s: float = 5.0) -> Cluster:
    """Replicas, jobs and open occurrences, as of one instant; empty before any replica
    ran, and no replicas from a schema older than version 3 (which does not list them)."""
    with _snapshot(dsn, timeout_s) as conn:
        if not _exists(conn, "jobs"):
            return Cluster([], {}, [])
        replicas = _replicas(conn) if _exists(conn, "replicas") else []
        return Cluster(replicas, _jobs(conn), _open(conn))


def read_history(dsn: str, job: str, limit: int, timeout_s: float = 5.0) -> list[Owned] | None:
    """The job's newest occurrences, newest first, with their owners; None if no such job."""
    with _snapshot(dsn, timeout_s) as conn:
        if not _exists(conn, "jobs") or not _jobs(conn, job):
            return None
        sql = f"{_SELECT_OCC_OWNED} WHERE job = %s ORDER BY scheduled_ms DESC LIMIT %s"
        return [_owned(row) for row in conn.execute(sql, (job, limit))]


@contextmanager
def _snapshot(dsn: str, timeout_s: float) -> Iterator[psycopg.Connection[Any]]:
    """One read-only, repeatable-read transaction with a statement timeout: an operator's
    command never writes to, nor waits long on, the database the replicas share, and
    its reads agree with each other. Any failure is a StoreUnavailable naming the DSN
    without its password."""
    conninfo = _conninfo(dsn, timeout_s)
    try:
        with psycopg.connect(conninfo) as conn:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            yield conn
    except psycopg.Error as exc:
        said = " ".join(str(exc).split())[:200]  # libpq's hint comes on a line of its own
        reason = f"{display_dsn(dsn)}: {type(exc).__name__}: {said}"
        raise StoreUnavailable(reason) from exc


def _conninfo(dsn: str, timeout_s: float) -> str:
    try:
        return make_conninfo(
            dsn,
            connect_timeout=max(1, round(timeout_s)),
            options=(
                f"-c statement_timeout={int(timeout_s * 1000)} -c default_transaction_read_only=on"
            ),
        )
    except psycopg.ProgrammingError as exc:
        # libpq quotes what it cannot parse, and that may be the password: not shown.
        reason = _QUOTED.sub('"..."', str(exc).strip())[:200]
        raise StoreUnavailable(f"{display_dsn(dsn)}: not a valid DSN: {reason}") from exc


def _exists(conn: psycopg.Connection[Any], table: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
    return bool(row and row[0])


def _replicas(conn: psycopg.Connection[Any]) -> list[ReplicaRow]:
    return [ReplicaRow(*row) for row in conn.execute(_REPLICAS)]


def _jobs(conn: psycopg.Connection[Any], name: str | None = None) -> dict[str, JobRecord]:
    sql = f"SELECT {', '.join(_JOB_COLUMNS)} FROM jobs"
    rows = conn.execute(sql) if name is None else conn.execute(f"{sql} WHERE name = %s", (name,))
    return {row[0]: JobRecord(*row) for row in rows}


def _open(conn: psycopg.Connection[Any]) -> list[Owned]:
    sql = f"{_SELECT_OCC_OWNED} WHERE {_OPEN} ORDER BY job, scheduled_ms"
    return [_owned(row) for row in conn.execute(sql)]


def _owned(row: tuple[Any, ...]) -> Owned:
    return Owned(Occurrence(*row[:-1]), row[-1])
