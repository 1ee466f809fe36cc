"""The PostgreSQL state backend: several replicas share one database and claim each occurrence.
Owns the schema and migrations, connections and the writer, claims, leases and takeover.
May import runner.errors, runner.jobs, runner.timing and runner.store only.

What needs no driver (DSNs, the errors) is imported here; the rest, and psycopg with it,
on first use: a daemon on a SQLite file never loads the driver (issue 12, memory).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from runner.store.postgres.names import (
    SCHEMES,
    StoreRejected,
    StoreUnavailable,
    default_replica_id,
    display_dsn,
    is_dsn,
)

if TYPE_CHECKING:
    from runner.store.postgres.claims import TAKEOVER_BATCH, Lease
    from runner.store.postgres.connection import READ_TIMEOUT_S
    from runner.store.postgres.schema import MIGRATION_LOCK, MIGRATIONS, migrate
    from runner.store.postgres.store import PostgresStore

_LAZY = {
    "TAKEOVER_BATCH": "claims",
    "Lease": "claims",
    "READ_TIMEOUT_S": "connection",
    "MIGRATION_LOCK": "schema",
    "MIGRATIONS": "schema",
    "migrate": "schema",
    "PostgresStore": "store",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = [
    "MIGRATIONS",
    "MIGRATION_LOCK",
    "READ_TIMEOUT_S",
    "SCHEMES",
    "TAKEOVER_BATCH",
    "Lease",
    "PostgresStore",
    "StoreRejected",
    "StoreUnavailable",
    "default_replica_id",
    "display_dsn",
    "is_dsn",
    "migrate",
]
