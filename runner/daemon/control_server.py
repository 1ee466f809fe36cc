"""Serving the control API: uvicorn on a unix socket and/or TCP, and who may reach what."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import os
import secrets
import socket
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import uvicorn
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from runner.daemon.control_door import GuardedH11Protocol
from runner.errors import RunnerError

log = structlog.get_logger("runner.control")

SOCKET_MODE = 0o660
DEFAULT_TCP_HOST = "127.0.0.1"
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
UI_PREFIX = "/ui"  # the dashboard checks the token itself: a login page, or its cookie
START_TIMEOUT_S = 5.0


class ControlSocketError(RunnerError):
    """The control API cannot listen where it was told to."""

    def __init__(self, address: str, reason: str) -> None:
        self.address = address
        self.reason = reason
        super().__init__(f"control socket {address}: {reason}")


# ---- access -----------------------------------------------------------------------------


class ControlAccess:
    """Who may use what: the unix socket's file mode decides for it; over TCP, the probes
    and metrics are open, everything else needs a loopback client *and* the bearer token
    (any local user can reach a loopback port)."""

    def __init__(self, app: ASGIApp, token: str | None = None) -> None:
        self.app = app
        self.token = token.encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS or _over_unix(scope):
            await self.app(scope, receive, send)
            return
        if not _is_loopback(str(scope["client"][0])):
            detail = "only /healthz, /readyz and /metrics are served to remote clients"
            await _deny(403, "forbidden", detail, scope, receive, send)
        elif not self._authorized(scope) and not _is_ui(scope["path"]):
            detail = "over TCP the control API needs 'Authorization: Bearer <control token>'"
            await _deny(401, "unauthorized", detail, scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        given = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, credential = given.partition(b" ")
        if self.token is None or scheme.lower() != b"bearer":
            return False
        return hmac.compare_digest(credential.strip(), self.token)


def _is_ui(path: str) -> bool:
    return path == UI_PREFIX or path.startswith(UI_PREFIX + "/")


def _over_unix(scope: Scope) -> bool:
    server, client = scope.get("server"), scope.get("client")
    return server is None or server[1] is None or client is None


async def _deny(
    status: int, error: str, detail: str, scope: Scope, receive: Receive, send: Send
) -> None:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    body = JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)
    await body(scope, receive, send)


def private_dir(folder: Path) -> None:
    """Make the runtime folder (0700), or check that an existing one is ours and private:
    in a shared /tmp another user could have made it first and would see the socket."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = folder.lstat()
    except OSError as exc:
        raise ControlSocketError(str(folder), exc.strerror or str(exc)) from None
    if not stat.S_ISDIR(st.st_mode):
        raise ControlSocketError(str(folder), "is not a folder (a symbolic link?); not using it")
    if st.st_uid != os.geteuid():
        reason = f"belongs to uid {st.st_uid}, not to this user: another user may have made it"
        raise ControlSocketError(str(folder), reason + "; remove it or set control_socket")
    if st.st_mode & 0o077:
        folder.chmod(0o700)


def write_token(path: Path) -> str:
    """A new random token, written 0600 (replacing any older one) for the CLI to read."""
    token = secrets.token_urlsafe(32)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")
    temporary.replace(path)
    log.info("control.token_written", path=str(path))
    return token


# ---- serving ----------------------------------------------------------------------------


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the daemon owns SIGTERM, SIGINT and SIGHUP."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


@dataclass
class ControlServer:
    """A running control API; `close()` stops it and removes its socket file."""

    server: uvicorn.Server
    task: asyncio.Task[None]
    unix_socket: str | None = None
    tcp_address: tuple[str, int] | None = None
    _inode: int | None = field(default=None, repr=False)

    def where(self) -> str:
        return " and ".join(filter(None, [self.unix_socket, _endpoint(self.tcp_address)]))

    async def close(self) -> None:
        self.server.should_exit = True
        try:
            await self.task
        finally:
            self._unlink_socket()
        log.info("control.stopped")

    def _unlink_socket(self) -> None:
        if self.unix_socket is None:
            return
        with contextlib.suppress(FileNotFoundError):
            if os.lstat(self.unix_socket).st_ino == self._inode:  # still ours
                Path(self.unix_socket).unlink()


async def serve_control(
    app: ASGIApp,
    *,
    unix_socket: str | None,
    tcp: str | None,
) -> ControlServer:
    """Listen on the unix socket and/or TCP ('127.0.0.1:9464', '[::1]:9464' or '9464').

    The unix socket is bound, made mode 0660 and only then listens, so no one connects
    through looser permissions; its group is the daemon's (Group= in the unit). A stale
    socket file is replaced; a live one is an error. Returns once connections are served.
    """
    if unix_socket is None and tcp is None:
        raise ValueError("serve_control needs a unix socket, a TCP address, or both")
    sockets: list[socket.socket] = []
    try:
        inode = None
        if unix_socket is not None:
            sock, inode = _bind_unix(unix_socket)
            sockets.append(sock)
        if tcp is not None:
            sockets.append(_bind_tcp(tcp))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    server = _Server(
        uvicorn.Config(
            app,
            lifespan="off",
            http=GuardedH11Protocol,  # bounded connections, a deadline to send a request
            ws="none",
            log_config=None,
            access_log=False,
            server_header=False,
            # The client address is the socket's peer, never a header: with
            # FORWARDED_ALLOW_IPS=* in the environment uvicorn would let
            # `X-Forwarded-For: 127.0.0.1` pass a remote client as loopback (issue 13).
            proxy_headers=False,
            forwarded_allow_ips="127.0.0.1",
            timeout_graceful_shutdown=2,
        )
    )
    task = asyncio.create_task(server.serve(sockets=sockets), name="control-api")
    handle = ControlServer(server, task, unix_socket, _tcp_address(sockets, tcp), inode)
    await _started(handle)
    log.info("control.listening", unix_socket=unix_socket, tcp=_endpoint(handle.tcp_address))
    return handle


async def _started(handle: ControlServer) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT_S
    while not handle.server.started:
        if handle.task.done():
            handle._unlink_socket()
            handle.task.result()  # raises what stopped it
            raise ControlSocketError(handle.where(), "server exited at startup")
        if loop.time() > deadline:
            await handle.close()
            raise ControlSocketError(handle.where(), "server did not start")
        await asyncio.sleep(0.005)


def _bind_unix(path: str) -> tuple[socket.socket, int]:
    _remove_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        # Not listening yet: nobody can connect while the mode is still the umask's.
        Path(path).chmod(SOCKET_MODE)
        return sock, os.lstat(path).st_ino
    except OSError as exc:
        sock.close()
        raise ControlSocketError(path, exc.strerror or str(exc)) from None


def _remove_stale(path: str) -> None:
    """Remove a socket file nobody listens on; refuse to touch a live one or a non-socket."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ControlSocketError(path, "exists and is not a socket; not removing it")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            Path(path).unlink(missing_ok=True)
            log.info("control.stale_socket_removed", unix_socket=path)
            return
    raise ControlSocketError(path, "another process is listening on it (is the daemon running?)")


def parse_tcp(address: str) -> tuple[str, int]:
    """'127.0.0.1:9464', '[::1]:9464', 'localhost:9464' or a bare port on 127.0.0.1."""
    host, sep, port = address.rpartition(":")
    if not sep:
        host, port = DEFAULT_TCP_HOST, address
    host = host.removeprefix("[").removesuffix("]") or DEFAULT_TCP_HOST
    if not port.isdigit() or int(port) > 65535:
        raise ControlSocketError(address, "expected HOST:PORT with a port from 0 to 65535")
    return host, int(port)


def _bind_tcp(address: str) -> socket.socket:
    host, port = parse_tcp(address)
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise ControlSocketError(address, exc.strerror or str(exc)) from None
    family, kind, proto, _, sockaddr = info[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
    except OSError as exc:
        sock.close()
        raise ControlSocketError(address, exc.strerror or str(exc)) from None
    if not _is_loopback(str(sockaddr[0])):
        log.warning("control.exposed", tcp=address, served=sorted(PUBLIC_PATHS))
    return sock


def _is_loopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # a dual-stack listener sees 127.0.0.1 as ::ffff:127.0.0.1
    return address.is_loopback


def _tcp_address(sockets: list[socket.socket], tcp: str | None) -> tuple[str, int] | None:
    if tcp is None:
        return None
    host, port = sockets[-1].getsockname()[:2]
    return str(host), int(port)


def _endpoint(address: tuple[str, int] | None) -> str | None:
    if address is None:
        return None
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
