"""The Ductape HTTP client: one pooled connection set, one call per operation, typed failures.

The transport is aiohttp, used directly: bench/transport.py measures it against httpx's
pool and httpx over httpx-aiohttp's transport (see the README's Benchmarks section).

Failures are classified into this tree (every class builds its message from typed fields):

    RunnerError                      (runner.errors)
    └── DuctapeError                 a call to Ductape failed
        ├── RetryableError           worth another attempt; carries retry_after_s
        │     connect errors, timeouts, connection resets and other transport errors;
        │     HTTP 408, 425, 429, 500, 502, 503, 504;
        │     proxy codes meaning timeout, rate limit, unavailable or connection error
        └── PermanentError           retrying cannot help
              other HTTP statuses (400, 401, 403, 404, 413, 501, ...);
              proxy codes VALIDATION_ERROR, NOT_FOUND, UNAUTHORIZED, FORBIDDEN, ...;
              unknown proxy codes, unless the HTTP status itself is retryable

Unknown codes are permanent because retries happen only on the errors named (Ductape's
"Retry Strategies" page lists what it retries); a gateway's retryable HTTP status still wins
over an unknown code, while a named permanent code wins over everything.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any

import aiohttp
import structlog
from aiohttp.client_reqrep import ConnectionKey
from aiohttp.connector import Connection
from aiohttp.tracing import Trace
from pydantic import BaseModel, ConfigDict, SecretStr

from runner.ductape import wire
from runner.ductape.operations import Operation
from runner.errors import RunnerError

DEFAULT_BASE_URL = "https://api.ductape.app"
# Idle keep-alive connections are dropped after this, before the server drops them: uvicorn
# and Node's http server (what gateways commonly run) close idle connections after 5 s.
KEEPALIVE_EXPIRY_S = 4.0
RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
RETRYABLE_CODES = frozenset(
    {
        "TIMEOUT",
        "REQUEST_TIMEOUT",
        "GATEWAY_TIMEOUT",
        "ETIMEDOUT",
        "RATE_LIMITED",
        "RATE_LIMIT",
        "RATE_LIMIT_EXCEEDED",
        "TOO_MANY_REQUESTS",
        "THROTTLED",
        "SERVICE_UNAVAILABLE",
        "UNAVAILABLE",
        "CONNECTION_ERROR",
        "ECONNRESET",
        "ECONNREFUSED",
        "NETWORK_ERROR",
    }
)
PERMANENT_CODES = frozenset(
    {
        "VALIDATION_ERROR",
        "BAD_REQUEST",
        "INVALID_REQUEST",
        "NOT_FOUND",
        "UNAUTHORIZED",
        "FORBIDDEN",
        "PAYLOAD_TOO_LARGE",
    }
)

log = structlog.get_logger(__name__)


class DuctapeError(RunnerError):
    """A call to Ductape failed; never holds the access token or resolved secrets."""

    def __init__(
        self,
        operation: str,
        reason: str,
        *,
        http_status: int | None = None,
        code: str | None = None,
        detail: str | None = None,
    ) -> None:
        self.operation = operation
        self.reason = reason
        self.http_status = http_status
        self.code = code
        self.detail = detail
        super().__init__(self._text())

    def _text(self) -> str:
        where = [f"HTTP {self.http_status}"] if self.http_status is not None else []
        where += [f"code {self.code}"] if self.code else []
        text = f"{self.operation}: {self.reason}" + (f" ({', '.join(where)})" if where else "")
        return text + (f": {self.detail}" if self.detail else "")


class RetryableError(DuctapeError):
    """Another attempt may succeed; `retry_after_s` is the server's requested wait, if any."""

    def __init__(
        self,
        operation: str,
        reason: str,
        *,
        http_status: int | None = None,
        code: str | None = None,
        detail: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(operation, reason, http_status=http_status, code=code, detail=detail)

    def _text(self) -> str:
        after = f"; retry after {self.retry_after_s:g}s" if self.retry_after_s is not None else ""
        return super()._text() + after


class PermanentError(DuctapeError):
    """Retrying cannot help: the request is wrong, unauthorised or names something unknown."""


class Credentials(BaseModel):
    """Where and as whom to call the SDK proxy; the access token never prints."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base_url: str = DEFAULT_BASE_URL
    workspace_id: str
    user_id: str
    public_key: str
    access_token: SecretStr


@dataclass(frozen=True)
class Result:
    """A successful call: the operation's result and the proxy's bookkeeping."""

    data: Any
    request_id: str | None
    execution_time_ms: float | None
    http_status: int
    duration_ms: float


def normalise_code(code: str | None) -> str | None:
    """'rate-limited' and 'Rate_Limited' are the same code."""
    return code.strip().upper().replace("-", "_") if code else None


def is_retryable(http_status: int, code: str | None) -> bool:
    """The classification table in the module docstring, as a pure function."""
    code = normalise_code(code)
    if code in PERMANENT_CODES:
        return False
    return code in RETRYABLE_CODES or http_status in RETRYABLE_STATUSES


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Retry-After as seconds from `now`: delay-seconds or an HTTP date; junk gives None."""
    if not value or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def failure_error(
    operation: str, failure: wire.ProxyFailure, retry_after_s: float | None
) -> DuctapeError:
    """Turn a proxy failure into the right branch of the tree."""
    reason = "proxy refused the call" if failure.code else "unexpected response"
    if is_retryable(failure.http_status, failure.code):
        return RetryableError(
            operation,
            reason,
            http_status=failure.http_status,
            code=failure.code,
            detail=failure.message,
            retry_after_s=retry_after_s,
        )
    return PermanentError(
        operation,
        reason,
        http_status=failure.http_status,
        code=failure.code,
        detail=failure.message,
    )


AUTH_STATUSES = frozenset({401, 403})
AUTH_CODES = frozenset({"UNAUTHORIZED", "UNAUTHORISED", "FORBIDDEN", "INVALID_TOKEN"})


def is_auth_failure(error: DuctapeError) -> bool:
    """Ductape refused the credentials (HTTP 401/403 or an unauthorised code)."""
    return error.http_status in AUTH_STATUSES or (error.code or "").upper() in AUTH_CODES


def transport_error(operation: str, exc: BaseException) -> DuctapeError:
    """Timeouts and connection trouble are retryable; a malformed URL or request is not."""
    detail = _describe(exc)
    host = _unresolved_host(exc)
    if host is not None:
        return RetryableError(operation, f"cannot resolve host {host}", detail=detail)
    if isinstance(exc, TimeoutError):
        return RetryableError(operation, "timed out", detail=detail)
    if isinstance(exc, ValueError | aiohttp.NonHttpUrlClientError):
        # aiohttp.InvalidURL is a ValueError; so are header values that cannot be sent.
        return PermanentError(operation, "request cannot be sent", detail=detail)
    return RetryableError(operation, "connection failed", detail=detail)


def _label(exc: BaseException) -> str:
    # Connect failures (refused, DNS, TLS handshake) keep one transport-neutral name.
    return "ConnectError" if isinstance(exc, aiohttp.ClientConnectorError) else type(exc).__name__


def _unresolved_host(exc: BaseException) -> str | None:
    """The host whose name lookup failed (DNS), if that is what went wrong."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 6:
        chain.append(current)
        if isinstance(current, aiohttp.ClientConnectorError):
            chain.append(current.os_error)
        current = current.__cause__ or current.__context__
    if not any(isinstance(e, socket.gaierror) for e in chain):
        return None
    connector_error = next((e for e in chain if isinstance(e, aiohttp.ClientConnectorError)), None)
    return connector_error.host if connector_error is not None else "(unknown)"


def _describe(exc: BaseException) -> str:
    """'ConnectError (ConnectionRefusedError: ...)': the telling error is often a wrapped one."""
    chain = [exc]
    current = exc.__cause__ or exc.__context__
    while current is not None and len(chain) < 6:
        chain.append(current)
        current = current.__cause__ or current.__context__
    if isinstance(exc, aiohttp.ClientConnectorError):
        chain.insert(1, exc.os_error)
    telling = next((e for e in chain[1:] if str(e)), None) or (exc if str(exc) else None)
    name = _label(exc)
    if telling is None:
        return name
    if telling is exc:
        return f"{name}: {exc}"
    return f"{name} ({type(telling).__name__}: {telling})"


# Set by _Connector._get in the calling task: did this request get a pooled connection?
_REUSED: ContextVar[bool] = ContextVar("ductape_connection_reused", default=False)
# Set by the caller: skip the pool, open a new connection.
_FRESH: ContextVar[bool] = ContextVar("ductape_fresh_connection", default=False)
_RESET_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED})


class _Connector(aiohttp.TCPConnector):
    """TCPConnector that says whether a request got a pooled connection, or skips the pool.

    `_get` is aiohttp's "take an idle pooled connection" step (private, stable since 3.x;
    tests/test_client_keepalive.py fails if it stops being called). A TraceConfig would
    say the same through public API but costs every request a dozen signal sends.
    """

    async def _get(self, key: ConnectionKey, traces: list[Trace]) -> Connection | None:
        if _FRESH.get():
            return None
        conn = await super()._get(key, traces)
        _REUSED.set(conn is not None)
        return conn


def stale_connection(exc: BaseException) -> bool:
    """The connection died before any response byte: what a server's idle close looks like.

    ServerDisconnectedError with no partial response (its message is then text), a write
    to a closing transport, or a reset / broken pipe (not a failure to connect).
    """
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return isinstance(exc.message, str)
    if isinstance(exc, aiohttp.ClientConnectionResetError):
        return True
    if isinstance(exc, aiohttp.ClientOSError) and not isinstance(exc, aiohttp.ClientConnectorError):
        return exc.errno in _RESET_ERRNOS
    return False


class DuctapeClient:
    """Execute operations through the SDK proxy over one pooled aiohttp.ClientSession.

    At most `max_connections` calls are in flight: callers beyond that wait on a semaphore
    here, and the attempt timeout starts once a connection slot is ours. Idle connections
    expire after `keepalive_expiry_s`, before the server's own idle timeout closes them;
    when the server closes one anyway just as a request goes out on it (no response byte
    received), the request is sent once more on a new connection, within the same timeout
    and the same attempt (the Idempotency-Key header makes a duplicate harmless).
    `max_keepalive_connections=0` turns keep-alive off; any other value keeps up to
    `max_connections` idle connections (aiohttp has no separate idle cap).
    """

    def __init__(
        self,
        credentials: Credentials,
        *,
        max_connections: int = 16,
        max_keepalive_connections: int = 16,
        keepalive_expiry_s: float = KEEPALIVE_EXPIRY_S,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._credentials = credentials
        self._url = credentials.base_url.rstrip("/") + wire.EXECUTE_PATH
        self._clock = clock
        self._max_connections = max_connections
        self._keepalive = max_keepalive_connections > 0
        self._keepalive_expiry_s = keepalive_expiry_s
        self._session: aiohttp.ClientSession | None = None  # made on first use, in a loop
        self._gate = asyncio.Semaphore(max_connections)

    async def __aenter__(self) -> DuctapeClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = _Connector(
                limit=self._max_connections,
                limit_per_host=0,
                force_close=not self._keepalive,
                keepalive_timeout=self._keepalive_expiry_s if self._keepalive else None,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                # The attempt's asyncio.timeout bounds the whole call, resend included.
                timeout=aiohttp.ClientTimeout(total=None),
                trust_env=False,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    def encode(self, op: Operation) -> wire.EncodedBody:
        """The request body for `op`, encrypted for this workspace."""
        creds = self._credentials
        payload = wire.build_payload(op.module, op.method, list(op.params), creds.user_id)
        body = wire.build_request_body(
            payload,
            workspace_id=creds.workspace_id,
            user_id=creds.user_id,
            public_key=creds.public_key,
        )
        return wire.encode_body(body)

    async def execute(self, op: Operation, *, idempotency_key: str, timeout_s: float) -> Result:
        """Run `op` once; raise RetryableError or PermanentError when it does not succeed."""
        encoded = self.encode(op)
        headers = {
            **encoded.headers,
            wire.ACCESS_TOKEN_HEADER: self._credentials.access_token.get_secret_value(),
            wire.IDEMPOTENCY_HEADER: idempotency_key,
        }
        async with self._gate:
            started = time.perf_counter()
            status, content, retry_after = await self._post(op, encoded.content, headers, timeout_s)
            duration_ms = (time.perf_counter() - started) * 1000
        return self._result(op, status, content, retry_after, duration_ms)

    async def _post(
        self, op: Operation, content: bytes, headers: dict[str, str], timeout_s: float
    ) -> tuple[int, bytes, str | None]:
        try:
            async with asyncio.timeout(timeout_s):
                try:
                    return await self._send(content, headers, fresh=False)
                except aiohttp.ClientError as exc:
                    if not (_REUSED.get() and stale_connection(exc)):
                        raise
                    log.debug(
                        "ductape.resend",
                        operation=op.name,
                        idempotency_key=headers[wire.IDEMPOTENCY_HEADER],
                        reason=_describe(exc),
                    )
                return await self._send(content, headers, fresh=True)
        except TimeoutError:
            raise RetryableError(
                op.name, "timed out", detail=f"no answer in {timeout_s:g}s"
            ) from None
        except (aiohttp.ClientError, ValueError) as exc:
            raise self._scrubbed(transport_error(op.name, exc)) from None

    async def _send(
        self, content: bytes, headers: dict[str, str], *, fresh: bool
    ) -> tuple[int, bytes, str | None]:
        _REUSED.set(False)
        token = _FRESH.set(fresh)
        try:
            response = await self._http().post(self._url, data=content, headers=headers)
        finally:
            _FRESH.reset(token)
        _REUSED.set(False)  # a response head arrived: a later failure is never resent
        async with response:
            return response.status, await response.read(), response.headers.get("Retry-After")

    def _result(
        self,
        op: Operation,
        status: int,
        content: bytes,
        retry_after: str | None,
        duration_ms: float,
    ) -> Result:
        parsed = wire.parse_response(status, content)
        log.debug(
            "ductape.call",
            operation=op.name,
            http_status=status,
            ok=isinstance(parsed, wire.ProxySuccess),
            duration_ms=round(duration_ms, 1),
        )
        if isinstance(parsed, wire.ProxyFailure):
            after = parse_retry_after(retry_after, self._clock())
            raise self._scrubbed(failure_error(op.name, parsed, after))
        return Result(parsed.data, parsed.request_id, parsed.execution_time_ms, status, duration_ms)

    def _scrubbed(self, error: DuctapeError) -> DuctapeError:
        # Defence in depth: a gateway could echo the token back in its error text.
        token = self._credentials.access_token.get_secret_value()
        if token and error.detail and token in error.detail:
            error.detail = error.detail.replace(token, "***")
            error.args = (error._text(),)
        return error
