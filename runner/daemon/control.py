"""The control API: health, metrics, job status and pause/resume/trigger over HTTP.

Served by uvicorn on the daemon's own event loop, on a unix socket (mode 0660) and
optionally on loopback TCP. Handlers are async and call the view directly, so the view
runs on the loop, never in a thread: it must not block. Over TCP, /healthz, /readyz and
/metrics are open; the rest needs a loopback client and the bearer token.

This module is the app: routes, handlers and the JSON shapes. Listening on the socket
and the loopback rule are runner.daemon.control_server.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from runner.daemon.control_server import ControlAccess
from runner.daemon.control_server import ControlServer as ControlServer  # re-exported
from runner.daemon.control_server import ControlSocketError as ControlSocketError  # re-exported
from runner.daemon.control_server import parse_tcp as parse_tcp  # re-exported
from runner.daemon.control_server import serve_control as serve_control  # re-exported
from runner.daemon.metrics import CONTENT_TYPE, Metrics
from runner.daemon.rendered import Rendered, json_body
from runner.jobs.model import Job
from runner.jobs.secrets import SecretRegistry, redact
from runner.store import JobRecord, Occurrence

log = structlog.get_logger("runner.control")

HISTORY_DEFAULT, HISTORY_MAX = 50, 1000


class ControlView(Protocol):
    """What the control API asks of the daemon; called on the event loop, never blocking.

    Lookups of an unknown job raise KeyError; an action that the job's state forbids
    (triggering a suspended job, say) raises ValueError with a message for the operator.
    """

    def healthy(self) -> tuple[bool, str]:
        """Liveness: the scheduler loop's heartbeat is fresh."""
        ...

    def ready(self) -> tuple[bool, str]:
        """Readiness: state is loaded and the jobs folder was reconciled once."""
        ...

    def jobs(self) -> list[dict[str, Any]]:
        """Every job as `job_dict` builds it, sorted by name."""
        ...

    def job(self, name: str) -> dict[str, Any] | None: ...

    async def history(self, name: str, limit: int) -> list[dict[str, Any]] | None:
        """The job's newest occurrences (`occurrence_dict`), newest first; None if unknown."""
        ...

    def trigger(self, name: str) -> dict[str, Any]:
        """Start a run now; returns its `occurrence_dict`."""
        ...

    def pause(self, name: str) -> dict[str, Any]:
        """Returns the job's `job_dict` after pausing."""
        ...

    def resume(self, name: str) -> dict[str, Any]: ...

    def summary(self) -> dict[str, Any]:
        """Counts, invalid files and the next run: see `summary_dict`."""
        ...


# ---- the JSON shapes ------------------------------------------------------------------


def iso(moment: datetime | int | None) -> str | None:
    """ISO 8601 in UTC with a 'Z', from an aware datetime or epoch milliseconds."""
    if moment is None:
        return None
    if isinstance(moment, int):
        moment = datetime.fromtimestamp(moment / 1000, UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def job_dict(record: JobRecord, job: Job | None, next_fire: datetime | None) -> dict[str, Any]:
    """Ductape's dispatch result and job record fields, plus the runner's own.

    `scheduled_at` is the schedule's start: `start_at`, or when the runner first saw the
    schedule. `job` is None for a job whose file is gone but whose record remains.
    """
    schedule = job.schedule if job is not None else None
    start = schedule.start_at if schedule is not None else None
    return {
        "job_id": record.name,
        "status": record.status,
        "scheduled_at": iso(start if start is not None else record.anchor_ms),
        "recurring": schedule.recurring if schedule is not None else None,
        "next_run_at": iso(next_fire if next_fire is not None else record.next_fire_ms),
        "execution_count": record.execution_count,
        "limit": schedule.limit if schedule is not None else None,
        "end_date": iso(schedule.end_date) if schedule is not None else None,
        "retries": job.retries if job is not None else None,
        "retry_count": record.retry_count,
        "last_error": record.last_error,
        "kind": job.canonical_kind if job is not None else None,
        "path": record.path,
        "paused": record.paused,
        "suspended": job.suspend if job is not None else False,
        "last_outcome": record.last_outcome,
        "last_started_at": iso(record.last_started_ms),
        "last_finished_at": iso(record.last_finished_ms),
    }


def occurrence_dict(occ: Occurrence) -> dict[str, Any]:
    """One occurrence: a scheduled, caught-up or manual run and what became of it."""
    return {
        "job_id": occ.job,
        "scheduled_at": iso(occ.scheduled_ms),
        "state": occ.state,
        "trigger": occ.trigger,
        "reason": occ.reason,
        "attempts": occ.attempts,
        "last_error": occ.last_error,
        "idempotency_key": occ.idempotency_key,
        "created_at": iso(occ.created_ms),
        "started_at": iso(occ.started_ms),
        "finished_at": iso(occ.finished_ms),
        "duration_ms": occ.duration_ms,
        "next_attempt_at": iso(occ.next_attempt_ms),
    }


def summary_dict(
    jobs: Iterable[Mapping[str, Any]], invalid_files: Mapping[str, str]
) -> dict[str, Any]:
    """Counts by status, invalid files with their errors, and the earliest next run."""
    by_status: dict[str, int] = {}
    total, soonest = 0, None
    for job in jobs:
        total += 1
        by_status[job["status"]] = by_status.get(job["status"], 0) + 1
        at = job.get("next_run_at")
        if at is not None and (soonest is None or _parse(at) < _parse(soonest["at"])):
            soonest = {"job_id": job["job_id"], "at": at}
    return {
        "jobs": total,
        "by_status": dict(sorted(by_status.items())),
        "invalid_files": [{"path": p, "error": e} for p, e in sorted(invalid_files.items())],
        "next_run": soonest,
    }


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text)


# ---- the app --------------------------------------------------------------------------


def build_control_app(
    view: ControlView,
    metrics: Metrics,
    *,
    secrets: SecretRegistry | None = None,
    token: str | None = None,
    ui: Sequence[BaseRoute] = (),
) -> Starlette:
    """The ASGI app; `secrets` adds a last redaction pass over every JSON body; `token`
    is what TCP clients must send as `Authorization: Bearer` (None: TCP gets the probes
    and metrics only); `ui` are the dashboard's routes (runner.daemon.ui), which check
    the token themselves."""
    api = _Api(view, metrics, secrets)
    routes = [
        Route("/healthz", api.healthz, methods=["GET"]),
        Route("/readyz", api.readyz, methods=["GET"]),
        Route("/metrics", api.metrics_text, methods=["GET"]),
        Route("/status", api.status, methods=["GET"]),
        Route("/jobs", api.jobs, methods=["GET"]),
        Route("/jobs/{name}", api.job, methods=["GET"]),
        Route("/jobs/{name}/history", api.history, methods=["GET"]),
        Route("/jobs/{name}/trigger", api.action("trigger"), methods=["POST"]),
        Route("/jobs/{name}/pause", api.action("pause"), methods=["POST"]),
        Route("/jobs/{name}/resume", api.action("resume"), methods=["POST"]),
        *ui,
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: api.http_error})
    app.add_middleware(ControlAccess, token=token)
    return app


class _Api:
    def __init__(self, view: ControlView, metrics: Metrics, secrets: SecretRegistry | None) -> None:
        self.view, self.metrics, self.secrets = view, metrics, secrets
        # Made in a worker thread and shared (runner.daemon.rendered): the view's
        # `jobs` and `summary` take one C-level copy of the job table, never iterating
        # it while the loop changes it.
        self.rendered = {
            "metrics": Rendered(metrics.render),
            "jobs": Rendered(lambda: self._json(view.jobs())),
            "status": Rendered(lambda: self._json(view.summary())),
        }

    def _json(self, payload: Any) -> bytes:
        if self.secrets is not None:
            payload = redact(payload, self.secrets.forms())
        return json_body(payload)

    async def shared_body(self, key: str, media_type: str) -> Response:
        try:
            body = await self.rendered[key].get()
        except Exception as exc:
            return self._failed(None, exc)
        return Response(body, media_type=media_type)

    def reply(self, payload: Any, status: int = 200) -> Response:
        """A JSON body, redacted and encoded as the shared bodies are (`_json`)."""
        return Response(self._json(payload), status_code=status, media_type="application/json")

    def error(self, status: int, error: str, detail: str) -> Response:
        return self.reply({"error": error, "detail": detail}, status)

    async def call(self, name: str | None, fn: Callable[[], Any]) -> Response:
        """Run a view method about job `name`: KeyError is 404, ValueError 409, others 500."""
        try:
            result = fn()
            if inspect.isawaitable(result):  # reads of a shared store are awaited (bug 4)
                result = await result
        except (KeyError, ValueError) as exc:
            if name is None:
                return self._failed(name, exc)
            if isinstance(exc, KeyError):
                return self.error(404, "not_found", f"no job named {name!r}")
            return self.error(409, "conflict", str(exc))
        except Exception as exc:
            return self._failed(name, exc)
        if result is None and name is not None:
            return self.error(404, "not_found", f"no job named {name!r}")
        return self.reply(result)

    def _failed(self, name: str | None, exc: Exception) -> Response:
        # The daemon keeps serving; the operator sees a 500 and the log has the traceback.
        log.exception("control.failed", job=name, error=type(exc).__name__)
        return self.error(500, "internal", f"{type(exc).__name__} (see the daemon's log)")

    async def http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        response = self.error(
            exc.status_code, _ERROR_NAMES.get(exc.status_code, "error"), exc.detail
        )
        response.headers.update(exc.headers or {})
        return response

    async def healthz(self, request: Request) -> Response:
        return self._probe(self.view.healthy)

    async def readyz(self, request: Request) -> Response:
        return self._probe(self.view.ready)

    def _probe(self, check: Callable[[], tuple[bool, str]]) -> Response:
        try:
            ok, detail = check()
        except Exception as exc:
            log.exception("control.failed", probe=check.__name__, error=type(exc).__name__)
            ok, detail = False, f"check failed: {type(exc).__name__}"
        return self.reply({"ok": ok, "detail": detail}, 200 if ok else 503)

    async def metrics_text(self, request: Request) -> Response:
        return await self.shared_body("metrics", CONTENT_TYPE)

    async def status(self, request: Request) -> Response:
        return await self.shared_body("status", "application/json")

    async def jobs(self, request: Request) -> Response:
        return await self.shared_body("jobs", "application/json")

    async def job(self, request: Request) -> Response:
        name = request.path_params["name"]
        return await self.call(name, lambda: self.view.job(name))

    async def history(self, request: Request) -> Response:
        name = request.path_params["name"]
        raw = request.query_params.get("limit", str(HISTORY_DEFAULT))
        # str.isdigit() also accepts '²' and '١', which int() refuses (a 500 before).
        if not _ascii_digits(raw, 4) or not 1 <= int(raw) <= HISTORY_MAX:
            detail = f"limit must be an integer from 1 to {HISTORY_MAX}, got {raw!r}"
            return self.error(400, "bad_request", detail)
        return await self.call(name, lambda: self.view.history(name, int(raw)))

    def action(self, verb: str) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            name = request.path_params["name"]
            response = await self.call(name, lambda: getattr(self.view, verb)(name))
            for rendered in self.rendered.values():
                rendered.invalidate()
            log.info(f"control.{verb}", job=name, status=response.status_code)
            return response

        return endpoint


def _ascii_digits(text: str, most: int) -> bool:
    return 0 < len(text) <= most and all("0" <= c <= "9" for c in text)


_ERROR_NAMES = {400: "bad_request", 403: "forbidden", 404: "not_found", 405: "method_not_allowed"}
