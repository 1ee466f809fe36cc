"""The schema: versioned migrations, applied under an advisory lock, and the column lists."""

from __future__ import annotations

from dataclasses import fields
from operator import attrgetter
from typing import Any

import psycopg

from runner.store import JobRecord, Occurrence, SharedJob

MIGRATION_LOCK = 0x64756374  # pg_advisory_xact_lock key: replicas migrate one at a time

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
    # Issue 14: occurrences are planned unowned (owner '') and claimed by whichever
    # replica has room, oldest first; the one that planned it (`planner`) first, alone
    # until `lease_until`.
    """
    ALTER TABLE occurrences ADD COLUMN planner TEXT NOT NULL DEFAULT '';
    CREATE INDEX occurrences_unclaimed ON occurrences (scheduled_ms)
        WHERE owner = '' AND state = 'planned';
    """,
    # Issue 14: `halt` asks an occurrence's owner to stop its run (a newer occurrence of
    # a `concurrency: replace` job was planned, maybe by another replica); `replicas`
    # is who shares the database, renewed every lease/3 (`status --state`); `leaders`
    # holds the lease of the replica doing the cluster's chores (runner.store.postgres.leader).
    """
    ALTER TABLE occurrences ADD COLUMN halt TEXT;
    CREATE TABLE replicas (
        id TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        version TEXT NOT NULL,
        jobs INTEGER NOT NULL DEFAULT 0,
        started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        seen_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        lease_s DOUBLE PRECISION NOT NULL,
        stopped_at TIMESTAMPTZ
    );
    CREATE TABLE leaders (
        duty TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        term BIGINT NOT NULL,
        lease_until TIMESTAMPTZ NOT NULL
    );
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
