"""What callers need without PostgreSQL: recognising a DSN, showing it without its
password, and the errors of an unavailable database.

No psycopg at import: a daemon on a SQLite file never loads the driver (issue 12: about
20 MiB of the resident memory of a daemon without jobs).
"""

from __future__ import annotations

import os
import socket
import uuid

from runner.errors import RunnerError

SCHEMES = ("postgresql://", "postgres://")


class StoreUnavailable(RunnerError):
    """The PostgreSQL state database does not answer (in time)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"state database unavailable: {reason}")


class StoreRejected(StoreUnavailable):
    """PostgreSQL refused a statement that would fail the same way again (bad data, a
    constraint): the database is there, so the writer drops the write instead of
    retrying it forever; other callers see it as a failed call, not an outage."""


def is_dsn(state: str) -> bool:
    return state.startswith(SCHEMES)


def display_dsn(dsn: str) -> str:
    """The DSN without its password, for logs and status.

    One libpq cannot parse keeps its scheme, user and host part, and loses the rest:
    parsing it again would raise an error that quotes it, password and all.
    """
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(dsn)
    except ProgrammingError:
        userinfo, at, where = dsn.partition("://")[2].rpartition("@")
        return f"postgresql://{userinfo.partition(':')[0]}{at}{where.partition('?')[0]}"
    params.pop("password", None)
    host, db = params.get("host", "localhost"), params.get("dbname", "")
    return f"postgresql://{params.get('user', '')}@{host}:{params.get('port', 5432)}/{db}"


def default_replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
