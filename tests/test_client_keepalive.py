"""Stale keep-alive connections, for real on loopback: a tiny HTTP/1.1 server that drops
connections the way a server's idle timeout does, right when the client reuses them.

The race behind `ConnectionResetError` on a job that runs every 5 s: client and server both
expire idle connections after 5 s, the server closes one just as the client sends on it.
DuctapeClient expires idle connections first (KEEPALIVE_EXPIRY_S) and, when a request
on a reused connection dies before any response byte, sends it once more on a new one.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from pydantic import SecretStr

from runner.ductape.client import KEEPALIVE_EXPIRY_S, Credentials, DuctapeClient, RetryableError
from runner.ductape.operations import Operation

OP = Operation("actions", "run", [{"product": "p", "env": "e", "app": "a", "action": "x"}])
BODY = b'{"status":true,"data":{"data":{"ok":true},"execution_time_ms":1,"request_id":"r"}}'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    + f"Content-Length: {len(BODY)}\r\n\r\n".encode()
    + BODY
)


@dataclass
class DroppingServer:
    """Answers requests; `drop(conn, n, total)` says whether to drop request n (1-based) of
    connection conn, the total-th the server received. `how`: "fin" closes after reading
    the request (the client reads EOF), "rst" aborts with SO_LINGER 0 (a reset).
    `idle_close_s` closes connections idle that long, as uvicorn's keep-alive timeout does.
    """

    how: str = "fin"
    drop_after_first_on_a_connection: bool = True
    drop_everything_after: int | None = None
    idle_close_s: float | None = None
    log: list[tuple[int, int, str]] = field(default_factory=list)  # (conn, n, outcome)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def drops(self, n: int) -> bool:
        total = len(self.log) + 1
        if self.drop_everything_after is not None and total > self.drop_everything_after:
            return True
        return self.drop_after_first_on_a_connection and n > 1

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = next(self._ids)
        try:
            for n in itertools.count(1):
                try:
                    async with asyncio.timeout(self.idle_close_s):
                        head = await reader.readuntil(b"\r\n\r\n")
                except (TimeoutError, asyncio.IncompleteReadError):
                    return  # idle close or the client left: FIN
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                if self.drops(n):
                    self.log.append((conn, n, f"dropped:{self.how}"))
                    if self.how == "rst":
                        sock = writer.get_extra_info("socket")
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                        writer.transport.abort()
                    return
                self.log.append((conn, n, "ok"))
                writer.write(RESPONSE)
                await writer.drain()
        except ConnectionError:
            return
        finally:
            writer.close()

    def connections(self) -> set[int]:
        return {conn for conn, _, _ in self.log}


async def serve(server: DroppingServer) -> AsyncIterator[Credentials]:
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        yield Credentials(
            base_url=f"http://127.0.0.1:{port}",
            workspace_id="w",
            user_id="u",
            public_key="k",
            access_token=SecretStr("test-access-token"),
        )
    finally:
        listener.close()
        await listener.wait_closed()


@pytest.fixture
def server() -> DroppingServer:
    return DroppingServer()


@pytest.fixture
async def creds(server: DroppingServer) -> AsyncIterator[Credentials]:
    async for found in serve(server):
        yield found


async def call(client: DuctapeClient, key: str) -> object:
    return (await client.execute(OP, idempotency_key=key, timeout_s=5)).data


@pytest.mark.parametrize("how", ["fin", "rst"])
async def test_a_request_on_a_connection_the_server_just_closed_is_resent_once(
    server: DroppingServer, creds: Credentials, how: str
) -> None:
    server.how = how
    async with DuctapeClient(creds, max_connections=1) as client:
        assert await call(client, "k1") == {"ok": True}
        # The pooled connection is reused, the server drops it: resent on a new one.
        assert await call(client, "k2") == {"ok": True}
        assert await call(client, "k3") == {"ok": True}
    assert server.log == [
        (1, 1, "ok"),
        (1, 2, f"dropped:{how}"),
        (2, 1, "ok"),
        (2, 2, f"dropped:{how}"),
        (3, 1, "ok"),
    ]


@pytest.mark.parametrize("how", ["fin", "rst"])
async def test_the_resend_happens_once_and_its_failure_is_retryable(
    server: DroppingServer, creds: Credentials, how: str
) -> None:
    server.how, server.drop_everything_after = how, 1
    async with DuctapeClient(creds, max_connections=1) as client:
        await call(client, "k1")
        with pytest.raises(RetryableError, match="connection failed"):
            await call(client, "k2")
    assert server.log == [(1, 1, "ok"), (1, 2, f"dropped:{how}"), (2, 1, f"dropped:{how}")]


@pytest.mark.parametrize("how", ["fin", "rst"])
async def test_a_failure_on_a_new_connection_is_not_resent(
    server: DroppingServer, creds: Credentials, how: str
) -> None:
    server.how, server.drop_everything_after = how, 0
    async with DuctapeClient(creds, max_connections=1) as client:
        with pytest.raises(RetryableError, match="connection failed"):
            await call(client, "k1")
    assert server.log == [(1, 1, f"dropped:{how}")]


async def test_idle_connections_expire_before_the_server_closes_them(
    server: DroppingServer, creds: Credentials
) -> None:
    server.drop_after_first_on_a_connection = False
    server.idle_close_s = 0.8
    async with DuctapeClient(creds, max_connections=1, keepalive_expiry_s=0.3) as client:
        await call(client, "k1")
        await call(client, "k2")  # at once: the same connection
        await asyncio.sleep(0.5)  # past the client's expiry, before the server's
        await call(client, "k3")  # a new connection
    assert server.log == [(1, 1, "ok"), (1, 2, "ok"), (2, 1, "ok")]


def test_the_default_expiry_is_below_the_usual_server_idle_timeout() -> None:
    # uvicorn's timeout_keep_alive and Node's keepAliveTimeout are both 5 s.
    assert KEEPALIVE_EXPIRY_S < 5.0
