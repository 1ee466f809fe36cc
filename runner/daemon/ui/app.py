"""The dashboard's routes under /ui/, mounted in the control API by `Dashboard.routes`.

Handlers run on the daemon's loop; anything that grows with the job count (the jobs
page's rows, sort and render) or touches the disk (history) runs in a worker thread on a
snapshot taken on the loop, so a page of 10,000 jobs never holds up a due occurrence.
"""

from __future__ import annotations

import asyncio
import heapq
import urllib.parse
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Protocol

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from runner.daemon.folder import FolderReconciler
from runner.daemon.reconcile import Plan
from runner.daemon.runs import Entry
from runner.daemon.scheduler import Scheduler, to_ms
from runner.daemon.ui import assets, pages, svg
from runner.daemon.ui.auth import UiAuth
from runner.daemon.ui.html import BASE, esc, layout, login_page, pager, seal, table
from runner.daemon.ui.reader import HistoryReader
from runner.daemon.ui.rows import job_row, page_of, select, upcoming
from runner.daemon.view import DaemonView
from runner.jobs.secrets import SecretRegistry, redact
from runner.store import Store

HISTORY_ROWS = 50
FRESH_S = 1.0  # a jobs page is rendered again after this, or at once when something changed
CACHED_PAGES = 32
PICTURE_JOBS = 50
FOLDER_PAGE = 200
VERBS = ("trigger", "pause", "resume")
MAX_FORM_BYTES = 4096
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; script-src 'self';"
    " connect-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none';"
    " base-uri 'none'",
    "Referrer-Policy": "same-origin",  # "no-referrer" makes POSTs send Origin: null
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}
Endpoint = Callable[[Request], Awaitable[Response]]


class DaemonParts(Protocol):
    """What the dashboard reads of the running daemon (runner.daemon.service.Daemon)."""

    @property
    def scheduler(self) -> Scheduler: ...
    @property
    def view(self) -> DaemonView: ...
    @property
    def reconciler(self) -> FolderReconciler: ...
    @property
    def invalid(self) -> dict[str, str]: ...
    @property
    def store(self) -> Store: ...
    @property
    def registry(self) -> SecretRegistry: ...


class Dashboard:
    """The pages over one daemon, and a change counter the pages poll to refresh."""

    def __init__(self, parts: DaemonParts) -> None:
        self.parts = parts
        self.version = 0
        self.last_reload: pages.Reload | None = None
        self.tcp: tuple[str, int] | None = None  # where the TCP listener is, once it listens
        self.auth = UiAuth(None)
        self._invalid_seen: frozenset[str] = frozenset()
        self._rendered: dict[tuple[str, int], tuple[float, str]] = {}
        # One render thread at a time: threads share the GIL with the loop, and ten
        # renders at once (ten tabs refreshing on one change) made a run 270 ms late.
        self._render_lock = asyncio.Lock()

    # ---- what the daemon tells it ------------------------------------------------------

    def changed(self) -> None:
        """A run started or finished, or a job was paused or resumed."""
        self.version += 1

    def reloaded(self, plan: Plan, at: datetime) -> None:
        invalid = frozenset(str(p) for p in plan.problems)
        self.last_reload = pages.Reload(
            at,
            # The page names the first 20 of each (a 100,000-job start sorted and kept
            # them all: issue 12); one more tells it there are others.
            heapq.nsmallest(21, (j.job.name for j in plan.add)),
            heapq.nsmallest(21, (j.job.name for j in plan.update)),
            heapq.nsmallest(21, plan.remove),
            len(plan.unchanged),
        )
        if plan.changes or invalid != self._invalid_seen or plan.guard:
            self._invalid_seen = invalid
            self.changed()

    # ---- routes ------------------------------------------------------------------------

    def routes(self, token: str | None) -> list[BaseRoute]:
        self.auth = UiAuth(token)
        self.reader = HistoryReader(self.parts.store)
        inner = [
            Route("/", self._signed(self.jobs_page), methods=["GET"]),
            Route("/jobs/{name}", self._signed(self.job_page), methods=["GET"]),
            Route("/jobs/{name}/{verb}", self._signed(self.act), methods=["POST"]),
            Route("/folder", self._signed(self.folder_page), methods=["GET"]),
            Route("/pictures", self._signed(self.pictures_page), methods=["GET"]),
            Route("/changes", self._signed(self.changes), methods=["GET"]),
            Route("/where", self._signed(self.where), methods=["GET"]),
            Route("/static/app.css", _asset(assets.CSS, "text/css"), methods=["GET"]),
            Route("/static/live.js", _asset(assets.JS, "text/javascript"), methods=["GET"]),
        ]
        return [Route(BASE, _to_slash, methods=["GET"]), Mount(BASE, routes=inner)]

    def _signed(self, handler: Endpoint) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            if "token" in request.query_params:
                redirect = self.auth.login_redirect(request)
                if redirect is not None:
                    return redirect
                return self._login("That is not the control token.")
            if not self.auth.signed_in(request):
                return self._login("Sign in to see the dashboard.")
            return await handler(request)

        return endpoint

    def _login(self, message: str) -> Response:
        return HTMLResponse(login_page(message), status_code=401, headers=HEADERS)

    def _html(self, page: str, status: int = 200) -> Response:
        body = seal(page, self.parts.registry.forms())
        return HTMLResponse(body, status_code=status, headers=HEADERS)

    def _now(self) -> datetime:
        return self.parts.scheduler.clock.now()

    def _last_good(self) -> set[str]:
        plan = self.parts.reconciler.last_plan
        kept = plan.kept_last_good if plan is not None else {}
        return {name for names in kept.values() for name in names}

    # ---- pages -------------------------------------------------------------------------

    async def jobs_page(self, request: Request) -> Response:
        query = {k: request.query_params.get(k, "") for k in ("q", "status", "sort")}
        page = _int(request.query_params.get("page", "1"))
        key, now = (str(request.url.query), self.version), self.parts.scheduler.clock.monotonic()
        cached = self._rendered.get(key)
        if cached is not None and now - cached[0] < FRESH_S:
            return self._html(cached[1])  # many open tabs refresh on the same change
        entries = list(self.parts.scheduler.entries.values())  # a snapshot, on the loop
        args = (entries, self._last_good(), dict(self.parts.invalid), query, page)
        async with self._render_lock:
            rendered = await asyncio.to_thread(self._render_jobs, *args)
        if len(self._rendered) >= CACHED_PAGES:
            self._rendered.clear()
        self._rendered[key] = (now, rendered)
        return self._html(rendered)

    def _render_jobs(
        self,
        entries: list[Entry],
        last_good: set[str],
        invalid: dict[str, str],
        query: dict[str, str],
        page: int,
    ) -> str:
        counts = Counter[str](e.record.status for e in entries)
        chosen = select(
            entries, last_good, query=query["q"], status=query["status"], sort=query["sort"]
        )
        picked, page, pages_ = page_of(chosen, page)
        shown = [job_row(e, e.record.name in last_good) for e in picked]
        links = pager(f"{BASE}/", page, pages_, query)
        body = pages.jobs_body(
            shown,
            total=len(entries),
            shown=len(chosen),
            counts=counts,
            invalid=invalid,
            now=self._now(),
            pager_html=links,
        )
        controls = pages.jobs_controls(query)
        return layout("Jobs", "jobs", body, controls=controls, version=self.version)

    async def job_page(self, request: Request, notice: str = "", status: int = 200) -> Response:
        name = request.path_params["name"]
        entry = self.parts.scheduler.entries.get(name)
        if entry is None:
            body = f"<h1>No job named <code>{esc(name)}</code></h1>"
            return self._html(layout("Not found", "", body, version=self.version), 404)
        history = await self.reader.history(name, HISTORY_ROWS)
        entry = self.parts.scheduler.entries.get(name, entry)  # it may have changed meanwhile
        definition = entry.job.model_dump(mode="json", by_alias=True, exclude_none=True)
        data = pages.JobPage(
            row=job_row(entry, name in self._last_good()),
            line=entry.loaded.line,
            paused=entry.record.paused,
            suspended=entry.job.suspend,
            last_error=entry.record.last_error,
            definition=redact(definition, self.parts.registry.forms()),
            upcoming=upcoming(entry, self._now()),
            history=history,
        )
        notice = notice or _DONE.get(request.query_params.get("done", ""), "")
        body = pages.job_body(data, self.auth.csrf, notice, self._now())
        return self._html(layout(name, "", body, version=self.version), status)

    async def act(self, request: Request) -> Response:
        name, verb = request.path_params["name"], request.path_params["verb"]
        form = await _form(request)
        if verb not in VERBS or not self.auth.post_allowed(request, form.get("csrf", "")):
            return self._html(layout("Refused", "", "<h1>Refused</h1><p>Reload the page.</p>"), 403)
        try:
            getattr(self.parts.view, verb)(name)
        except KeyError:
            return await self.job_page(request)  # its 404
        except ValueError as exc:
            return await self.job_page(request, notice=f"Not done: {exc}", status=409)
        target = f"{BASE}/jobs/{urllib.parse.quote(name, safe='')}?done={verb}"
        return RedirectResponse(target, status_code=303, headers=HEADERS)

    async def folder_page(self, request: Request) -> Response:
        reconciler = self.parts.reconciler
        plan = reconciler.last_plan
        files = list(reconciler.files.values())  # a snapshot, on the loop
        page = pages.FolderPage(
            str(reconciler.folder),
            files,
            len(files),
            dict(self.parts.invalid),
            plan.guard if plan is not None else None,
            self.last_reload,
        )
        number = _int(request.query_params.get("page", "1"))
        async with self._render_lock:
            body = await asyncio.to_thread(self._render_folder, page, number)
        return self._html(layout("Folder", "folder", body, version=self.version))

    def _render_folder(self, page: pages.FolderPage, number: int) -> str:
        ordered = sorted(page.files, key=lambda f: (not f.problems, f.path))  # invalid first
        shown, number, count = page_of(ordered, number, FOLDER_PAGE)
        links = pager(f"{BASE}/folder", number, count, {})
        return pages.folder_body(replace(page, files=shown), self._now(), links)

    async def pictures_page(self, request: Request) -> Response:
        names = sorted(self.parts.scheduler.entries)
        shown, page, pages_ = page_of(
            names, _int(request.query_params.get("page", "1")), PICTURE_JOBS
        )
        since = to_ms(self._now() - timedelta(hours=24))
        activity = await self.reader.activity(shown, since)
        lines = [svg.timeline(name, activity.cells.get(name, {})) for name in shown]
        late = [t[0] for t in activity.timings if t[0] is not None]
        took = [t[1] for t in activity.timings if t[1] is not None]
        parts = ["<h1>Runs over the last 24 hours</h1>", svg.legend()]
        if not self.reader.available:
            parts.append("<p>History pictures need the SQLite state file.</p>")
        links = pager(f"{BASE}/pictures", page, pages_, {})
        parts += [links, table(("Job", "Hourly, oldest left"), lines, "timeline"), links]
        parts += [svg.histogram("Lateness", late), svg.histogram("Duration", took)]
        return self._html(layout("Pictures", "pictures", "".join(parts), version=self.version))

    async def changes(self, request: Request) -> Response:
        return JSONResponse({"version": self.version}, headers=HEADERS)

    async def where(self, request: Request) -> Response:
        tcp = None
        if self.tcp is not None:
            host, port = self.tcp
            tcp = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return JSONResponse({"tcp": tcp}, headers=HEADERS)


_DONE = {"trigger": "Triggered: the run shows below.", "pause": "Paused.", "resume": "Resumed."}


async def _to_slash(request: Request) -> Response:
    query = request.url.query
    return RedirectResponse(f"{BASE}/" + (f"?{query}" if query else ""), status_code=307)


def _asset(text: str, media_type: str) -> Endpoint:
    body = text.encode()

    async def endpoint(request: Request) -> Response:
        headers = {"Cache-Control": "max-age=300", "X-Content-Type-Options": "nosniff"}
        return Response(body, media_type=media_type, headers=headers)

    return endpoint


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form, small: the buttons send one hidden field."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return {}
    pairs = urllib.parse.parse_qsl(body.decode("utf-8", "replace"))
    return dict(pairs)


def _int(text: str) -> int:
    return int(text) if text.isascii() and text.isdigit() and len(text) < 7 else 1


__all__ = ["DaemonParts", "Dashboard"]
