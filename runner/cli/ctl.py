"""The CLI side of the control API: status, history, trigger, pause and resume.

Talks HTTP over the daemon's unix socket (or a TCP URL), prints aligned tables on a
terminal and JSON otherwise. Exit codes: 0 ok, 1 the daemon said no (unknown job,
conflict, bad request, its own error), 2 the daemon cannot be reached.
"""

from __future__ import annotations

import json
import os
import socket as _socket
import stat
import sys
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import httpx

from runner.cli.visible import visible

DEFAULT_SOCKET = "/run/ductape-runner/control.sock"
COMMANDS = ("status", "history", "trigger", "pause", "resume")
EXIT_OK, EXIT_REFUSED, EXIT_UNREACHABLE = 0, 1, 2
TIMEOUT_S = 10.0


class _Untrusted(Exception):
    """The socket belongs to someone who is not the daemon's user: do not talk to it."""


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status, self.message = status, message
        super().__init__(message)


def run_ctl(
    command: str,
    job: str | None,
    *,
    socket: str | None,
    url: str | None,
    as_json: bool | None,
    out: TextIO,
    err: TextIO | None = None,
    limit: int = 20,
    token: str | None = None,
) -> int:
    """Run one control command against the daemon; returns the exit code.

    `url` (http://127.0.0.1:9464) wins over `socket`; with neither, DEFAULT_SOCKET.
    `as_json` None means: JSON unless `out` is a terminal. `token` is sent as
    `Authorization: Bearer` over TCP (the unix socket needs none).
    """
    err = err if err is not None else sys.stderr
    if command not in COMMANDS:
        raise ValueError(f"unknown control command {command!r}; expected one of {COMMANDS}")
    if command != "status" and not job:
        print(f"error: {command} needs a job name", file=err)
        return EXIT_REFUSED
    where = url or socket or DEFAULT_SOCKET
    json_out = as_json if as_json is not None else not out.isatty()
    try:
        if not url:
            _check_owner(socket or DEFAULT_SOCKET)
            _probe(socket or DEFAULT_SOCKET)
        with _client(socket, url, token) as client:
            payload = _request(client, command, job, limit)
    except _Refused as exc:
        print(f"error: {visible(exc.message)}", file=err)
        return EXIT_REFUSED
    except _Untrusted as exc:
        print(f"error: not talking to {where}: {exc}", file=err)
        return EXIT_UNREACHABLE
    except (httpx.TransportError, OSError) as exc:
        print(f"error: cannot reach the daemon at {where}: {_reason(exc)}", file=err)
        return EXIT_UNREACHABLE
    if json_out:
        print(json.dumps(payload, indent=2, sort_keys=False), file=out)
    else:
        print(visible(_RENDER[command](payload), keep="\n"), file=out)  # the cells are too
    return EXIT_OK


def _check_owner(path: str) -> None:
    """The socket must belong to this user, root, or the owner of a folder that only its
    owner writes and that sits in a folder root controls (systemd's /run/ductape-runner).
    A socket someone else left in a shared folder (/tmp) could answer with lies, and
    would receive the commands meant for the daemon."""
    try:
        real = Path(path).resolve()  # where a symbolic link leads
        owner = real.stat().st_uid
        folder, above = real.parent.stat(), real.parent.parent.stat()
    except OSError:
        return  # the connect that follows says what is missing
    if owner in (os.geteuid(), 0):
        return
    private = not folder.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    root_held = above.st_uid == 0 and not above.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if owner == folder.st_uid and private and root_held:
        return
    raise _Untrusted(
        f"it belongs to uid {owner}, neither you, root nor the owner of its private folder "
        "(another user may have put it there)"
    )


def _probe(path: str) -> None:
    """Connect once by hand: httpcore 1.0's sync unix connect leaks its socket on failure."""
    with _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM) as probe:
        probe.settimeout(TIMEOUT_S)
        probe.connect(path)


def _client(socket: str | None, url: str | None, token: str | None = None) -> httpx.Client:
    if url:
        headers = {"Authorization": f"Bearer {token}"} if token else None
        return httpx.Client(base_url=url, timeout=TIMEOUT_S, trust_env=False, headers=headers)
    transport = httpx.HTTPTransport(uds=socket or DEFAULT_SOCKET)
    # The host is never resolved over a unix socket; it only fills the Host header.
    return httpx.Client(
        transport=transport, base_url="http://ductape-runner", timeout=TIMEOUT_S, trust_env=False
    )


def _request(client: httpx.Client, command: str, job: str | None, limit: int) -> Any:
    if command == "status" and job is None:
        return {"summary": _get(client, "GET", "/status"), "jobs": _get(client, "GET", "/jobs")}
    path = f"/jobs/{_quote(job or '')}"
    if command == "status":
        return _get(client, "GET", path)
    if command == "history":
        return _get(client, "GET", f"{path}/history", params={"limit": limit})
    return _get(client, "POST", f"{path}/{command}")


def _get(client: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    response = client.request(method, path, **kwargs)
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.is_success:
        return body
    detail = body.get("detail") if isinstance(body, dict) else None
    raise _Refused(response.status_code, detail or f"HTTP {response.status_code}")


def _quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def _reason(exc: Exception) -> str:
    cause: BaseException = exc
    while cause.__context__ is not None and not str(cause):
        cause = cause.__context__
    return str(cause) or type(exc).__name__


# ---- tables -----------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns two spaces apart; None prints as '-'."""
    cells = [[cell(v) for v in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def cell(value: Any) -> str:
    """A value as the tables show it: '-', yes/no, an instant to the second, controls escaped."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    text = visible(str(value), keep="\t\n\r")  # ESC, bidi: shown, not obeyed (issue 13)
    if len(text) >= 20 and text[4:5] == "-" and text[10:11] == "T":  # an ISO instant
        return text[:19].replace("T", " ") + "Z"
    return " ".join(text.split())


def _render_status(payload: Any) -> str:
    if "summary" not in payload:
        return _render_job(payload)
    summary, jobs = payload["summary"], payload["jobs"]
    counts = ", ".join(f"{n} {cell(status)}" for status, n in summary["by_status"].items())
    lines = [f"jobs: {summary['jobs']}" + (f" ({counts})" if counts else "")]
    nxt = summary.get("next_run")
    lines.append(f"next run: {cell(nxt['job_id'])} at {cell(nxt['at'])}" if nxt else "next run: -")
    invalid = summary["invalid_files"]
    lines.append(f"invalid files: {len(invalid)}")
    lines += [f"  {_located(visible(item['path']), cell(item['error']))}" for item in invalid]
    if summary.get("folder_guard"):
        lines.append(f"folder guard: {visible(summary['folder_guard'])}")
    lines += [
        f"last good version: {item['job_id']} ({visible(item['path'])} is invalid)"
        for item in summary.get("last_good", [])
    ]
    headers = ("JOB", "KIND", "STATUS", "NEXT RUN", "LAST OUTCOME", "LAST FINISHED", "RUNS")
    rows = [
        (
            j["job_id"],
            j["kind"],
            j["status"],
            j["next_run_at"],
            j["last_outcome"],
            j["last_finished_at"],
            j["execution_count"],
        )
        for j in jobs
    ]
    return "\n".join(lines) + ("\n\n" + table(headers, rows) if rows else "")


def _located(path: str, error: str) -> str:
    return error if error.startswith(path) else f"{path}: {error}"


def _render_job(job: dict[str, Any]) -> str:
    return table(("FIELD", "VALUE"), list(job.items()))


HISTORY_HEADERS = ("SCHEDULED", "TRIGGER", "STATE", "ATTEMPTS", "DURATION", "DETAIL")


def history_row(o: dict[str, Any]) -> tuple[Any, ...]:
    """One occurrence under HISTORY_HEADERS (`history --state` adds its owner)."""
    return (
        o["scheduled_at"],
        o["trigger"],
        o["state"],
        o["attempts"],
        None if o["duration_ms"] is None else f"{o['duration_ms'] / 1000:.3f}s",
        o["last_error"] or o["reason"],
    )


def _render_history(occurrences: list[dict[str, Any]]) -> str:
    if not occurrences:
        return "no runs yet"
    return table(HISTORY_HEADERS, [history_row(o) for o in occurrences])


def _render_trigger(occ: dict[str, Any]) -> str:
    line = f"triggered {cell(occ['job_id'])}: run at {cell(occ['scheduled_at'])} is {occ['state']}"
    return line + (f" ({cell(occ['reason'])})" if occ.get("reason") else "")


def _render_pause(job: dict[str, Any]) -> str:
    return f"paused {cell(job['job_id'])} (status {cell(job['status'])})"


def _render_resume(job: dict[str, Any]) -> str:
    return f"resumed {cell(job['job_id'])}: next run {cell(job['next_run_at'])}"


_RENDER: dict[str, Callable[[Any], str]] = {
    "status": _render_status,
    "history": _render_history,
    "trigger": _render_trigger,
    "pause": _render_pause,
    "resume": _render_resume,
}
