"""PostgreSQL for tests: a fresh database per test, and a TCP proxy a test can cut.

Tests that need PostgreSQL (127.0.0.1:5432, or RUNNER_TEST_POSTGRES_DSN) skip with the
reason when it does not answer, unless RUNNER_REQUIRE_POSTGRES=1 (CI), where they fail.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import uuid
from collections.abc import Iterator

import psycopg
import pytest

ADMIN_DSN = os.environ.get("RUNNER_TEST_POSTGRES_DSN", "postgresql://root@127.0.0.1:5432/postgres")
REQUIRED = os.environ.get("RUNNER_REQUIRE_POSTGRES") == "1"


def _unreachable() -> str | None:
    try:
        with psycopg.connect(ADMIN_DSN, connect_timeout=2):
            return None
    except psycopg.Error as exc:
        return f"PostgreSQL not reachable at {ADMIN_DSN}: {str(exc).strip()[:200]}"


def dsn_for(database: str, port: int | None = None) -> str:
    """A postgresql:// URL (the runner picks its backend by the scheme) for `database`."""
    params = psycopg.conninfo.conninfo_to_dict(ADMIN_DSN)
    host = "127.0.0.1" if port is not None else params.get("host", "127.0.0.1")
    port = port if port is not None else int(params.get("port", 5432))
    user = params.get("user", "root")
    password = f":{params['password']}" if params.get("password") else ""
    return f"postgresql://{user}{password}@{host}:{port}/{database}"


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A new, empty database for this test (dropped after); its name."""
    reason = _unreachable()
    if reason is not None:
        if REQUIRED:
            pytest.fail(f"RUNNER_REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(reason)
    name = f"runner_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_dsn(pg_database: str) -> str:
    return dsn_for(pg_database)


class CuttableProxy:
    """A TCP proxy on loopback in a thread; `cut()` black-holes it, `restore()` reopens it.

    Cut: bytes already in flight are dropped, existing connections stay open but silent
    (as a dead network looks), new connections are accepted and never answered.
    Restore: the silent connections are closed and new ones are forwarded again.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cut_off = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="pg-proxy", daemon=True)
        self._thread.start()

    def cut(self) -> None:
        self.cut_off.set()

    def restore(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()
        self.cut_off.clear()

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        self.restore()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                self._sockets.append(client)
            if self.cut_off.is_set():
                continue  # accepted, never answered
            try:
                upstream = socket.create_connection(self.target, timeout=2)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets.append(upstream)
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([a, b], [], [], 0.2)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if not self.cut_off.is_set():
                        peers[sock].sendall(data)
        except (OSError, ValueError):
            return
        finally:
            for sock in (a, b):
                with contextlib.suppress(OSError):
                    sock.close()


@pytest.fixture
def pg_proxy() -> Iterator[CuttableProxy]:
    params = psycopg.conninfo.conninfo_to_dict(ADMIN_DSN)
    proxy = CuttableProxy((str(params.get("host", "127.0.0.1")), int(params.get("port", 5432))))
    try:
        yield proxy
    finally:
        proxy.close()
