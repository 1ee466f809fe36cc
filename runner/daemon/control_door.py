"""The control API's door: how many connections it holds, how long a client may dawdle.

uvicorn's h11 protocol accepts every connection and, until a request arrives, never
times one out: 1,100 idle connections took every file descriptor the daemon had and
its scheduled runs failed with `Too many open files` (issue 13, item 8). This protocol
closes a connection beyond `MAX_CONNECTIONS` at once, and one that has not sent a whole
request within `REQUEST_TIMEOUT_S` of opening (or of its previous response). The
daemon also takes its hard limit on open files as the soft one (runner.daemon.service). A request
that has arrived is never timed out here: the response may take what it takes, and a
stream (server-sent events) may last.
"""

from __future__ import annotations

import asyncio
import time
from typing import ClassVar

import h11
import structlog
from uvicorn.protocols.http.h11_impl import H11Protocol

log = structlog.get_logger("runner.control")

MAX_CONNECTIONS = 128
REQUEST_TIMEOUT_S = 10.0
_REFUSAL_LOG_EVERY_S = 10.0


class _Refusals:
    """Counts connections turned away and logs them at most once per interval."""

    def __init__(self) -> None:
        self.closed = {"too_many": 0, "request_timeout": 0}
        self._logged_at = -_REFUSAL_LOG_EVERY_S

    def note(self, reason: str) -> None:
        self.closed[reason] += 1
        now = time.monotonic()
        if now - self._logged_at >= _REFUSAL_LOG_EVERY_S:
            self._logged_at = now
            log.warning(
                "control.connections_closed",
                limit=MAX_CONNECTIONS,
                request_timeout_s=REQUEST_TIMEOUT_S,
                **{f"total_{key}": value for key, value in self.closed.items()},
            )


REFUSALS = _Refusals()


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a bounded number of connections and a request deadline.

    The bound is per kind of listener: a flood on the TCP port, open to every local
    user, does not lock the operators' unix socket (mode 0660) out.
    """

    _open: ClassVar[dict[int, set[GuardedH11Protocol]]] = {}
    _deadline: asyncio.TimerHandle | None = None
    _family = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        self._family = int(getattr(sock, "family", 0))
        door = self._open.setdefault(self._family, set())
        if len(door) >= MAX_CONNECTIONS:
            REFUSALS.note("too_many")
            transport.close()
            return
        door.add(self)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._open.get(self._family, set()).discard(self)
        self._disarm()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()  # the next request on this connection has its own deadline

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(REQUEST_TIMEOUT_S, self._request_overdue)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _request_overdue(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.conn.their_state in (h11.IDLE, h11.SEND_BODY):  # nothing, or half of it
            REFUSALS.note("request_timeout")
            self.transport.close()
