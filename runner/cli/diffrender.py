"""Show a review (runner.daemon.review) as terminal text, a Markdown PR comment, or JSON.

Text from job files and file names is shown, not obeyed: escaped for the terminal
(runner.cli.visible), HTML-escaped in Markdown, plain data in JSON.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from runner.cli.visible import visible
from runner.daemon.consequences import Consequence
from runner.daemon.outlook import Fire
from runner.daemon.review import JobReview, Review, Status

SIGN = {"added": "+", "removed": "-", "renamed": ">", "changed": "~"}
COMMENT_BUDGET = 60_000  # characters for the job sections; GitHub's limit is 65,536
REFUSED = ("invalid-file", "duplicate-name")  # these make NEW invalid: exit 1
STATUSES: tuple[Status, ...] = ("added", "removed", "renamed", "changed")


@dataclass
class Report:
    """A review with what the command line knows around it: labels, notes, --fail-on."""

    review: Review
    old: str
    new: str
    notes: list[str] = field(default_factory=list)
    fail_on: Sequence[str] = ()

    @property
    def blocked(self) -> list[Consequence]:
        return [c for c in self.review.consequences if c.matches(self.fail_on)]

    def summary(self) -> str:
        r = self.review
        parts = [f"{r.count(s)} {s}" for s in STATUSES] + [f"{r.unchanged} unchanged"]
        invalid = len({p.path for p in r.problems})
        files = "file" if invalid == 1 else "files"
        return ", ".join(parts) + (f"; {invalid} invalid {files}" if invalid else "")

    def window(self) -> str:
        return f"next {self.review.n} fire times after {utc(self.review.now)}"


def utc(fire: Any) -> str:
    return f"{fire:%Y-%m-%dT%H:%M:%SZ}"


def local(fire: Fire) -> str:
    return f"{fire.local:%Y-%m-%d %H:%M:%S %Z (%z)}"


def value(item: Any) -> str:
    return json.dumps(item, ensure_ascii=False)


# ---------------------------------------------------------------------- text


def text(report: Report) -> str:
    lines = [f"diff {visible(report.old)} -> {visible(report.new)}: {report.window()}"]
    lines += [f"note: {visible(n)}" for n in report.notes]
    for job in report.review.jobs:
        lines += ["", *_text_job(job)]
    if report.review.problems:
        lines += ["", "invalid files:"]
        lines += [f"  {visible(str(p))}" for p in report.review.problems]
    lines += ["", report.summary()]
    lines += _recap(report.review)
    if report.blocked:
        lines.append("blocked by --fail-on: " + ", ".join(sorted({c.id for c in report.blocked})))
    return "\n".join(lines)


def details(review: Review) -> list[str]:
    """Each job touched, then the consequences: what `plan` adds to its own summary."""
    lines = []
    for job in review.jobs:
        lines += ["", *_text_job(job)]
    return lines + (["", *_recap(review)] if review.consequences else [])


def _recap(review: Review) -> list[str]:
    return [f"! {c.id}: {visible(c.message)}" for c in review.consequences]


def _text_job(job: JobReview) -> list[str]:
    where = f"{job.path}:{job.line}" if job.path else "(file not known)"
    head = f"{SIGN[job.status]} {job.status:<8} {job.name}  {visible(where)}"
    if job.old_name or job.old_path:
        head += f"  (was {job.old_name or job.name} in {visible(job.old_path or job.path)})"
    lines = [head]
    lines += [f"    {visible(job.note)}" for _ in [0] if job.note]
    lines += [
        f"    {f.field}: {visible(value(f.old))} -> {visible(value(f.new))}" for f in job.fields
    ]
    lines += [f"    ! {c.id}: {visible(c.message)}" for c in job.consequences]
    return lines + _text_fires(job)


def _text_fires(job: JobReview) -> list[str]:
    if job.status == "removed":
        return []
    if not job.fires and not job.old_fires:
        return ["    no fire times (suspended, or no further fire)"]
    new = [_text_fire(f) for f in job.fires]
    if job.status != "changed" or (job.fires == job.old_fires and job.zone == job.old_zone):
        return [f"    fires ({job.zone}):", *(f"      {line}" for line in new)]
    old = [_text_fire(f) for f in job.old_fires]
    width = max(len(line) for line in [*new, f"new ({job.zone})"])
    rows = [f"      {'new (' + job.zone + ')':<{width}}  | old ({job.old_zone})"]
    for i in range(max(len(new), len(old))):
        left = new[i] if i < len(new) else "-"
        rows.append(f"      {left:<{width}}  | {old[i] if i < len(old) else '-'}")
    return ["    fires:", *rows]


def _text_fire(fire: Fire) -> str:
    mark = f"  [DST {fire.dst}]" if fire.dst else ""
    return f"{local(fire)}  {utc(fire.utc)}{mark}"


# ------------------------------------------------------------------ markdown


def cell(item: str) -> str:
    """Text safe inside a Markdown table cell or an HTML element."""
    return html.escape(visible(item), quote=False).replace("|", "&#124;")


def code(item: str) -> str:
    return f"<code>{cell(item)}</code>" if item else ""


def markdown(report: Report) -> str:
    r = report.review
    lines = [
        f"### Schedule review: {code(report.old)} &rarr; {code(report.new)}",
        "",
        f"**{report.summary()}**. Fire times: the {report.window()}, in each job's zone"
        " and in UTC.",
    ]
    lines += ["", *(f"> {cell(n)}" for n in report.notes)] if report.notes else []
    if r.consequences:
        lines += ["", "| | consequence | job or file | what |", "|---|---|---|---|"]
        blocked = report.blocked
        for c in r.consequences:
            stops = c in blocked or c.id in REFUSED
            flag = "&#x26D4;" if stops else "&#x26A0;&#xFE0F;"
            lines.append(
                f"| {flag} | {code(c.id)} | {code(c.job or c.path or '')} | {cell(c.message)} |"
            )
    lines += _md_jobs(r.jobs, COMMENT_BUDGET - sum(len(line) + 1 for line in lines))
    if r.problems:
        lines += ["", "&#x26D4; **Invalid files** (the daemon refuses them):", ""]
        lines += [f"- {code(str(p))}" for p in r.problems]
    if report.blocked:
        ids = ", ".join(code(i) for i in sorted({c.id for c in report.blocked}))
        lines += ["", f"&#x26D4; **Blocked** by `--fail-on`: {ids}"]
    return "\n".join(lines)


def _md_jobs(jobs: list[JobReview], budget: int) -> list[str]:
    """One section per job while they fit a GitHub comment (65,536 characters at most)."""
    lines: list[str] = []
    for shown, job in enumerate(jobs):
        section = ["", *_md_job(job)]
        cost = sum(len(line) + 1 for line in section)
        if cost > budget:
            more = f"{len(jobs) - shown} more jobs not shown, to fit a comment"
            return [*lines, "", f"**{more}**: the text or JSON output lists them all."]
        lines += section
        budget -= cost
    return lines


def _md_job(job: JobReview) -> list[str]:
    ids = ", ".join(code(c.id) for c in job.consequences)
    summary = f"{SIGN[job.status]} <b>{cell(job.name)}</b> {job.status}" + (
        f" &middot; {ids}" if ids else ""
    )
    where = f"{job.path}:{job.line}" if job.path else "file not known"
    lines = [f"<details><summary>{summary}</summary>", "", code(where)]
    if job.old_name or job.old_path:
        lines[-1] += f" (was {code(job.old_name or job.name)} in {code(job.old_path or job.path)})"
    if job.note:
        lines += ["", cell(job.note)]
    if job.fields:
        lines += ["", "| field | old | new |", "|---|---|---|"]
        lines += [
            f"| {code(f.field)} | {code(value(f.old))} | {code(value(f.new))} |" for f in job.fields
        ]
    lines += _md_fires(job)
    return [*lines, "", "</details>"]


def _md_fires(job: JobReview) -> list[str]:
    if job.status == "removed":
        return []
    if not job.fires and not job.old_fires:
        return ["", "No fire times (suspended, or no further fire)."]
    both = job.status == "changed" and bool(job.old_fires)
    head = f"| # | new ({cell(job.zone)}) | UTC |" + (
        f" old ({cell(job.old_zone)}) | UTC |" if both else ""
    )
    lines = ["", head, "|---" * (5 if both else 3) + "|"]
    for i in range(max(len(job.fires), len(job.old_fires) if both else 0)):
        row = f"| {i + 1} | " + _md_fire(job.fires, i)
        lines.append(row + (" | " + _md_fire(job.old_fires, i) if both else "") + " |")
    return lines


def _md_fire(fires: list[Fire], i: int) -> str:
    if i >= len(fires):
        return "&ndash; | &ndash;"
    fire = fires[i]
    mark = f" <b>DST {cell(fire.dst)}</b>" if fire.dst else ""
    return f"{cell(local(fire))}{mark} | {utc(fire.utc)}"


# ---------------------------------------------------------------------- json


def as_json(report: Report) -> str:
    r = report.review
    data: dict[str, Any] = {
        "old": report.old,
        "new": report.new,
        "now": utc(r.now),
        "n": r.n,
        "valid": r.valid,
        "notes": report.notes,
        "summary": {**{s: r.count(s) for s in STATUSES}, "unchanged": r.unchanged},
        "jobs": [_json_job(j) for j in r.jobs],
        "consequences": [_json_consequence(c) for c in r.consequences],
        "problems": [p.as_dict() for p in r.problems],
        "kept_last_good": r.kept,
        "blocked": sorted({c.id for c in report.blocked}),
    }
    return json.dumps(data, indent=2, ensure_ascii=False)


def _json_job(job: JobReview) -> dict[str, Any]:
    return {
        "status": job.status,
        "name": job.name,
        "path": job.path,
        "line": job.line,
        "old_name": job.old_name,
        "old_path": job.old_path,
        "note": job.note,
        "fields": [{"field": f.field, "old": f.old, "new": f.new} for f in job.fields],
        "zone": job.zone,
        "fires": [_json_fire(f) for f in job.fires],
        "old_zone": job.old_zone if job.status == "changed" else None,
        "old_fires": [_json_fire(f) for f in job.old_fires],
        "consequences": [c.id for c in job.consequences],
    }


def _json_fire(fire: Fire) -> dict[str, Any]:
    return {"local": fire.local.isoformat(), "utc": utc(fire.utc), "dst": fire.dst}


def _json_consequence(c: Consequence) -> dict[str, Any]:
    return {"id": c.id, "job": c.job, "path": c.path, "message": c.message, "ratio": c.ratio}
