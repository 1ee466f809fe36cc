"""The Ductape emulator: a local SDK proxy that validates, records and misbehaves on request.

Like stripe-mock, it speaks the real wire format (runner.ductape.wire) on a real socket:

    POST   /proxy/v1/sdk-proxy/execute   (also under /api) the SDK proxy
    GET    /_emulator/calls              every call received, oldest first
    GET    /_emulator/calls/count        {"calls": how many, "keys": distinct idempotency keys}
    DELETE /_emulator/calls              forget them
    GET    /_emulator/faults             faults still armed
    POST   /_emulator/faults             arm a fault for the next `count` matching calls
    DELETE /_emulator/faults             disarm all

A fault is JSON such as {"target": "actions.run" | "*", "count": 2, "status": 503},
{"code": "RATE_LIMITED"}, {"status": 429, "retry_after": 2}, {"delay_ms": 200},
{"hang": true} or {"reset": true}. A reset drops the TCP connection with an RST and no
response at all; ASGI has no message for that, so serve() runs uvicorn with an h11
protocol subclass that indexes open transports by peer address for the app to abort.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import socket
from collections.abc import Sequence
from typing import Any, Literal

import structlog
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from runner.ductape.emulator_app import Emulator, build_app, validate_call
from runner.ductape.emulator_state import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    DEMO_ACCESS_TOKEN,
    DEMO_PUBLIC_KEY,
    DEMO_USER_ID,
    DEMO_WORKSPACE_ID,
    HANG_S,
    ConnectionIndex,
    EmulatorConfig,
    EmulatorState,
    Fault,
    log,
)

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "DEMO_ACCESS_TOKEN",
    "DEMO_PUBLIC_KEY",
    "DEMO_USER_ID",
    "DEMO_WORKSPACE_ID",
    "HANG_S",
    "ConnectionIndex",
    "Emulator",
    "EmulatorConfig",
    "EmulatorState",
    "Fault",
    "build_app",
    "main",
    "make_server",
    "parse_args",
    "protocol_class",
    "run_emulator",
    "serve",
    "validate_call",
]


def protocol_class(index: ConnectionIndex) -> type[H11Protocol]:
    """uvicorn's h11 protocol, reporting each connection's transport to `index`."""

    class IndexedH11Protocol(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            index.add(self.client, transport)

        def connection_lost(self, exc: Exception | None) -> None:
            index.discard(self.client)
            super().connection_lost(exc)

    return IndexedH11Protocol


class _GuestServer(uvicorn.Server):
    """uvicorn without its signal handlers, for running inside the daemon's process."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


def make_server(config: EmulatorConfig, *, own_signals: bool = True) -> uvicorn.Server:
    """A uvicorn server for the emulator, with the connection index reset faults need.

    `own_signals=False` leaves SIGINT/SIGTERM to the host process (the daemon's demo).
    """
    state = EmulatorState(config)
    kwargs: dict[str, Any] = {} if config.uvicorn_logging else {"log_config": None}
    uv_config = uvicorn.Config(
        build_app(config, state),
        host=config.host,
        port=config.port,
        http=protocol_class(state.connections),
        lifespan="off",
        proxy_headers=False,  # the peer address is the key of the connection index
        access_log=config.access_log,
        server_header=False,
        timeout_graceful_shutdown=2,
        **kwargs,
    )
    return uvicorn.Server(uv_config) if own_signals else _GuestServer(uv_config)


async def serve(config: EmulatorConfig, sockets: list[socket.socket] | None = None) -> None:
    """Serve until SIGINT/SIGTERM (or `should_exit`), then shut down gracefully."""
    log.info("emulator.starting", host=config.host, port=config.port, workspace=config.workspace_id)
    await make_server(config).serve(sockets=sockets)


def run_emulator(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    workspace_id: str = DEMO_WORKSPACE_ID,
    user_id: str = DEMO_USER_ID,
    public_key: str = DEMO_PUBLIC_KEY,
    access_token: str = DEMO_ACCESS_TOKEN,
    *,
    access_log: bool = True,
) -> None:
    """Blocking entry point for `ductape-runner emulator`."""
    config = EmulatorConfig(
        host, port, workspace_id, user_id, public_key, access_token, access_log=access_log
    )
    asyncio.run(serve(config))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m runner.ductape.emulator", description=__doc__)
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--workspace-id", default=DEMO_WORKSPACE_ID)
    parser.add_argument("--user-id", default=DEMO_USER_ID)
    parser.add_argument("--public-key", default=DEMO_PUBLIC_KEY)
    parser.add_argument("--access-token", default=DEMO_ACCESS_TOKEN)
    parser.add_argument("--no-access-log", action="store_true")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> Literal[0]:
    args = parse_args(argv)
    level = logging.getLevelNamesMapping()[args.log_level.upper()]
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(level))
    run_emulator(
        args.host,
        args.port,
        args.workspace_id,
        args.user_id,
        args.public_key,
        args.access_token,
        access_log=not args.no_access_log,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
