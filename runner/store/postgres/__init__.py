"""The PostgreSQL state backend: several replicas share one database and claim each occurrence.
Owns the schema and migrations, connections and the writer, claims, leases and takeover.
May import runner.errors, runner.jobs, runner.timing and runner.store only.
"""

from runner.store.postgres.claims import TAKEOVER_BATCH, Lease
from runner.store.postgres.connection import (
    READ_TIMEOUT_S,
    SCHEMES,
    StoreRejected,
    StoreUnavailable,
    default_replica_id,
    display_dsn,
    is_dsn,
)
from runner.store.postgres.schema import MIGRATION_LOCK, MIGRATIONS, migrate
from runner.store.postgres.store import PostgresStore

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
