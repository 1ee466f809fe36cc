"""The emulator's HTTP side: call validation, the Starlette routes and fault responses."""

from __future__ import annotations

import asyncio
import hmac
import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from runner.ductape import wire
from runner.ductape.emulator_state import EmulatorConfig, EmulatorState, Fault, log
from runner.ductape.operations import find_spec

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
        return Response(self.state.calls_json(), media_type="application/json")

    async def count_calls(self, request: Request) -> Response:
        """Cheap to poll, unlike the whole list (benchmarks wait on it)."""
        return JSONResponse({"calls": len(self.state.calls), "keys": len(self.state.keys)})

    async def clear_calls(self, request: Request) -> Response:
        self.state.clear_calls()
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
        Route("/_emulator/calls/count", emu.count_calls, methods=["GET"]),
        Route("/_emulator/calls", emu.clear_calls, methods=["DELETE"]),
        Route("/_emulator/faults", emu.list_faults, methods=["GET"]),
        Route("/_emulator/faults", emu.add_fault, methods=["POST"]),
        Route("/_emulator/faults", emu.clear_faults, methods=["DELETE"]),
    ]
    app = Starlette(routes=routes)
    app.state.emulator = state
    return app
