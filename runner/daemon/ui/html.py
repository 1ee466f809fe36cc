"""The HTML around every page: escaping, times, the layout, the login page, pagination.

Everything from job files, file names and Ductape's errors goes through `esc`; the last
step before sending (`seal`) removes any secret value the registry knows, escaped or not.
"""

from __future__ import annotations

import html
import urllib.parse
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from runner.jobs.secrets import REDACTED

BASE = "/ui"
NAV = (
    ("jobs", "Jobs", f"{BASE}/"),
    ("folder", "Folder", f"{BASE}/folder"),
    ("pictures", "Pictures", f"{BASE}/pictures"),
)


def esc(value: object) -> str:
    return "" if value is None else html.escape(str(value), quote=True)


def url(path: str, **query: object) -> str:
    kept = {k: str(v) for k, v in query.items() if v not in (None, "")}
    return path + (f"?{urllib.parse.urlencode(kept)}" if kept else "")


def job_url(name: str) -> str:
    return f"{BASE}/jobs/{urllib.parse.quote(name, safe='')}"


def when(moment: datetime | int | None, zone: str = "UTC") -> str:
    """'2026-11-29 09:00:00 CET' in `zone`; '-' for None."""
    if moment is None:
        return "-"
    if isinstance(moment, int):
        moment = datetime.fromtimestamp(moment / 1000, UTC)
    return moment.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M:%S %Z")


def ago(moment: datetime | int | None, now: datetime) -> str:
    """'in 4 s' or '3 min ago'."""
    if moment is None:
        return ""
    if isinstance(moment, int):
        moment = datetime.fromtimestamp(moment / 1000, UTC)
    seconds = (moment - now).total_seconds()
    text = span(abs(seconds))
    return f"in {text}" if seconds >= 0 else f"{text} ago"


def span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def millis(ms: int | None) -> str:
    if ms is None:
        return "-"
    return f"{ms} ms" if abs(ms) < 1000 else f"{ms / 1000:.2f} s"


def badge(text: str, kind: str | None = None) -> str:
    return f'<span class="badge {esc(kind or text)}">{esc(text)}</span>'


def table(headers: Iterable[str], rows: Iterable[str], cls: str = "") -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    return (
        f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )


def pager(path: str, page: int, pages: int, query: Mapping[str, str]) -> str:
    if pages <= 1:
        return ""
    links = []
    if page > 1:
        links.append(
            f'<a rel="prev" href="{esc(url(path, **{**query, "page": page - 1}))}">← previous</a>'
        )
    links.append(f"<span>page {page} of {pages}</span>")
    if page < pages:
        links.append(
            f'<a rel="next" href="{esc(url(path, **{**query, "page": page + 1}))}">next →</a>'
        )
    return f'<nav class="pager">{" ".join(links)}</nav>'


def layout(title: str, current: str, body: str, *, controls: str = "", version: int = 0) -> str:
    nav = "".join(
        f'<a href="{href}"{" aria-current=page" if key == current else ""}>{label}</a>'
        for key, label, href in NAV
    )
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)} · ductape-runner</title>"
        f'<link rel=stylesheet href="{BASE}/static/app.css">'
        f'<script src="{BASE}/static/live.js" defer></script></head><body>'
        f"<header><strong>ductape-runner</strong><nav>{nav}</nav>"
        '<span id=live class="live" title="updates without reload">static</span></header>'
        f"{controls}<main data-version={version}>{body}</main></body></html>"
    )


def login_page(message: str) -> str:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<title>Sign in · ductape-runner</title>"
        f'<link rel=stylesheet href="{BASE}/static/app.css"></head><body>'
        "<header><strong>ductape-runner</strong></header><main class=login>"
        f"<h1>Sign in</h1><p class=notice>{esc(message)}</p>"
        "<p>Open the URL that <code>ductape-runner ui</code> prints, or paste the control"
        " token (the <code>control_token</code> setting, or the <code>control.token</code>"
        " file beside the control socket):</p>"
        f'<form method=get action="{BASE}/"><input type=password name=token'
        ' autocomplete=off aria-label="control token" required>'
        " <button>Sign in</button></form></main></body></html>"
    )


def seal(page: str, secret_forms: tuple[str, ...]) -> str:
    """Remove every known secret value, as written and as HTML-escaped, from the page."""
    for form in secret_forms:
        for shown in {form, html.escape(form, quote=True)}:
            if shown in page:
                page = page.replace(shown, REDACTED)
    return page
