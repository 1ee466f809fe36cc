"""The Ductape emulator: a local SDK proxy that validates, records and misbehaves on request.

Like stripe-mock, it speaks the real wire format (runner.ductape.wire) on a real socket:

    POST   /proxy/v1/sdk-proxy/execute   (also under /api) the SDK proxy
    GET    /_emulator/calls              every call received, oldest first
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
import hmac
import logging
import socket
import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import structlog
import uvicorn
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from runner.ductape import wire
from runner.ductape.operations import find_spec

DEMO_WORKSPACE_ID = "demo-workspace"
DEMO_USER_ID = "demo-user"
DEMO_PUBLIC_KEY = "demo-public-key"
DEMO_ACCESS_TOKEN = "demo-access-token"  # a demo value, not a secret: never use it for real
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4311
HANG_S = 3600.0  # "far past any timeout"; a hung call still ends when its client leaves

# Codes a status-only fault answers with, so the body looks like the proxy's own.
_CODE_FOR_STATUS = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    408: "TIMEOUT",
    413: "PAYLOAD_TOO_LARGE",
    429: "RATE_LIMITED",
    500: "INTERNAL_ERROR",
    502: "BAD_GATEWAY",
    503: "SERVICE_UNAVAILABLE",
    504: "TIMEOUT",
}

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class EmulatorConfig:
    """Who the emulator accepts and where it listens."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    workspace_id: str = DEMO_WORKSPACE_ID
    user_id: str = DEMO_USER_ID
    public_key: str = DEMO_PUBLIC_KEY
    access_token: str = DEMO_ACCESS_TOKEN
    hang_s: float = HANG_S
    access_log: bool = True
    uvicorn_logging: bool = True  # False leaves logging configuration to the host process


class Fault(BaseModel):
    """One armed misbehaviour; `count` is how many more matching calls it applies to."""

    model_config = ConfigDict(extra="forbid")

    target: str = "*"
    count: int = Field(default=1, ge=1)
    status: int | None = Field(default=None, ge=200, le=599)
    code: str | None = None
    message: str = "injected fault"
    retry_after: float | str | None = None
    delay_ms: int = Field(default=0, ge=0)
    hang: bool = False
    reset: bool = False
    raw: bool = False  # answer a plain-text body, as a gateway in front of the proxy would

    @property
    def delay_only(self) -> bool:
        """A pure delay: the call is answered normally afterwards."""
        return not (self.reset or self.hang or self.status or self.code)

    def matches(self, operation: str) -> bool:
        return self.target in ("*", operation)

    def describe(self) -> str:
        if self.reset:
            return "fault:reset"
        if self.hang:
            return "fault:hang"
        parts = [f"status={self.status}"] if self.status else []
        parts += [f"code={self.code}"] if self.code else []
        parts += [f"delay_ms={self.delay_ms}"] if self.delay_ms else []
        return "fault:" + ",".join(parts)


class ConnectionIndex:
    """Open transports by peer (host, port), so a reset fault can abort the caller's socket."""

    def __init__(self) -> None:
        self._by_peer: dict[tuple[str, int], asyncio.Transport] = {}

    def add(self, peer: tuple[str, int] | None, transport: asyncio.Transport) -> None:
        if peer is not None:
            self._by_peer[peer] = transport

    def discard(self, peer: tuple[str, int] | None) -> None:
        if peer is not None:
            self._by_peer.pop(peer, None)

    def reset(self, peer: tuple[str, int] | None) -> bool:
        """Abort with SO_LINGER 0 so the kernel sends RST; False if the peer is unknown."""
        transport = self._by_peer.get(peer) if peer is not None else None
        if transport is None:
            return False
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
        return True


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


class EmulatorState:
    """Recorded calls, armed faults and open connections; lives on one event loop."""

    def __init__(self, config: EmulatorConfig, connections: ConnectionIndex | None = None) -> None:
        self.config = config
        self.connections = connections or ConnectionIndex()
        self.calls: list[dict[str, Any]] = []
        self.faults: list[Fault] = []

    def take_fault(self, operation: str) -> Fault | None:
        """The first armed fault matching `operation`, counting this use."""
        for fault in self.faults:
            if fault.matches(operation):
                fault.count -= 1
                if fault.count == 0:
                    self.faults.remove(fault)
                return fault
        return None

    def record(self, call: dict[str, Any], outcome: str) -> None:
        self.calls.append({**call, "outcome": outcome})
        log.info(
            "emulator.call",
            module=call.get("module"),
            method=call.get("method"),
            idempotency_key=call.get("idempotency_key"),
            outcome=outcome,
        )


def validate_call(module: str, method: str, params: Any) -> str | None:
    """What is wrong with a decrypted call, mirroring the operations table; None if fine."""
    spec = find_spec(module, method)
    if spec is None:
        return f"unknown operation {module}.{method}"
    if not isinstance(params, list) or len(params) != 1 or not isinstance(params[0], dict):
        return "params must be a one-element list holding an object"
    obj: dict[str, Any] = params[0]
    missing = [f for f in ("product", "env", *spec.required) if f not in obj]
    if missing:
        return f"{module}.{method}: missing field(s) {', '.join(missing)}"
    return _check_fields(module, obj)


def _check_fields(module: str, obj: dict[str, Any]) -> str | None:
    for name in ("product", "env"):
        if not isinstance(obj[name], str) or not obj[name]:
            return f"{name} must be a non-empty string"
    session = obj.get("session")
    if session is not None and not (
        isinstance(session, dict) and {"tag", "token"} <= set(session) and len(session) == 2
    ):
        return "session must be an object {tag, token}"
    if "cache" in obj and not isinstance(obj["cache"], str):
        return "cache must be a string"
    for name in ("input", "message"):
        if name in obj and not isinstance(obj[name], dict):
            return f"{name} must be an object"
    if module == "messageBrokers":
        broker, sep, topic = str(obj["event"]).partition(":")
        if not (broker and sep and topic):
            return "event must be 'broker:topic'"
    return None


def _failure(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(wire.failure_body(code, message), status_code=status)


class Emulator:
    """The HTTP endpoints, over one EmulatorState."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state
        self.config = state.config

    async def execute(self, request: Request) -> Response:
        call: dict[str, Any] = {
            "module": None,
            "method": None,
            "params": None,
            "idempotency_key": request.headers.get(wire.IDEMPOTENCY_HEADER),
            "received_at": datetime.now(UTC).isoformat(),
        }
        raw = await request.body()
        refusal = self._authenticate(request, raw, call)
        if refusal is not None:
            return refusal
        return await self._run(request, call)

    def _authenticate(self, request: Request, raw: bytes, call: dict[str, Any]) -> Response | None:
        """Check token, body and identity, and decrypt into `call`; a Response means refused."""
        token = request.headers.get(wire.ACCESS_TOKEN_HEADER, "").encode()
        if not hmac.compare_digest(token, self.config.access_token.encode()):
            return self._refuse(call, 401, "UNAUTHORIZED", "invalid or missing x-access-token")
        try:
            body = wire.decode_body(raw, request.headers.get("content-encoding"))
        except wire.WireError as exc:
            return self._refuse(call, 400, "VALIDATION_ERROR", str(exc))
        identity = self._check_identity(body)
        if identity is not None:
            return self._refuse(call, *identity)
        try:
            payload = wire.decrypt_payload(
                str(body.get("encrypted_payload", "")), self.config.public_key
            )
        except wire.WireError as exc:
            return self._refuse(call, 400, "VALIDATION_ERROR", str(exc))
        if payload.get("user_id") != self.config.user_id:
            return self._refuse(call, 403, "FORBIDDEN", "payload user_id does not match")
        params = payload.get("params")
        call.update(module=payload.get("module"), method=payload.get("method"), params=params)
        if call["idempotency_key"] is None and isinstance(params, list) and params:
            first = params[0]
            call["idempotency_key"] = (
                first.get("idempotency_key") if isinstance(first, dict) else None
            )
        return None

    def _check_identity(self, body: dict[str, Any]) -> tuple[int, str, str] | None:
        if body.get("public_key") != self.config.public_key:
            return 401, "UNAUTHORIZED", "unknown public_key"
        if body.get("workspace_id") != self.config.workspace_id:
            return 403, "FORBIDDEN", "access token does not belong to this workspace_id"
        if body.get("user_id") != self.config.user_id:
            return 403, "FORBIDDEN", "user_id is not a member of this workspace"
        return None

    def _refuse(self, call: dict[str, Any], status: int, code: str, message: str) -> Response:
        self.state.record(call, f"rejected:{code}")
        return _failure(status, code, message)

    async def _run(self, request: Request, call: dict[str, Any]) -> Response:
        operation = f"{call['module']}.{call['method']}"
        fault = self.state.take_fault(operation)
        if fault is not None and not fault.delay_only:
            self.state.record(call, fault.describe())
            return await self._apply(fault, request)
        if fault is not None:
            await asyncio.sleep(fault.delay_ms / 1000)
        problem = validate_call(str(call["module"]), str(call["method"]), call["params"])
        if problem is not None:
            return self._refuse(call, 400, "VALIDATION_ERROR", problem)
        self.state.record(call, fault.describe() if fault is not None else "ok")
        data = {"ok": True, "echo": operation}
        body = wire.success_body(data, execution_time_ms=1, request_id=str(uuid.uuid4()))
        return JSONResponse(body)

    async def _apply(self, fault: Fault, request: Request) -> Response:
        """Misbehave instead of answering normally."""
        if fault.delay_ms:
            await asyncio.sleep(fault.delay_ms / 1000)
        if fault.reset:
            return await self._reset(request)
        if fault.hang:
            await _until_disconnected(request, self.config.hang_s)
            return _failure(504, "TIMEOUT", "emulator hang ended")
        return _fault_response(fault)

    async def _reset(self, request: Request) -> Response:
        peer = (request.client.host, request.client.port) if request.client else None
        if self.state.connections.reset(peer):
            # Wait for uvicorn to see the loss, so the response below is dropped silently.
            await _until_disconnected(request, 5.0)
            return Response(status_code=204)
        log.warning("emulator.reset_unsupported", reason="not served by emulator.serve()")
        return _failure(500, "CONNECTION_ERROR", "reset fault needs emulator.serve()")

    async def list_calls(self, request: Request) -> Response:
        return JSONResponse(self.state.calls)

    async def clear_calls(self, request: Request) -> Response:
        self.state.calls.clear()
        return Response(status_code=204)

    async def list_faults(self, request: Request) -> Response:
        return JSONResponse([fault.model_dump() for fault in self.state.faults])

    async def add_fault(self, request: Request) -> Response:
        try:
            fault = Fault.model_validate_json(await request.body())
        except ValidationError as exc:
            return _failure(400, "VALIDATION_ERROR", exc.errors()[0]["msg"])
        self.state.faults.append(fault)
        log.info(
            "emulator.fault_armed", target=fault.target, count=fault.count, fault=fault.describe()
        )
        return JSONResponse(fault.model_dump(), status_code=201)

    async def clear_faults(self, request: Request) -> Response:
        self.state.faults.clear()
        return Response(status_code=204)


def _fault_response(fault: Fault) -> Response:
    status = fault.status or 200
    code = fault.code or _CODE_FOR_STATUS.get(status, "INJECTED_FAULT")
    headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
    if fault.raw:
        return PlainTextResponse(f"{status} {fault.message}", status_code=status, headers=headers)
    return JSONResponse(wire.failure_body(code, fault.message), status_code=status, headers=headers)


async def _until_disconnected(request: Request, limit_s: float) -> None:
    """Wait until the client goes away (the body is already read), at most `limit_s`."""
    try:
        async with asyncio.timeout(limit_s):
            while (await request.receive())["type"] != "http.disconnect":
                pass
    except TimeoutError:
        pass


def build_app(config: EmulatorConfig, state: EmulatorState | None = None) -> Starlette:
    """The ASGI app; `app.state.emulator` is its EmulatorState."""
    state = state or EmulatorState(config)
    emu = Emulator(state)
    routes = [
        Route(wire.EXECUTE_PATH, emu.execute, methods=["POST"]),
        Route("/api" + wire.EXECUTE_PATH, emu.execute, methods=["POST"]),
        Route("/_emulator/calls", emu.list_calls, methods=["GET"]),
        Route("/_emulator/calls", emu.clear_calls, methods=["DELETE"]),
        Route("/_emulator/faults", emu.list_faults, methods=["GET"]),
        Route("/_emulator/faults", emu.add_fault, methods=["POST"]),
        Route("/_emulator/faults", emu.clear_faults, methods=["DELETE"]),
    ]
    app = Starlette(routes=routes)
    app.state.emulator = state
    return app


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
