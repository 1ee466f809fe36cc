"""Read-only reads of the shared state for commands run outside the daemon (`next`, `plan`)."""

from __future__ import annotations

import psycopg
from psycopg.conninfo import make_conninfo

from runner.store import JobRecord
from runner.store.postgres.connection import StoreUnavailable, display_dsn
from runner.store.postgres.schema import _JOB_COLUMNS


def read_jobs(dsn: str, timeout_s: float = 5.0) -> dict[str, JobRecord]:
    """Every job's shared record, as the replicas wrote it; {} before any replica ran.

    A read-only transaction with a statement timeout: an operator's command never
    writes to, nor waits long on, the database the replicas share.
    """
    conninfo = make_conninfo(
        dsn,
        connect_timeout=max(1, round(timeout_s)),
        options=f"-c statement_timeout={int(timeout_s * 1000)} -c default_transaction_read_only=on",
    )
    try:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            exists = conn.execute("SELECT to_regclass('jobs') IS NOT NULL").fetchone()
            if not exists or not exists[0]:
                return {}
            rows = conn.execute(f"SELECT {', '.join(_JOB_COLUMNS)} FROM jobs").fetchall()
    except psycopg.Error as exc:
        reason = f"{display_dsn(dsn)}: {type(exc).__name__}: {str(exc).strip()[:200]}"
        raise StoreUnavailable(reason) from exc
    return {row[0]: JobRecord(*row) for row in rows}
