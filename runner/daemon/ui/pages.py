"""The page bodies: jobs, one job, the folder. Plain data in, an HTML string out."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from runner.daemon.reconcile import FileState
from runner.daemon.ui.html import (
    BASE,
    ago,
    badge,
    esc,
    job_url,
    millis,
    table,
    when,
)
from runner.daemon.ui.rows import SORTS, STATUSES, JobRow, Upcoming
from runner.store import Occurrence

SHOWN_ERRORS = 100

# ---- jobs -----------------------------------------------------------------------------------


def jobs_controls(query: Mapping[str, str]) -> str:
    """The filter form; outside <main>, so a live refresh never resets what is being typed."""
    status = query.get("status", "")
    sort = query.get("sort", "attention")
    statuses = "".join(
        f'<option value="{s}"{" selected" if s == status else ""}>{s.replace("_", " ")}</option>'
        for s in ("", *STATUSES)
    )
    sorts = "".join(
        f'<option value="{s}"{" selected" if s == sort else ""}>{s}</option>' for s in SORTS
    )
    return (
        f'<form class=controls method=get action="{BASE}/" role=search>'
        f'<input name=q value="{esc(query.get("q", ""))}" aria-label=filter'
        ' placeholder="filter by name, kind or file">'
        f" <label>status <select name=status>{statuses}</select></label>"
        f" <label>sort <select name=sort>{sorts}</select></label> <button>Apply</button></form>"
    )


def jobs_body(
    rows: Sequence[JobRow],
    *,
    total: int,
    shown: int,
    counts: Mapping[str, int],
    invalid: Mapping[str, str],
    now: datetime,
    pager_html: str,
) -> str:
    summary = ", ".join(f"{n} {esc(status)}" for status, n in sorted(counts.items()))
    head = f"<p class=summary>{total} jobs ({summary}); {shown} match</p>"
    body = [head, invalid_list(invalid), pager_html]
    lines = [_job_line(r, now) for r in rows]
    headers = ("Job", "Kind", "Schedule", "Zone", "Status", "Last outcome", "Next fire", "Runs")
    body += [table(headers, lines, "jobs"), pager_html]
    return "".join(body)


def invalid_list(invalid: Mapping[str, str]) -> str:
    if not invalid:
        return ""
    errors = [error for _, error in sorted(invalid.items())]
    items = "".join(f"<li><code>{esc(error)}</code></li>" for error in errors[:SHOWN_ERRORS])
    if len(errors) > SHOWN_ERRORS:
        items += f"<li>and {len(errors) - SHOWN_ERRORS} more: see the folder page</li>"
    return (
        f'<section class="invalid" id=invalid-files><h2>Invalid files: {len(invalid)}</h2>'
        f"<ul>{items}</ul></section>"
    )


def _job_line(r: JobRow, now: datetime) -> str:
    status = badge(r.status) + (badge("last good version", "last_good") if r.last_good else "")
    outcome = "-"
    if r.last_outcome:
        outcome = f"{badge(r.last_outcome)} <small>{esc(ago(r.last_finished_ms, now))}</small>"
    nxt = "-"
    if r.next_fire is not None:
        nxt = (
            f"{esc(when(r.next_fire, r.tz))}<br><small>{esc(when(r.next_fire))}"
            f" · {esc(ago(r.next_fire, now))}</small>"
        )
    runs = f"{r.execution_count}" + (f" / {r.limit}" if r.limit else "")
    cls = ' class="failing"' if r.failing else ""
    return (
        f'<tr{cls}><td><a href="{esc(job_url(r.name))}">{esc(r.name)}</a></td>'
        f"<td>{esc(r.kind)}</td><td>{esc(r.words)}<br><code>{esc(r.raw)}</code></td>"
        f"<td>{esc(r.tz)}</td><td>{status}</td><td>{outcome}</td><td>{nxt}</td>"
        f"<td>{runs}</td></tr>"
    )


# ---- one job --------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobPage:
    """What the page of one job shows; `definition` is already redacted."""

    row: JobRow
    line: int
    paused: bool
    suspended: bool
    last_error: str | None
    definition: dict[str, Any]
    upcoming: list[Upcoming]
    history: list[Occurrence]


def job_body(page: JobPage, csrf: str, notice: str, now: datetime) -> str:
    r = page.row
    parts = [
        f"<h1>{esc(r.name)}</h1>",
        f"<p class=where><code>{esc(r.path)}:{page.line}</code> · {esc(r.kind)}"
        f" · {esc(r.words)} <code>{esc(r.raw)}</code> · {esc(r.tz)}</p>",
        f"<p class=notice role=status>{esc(notice)}</p>" if notice else "",
        _buttons(r.name, page.paused, csrf),
        _facts(page, now),
        "<h2>Next 10 fire times</h2>",
        _upcoming(page.upcoming),
        "<h2>History</h2>",
        _history(page.history),
        "<h2>Definition as loaded</h2>",
        f"<pre class=definition>{esc(json.dumps(page.definition, indent=2))}</pre>",
    ]
    return "".join(parts)


def _buttons(name: str, paused: bool, csrf: str) -> str:
    verbs = ("trigger", "resume" if paused else "pause")
    forms = "".join(
        f'<form method=post action="{esc(job_url(name))}/{verb}">'
        f'<input type=hidden name=csrf value="{esc(csrf)}">'
        f'<button name=action value="{verb}">{verb.capitalize()}</button></form>'
        for verb in verbs
    )
    return f"<div class=actions>{forms}</div>"


def _facts(page: JobPage, now: datetime) -> str:
    r = page.row
    status = badge(r.status) + (badge("last good version", "last_good") if r.last_good else "")
    facts = [
        ("Status", status),
        ("Last outcome", f"{badge(r.last_outcome or '-')} {esc(when(r.last_finished_ms, r.tz))}"),
        ("Last error", f"<code>{esc(page.last_error)}</code>" if page.last_error else "-"),
        ("Next fire", f"{esc(when(r.next_fire, r.tz))} · {esc(when(r.next_fire))}"),
        ("Runs", f"{r.execution_count}" + (f" of limit {r.limit}" if r.limit else "")),
    ]
    return "<dl class=facts>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts) + "</dl>"


def _upcoming(times: list[Upcoming]) -> str:
    if not times:
        return "<p>No further fire times (limit, endDate, or a one-shot that ran).</p>"
    lines = []
    for t in times:
        if t.transition:
            lines.append(f"<tr class=dst><td colspan=2>{esc(t.transition)}</td></tr>")
        local = t.local.strftime("%Y-%m-%d %H:%M:%S %Z (%z)")
        lines.append(f"<td>{esc(local)}</td><td>{esc(t.utc.strftime('%Y-%m-%d %H:%M:%SZ'))}</td>")
    rows = [line if line.startswith("<tr") else f"<tr>{line}</tr>" for line in lines]
    return table(("In the job's zone", "UTC"), rows, "upcoming")


def _history(history: list[Occurrence]) -> str:
    if not history:
        return "<p id=history-empty>No runs yet.</p>"
    headers = ("Scheduled", "Trigger", "Outcome", "Attempts", "Lateness", "Duration", "Detail")
    return table(headers, [_occurrence(o) for o in history], "history")


def _occurrence(o: Occurrence) -> str:
    late = None if o.started_ms is None else o.started_ms - o.scheduled_ms
    return (
        f"<tr><td>{esc(when(o.scheduled_ms))}</td><td>{esc(o.trigger)}</td>"
        f"<td>{badge(o.state)}</td><td>{o.attempts}</td><td>{esc(millis(late))}</td>"
        f"<td>{esc(millis(o.duration_ms))}</td>"
        f"<td><code>{esc(o.last_error or o.reason or '')}</code></td></tr>"
    )


# ---- the folder -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Reload:
    """The last reconcile: when, and the names it added, updated and removed (the first
    21 of each in name order: the page shows 20, and whether there were more)."""

    at: datetime
    added: list[str]
    updated: list[str]
    removed: list[str]
    unchanged: int


@dataclass(frozen=True)
class FolderPage:
    """The folder as last scanned; `files` is the page shown, invalid ones first."""

    folder: str
    files: Sequence[FileState]
    total: int
    invalid: Mapping[str, str]
    guard: str | None
    reload: Reload | None


def folder_body(page: FolderPage, now: datetime, pager_html: str) -> str:
    parts = [f"<h1>Folder <code>{esc(page.folder)}</code></h1>"]
    if page.guard:
        parts.append(f'<p class="guard" role=alert>Folder guard armed: {esc(page.guard)}</p>')
    parts += [_reload(page.reload, now), invalid_list(page.invalid)]
    parts += [f"<h2>Files: {page.total}</h2>", pager_html]
    parts += [table(("File", "State", "Jobs"), [_file(f) for f in page.files]), pager_html]
    return "".join(parts)


def _reload(reload: Reload | None, now: datetime) -> str:
    if reload is None:
        return "<p>No reload yet.</p>"
    changes = [
        f"{label}: {esc(', '.join(names[:20]))}{' …' if len(names) > 20 else ''}"
        for label, names in _changes(reload)
        if names
    ]
    what = "; ".join(changes) or "no changes"
    return (
        f"<p class=reload>Last reload {esc(when(reload.at))} ({esc(ago(reload.at, now))}):"
        f" {what}; {reload.unchanged} unchanged.</p>"
    )


def _changes(reload: Reload) -> tuple[tuple[str, list[str]], ...]:
    return (("added", reload.added), ("updated", reload.updated), ("removed", reload.removed))


def _file(f: FileState) -> str:
    if not f.problems:
        state, jobs = badge("valid"), len(f.jobs)
    elif f.last_good_jobs:
        state = badge("invalid") + badge("last good version", "last_good")
        jobs = len(f.last_good_jobs)
    else:
        state, jobs = badge("invalid"), 0
    return f"<tr><td><code>{esc(f.path)}</code></td><td>{state}</td><td>{jobs}</td></tr>"


__all__ = ["FolderPage", "JobPage", "Reload", "folder_body", "job_body", "jobs_body"]
