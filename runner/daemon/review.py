"""The review of a job-set change: jobs added, removed, renamed and changed, with fire times.

Pure: no I/O, no clock (`now` is an argument). It reads the daemon's own diff
(runner.daemon.reconcile.compute_plan) and adds what a reviewer needs: renames, the
changed fields, the next fire times under both versions, and the consequences
(runner.daemon.consequences). `ductape-runner diff` compares two folders or Git revisions
with it; `plan` compares the daemon's state with its folder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from runner.daemon.consequences import Consequence, file_consequences, job_consequences
from runner.daemon.outlook import Fire, Progress, ending, marked, next_fires
from runner.daemon.reconcile import FileState, Plan, compute_plan
from runner.errors import Problem
from runner.jobs.loader import FileResult, FolderResult, LoadedJob, mark_duplicate_names
from runner.jobs.secrets import REDACTED, is_secret_key

Status = Literal["added", "removed", "renamed", "changed"]


@dataclass(frozen=True, slots=True)
class FieldChange:
    """One changed field, dotted (`schedule.cron`); None where a side does not have it."""

    field: str
    old: Any
    new: Any


@dataclass
class JobReview:
    """One job that the change touches, with its fire times under each version."""

    status: Status
    name: str
    path: str
    line: int
    old_name: str | None = None
    old_path: str | None = None
    fields: list[FieldChange] = field(default_factory=list)
    fires: list[Fire] = field(default_factory=list)
    old_fires: list[Fire] = field(default_factory=list)
    zone: str = "UTC"
    old_zone: str = "UTC"
    note: str | None = None
    consequences: list[Consequence] = field(default_factory=list)


@dataclass
class Review:
    """Everything the change does, in name order, plus the problems of the new version."""

    now: datetime
    n: int
    jobs: list[JobReview] = field(default_factory=list)
    unchanged: int = 0
    problems: list[Problem] = field(default_factory=list)
    kept: dict[str, list[str]] = field(default_factory=dict)  # invalid path -> jobs it keeps
    consequences: list[Consequence] = field(default_factory=list)
    old_invalid: list[str] = field(default_factory=list)  # files the old side refuses

    @property
    def valid(self) -> bool:
        return not self.problems

    def count(self, status: Status) -> int:
        return sum(1 for j in self.jobs if j.status == status)


def compare(old: Sequence[FileResult], new: Sequence[FileResult], now: datetime, n: int) -> Review:
    """Review the change from the `old` files to the `new` ones (both in path order)."""
    before = FolderResult([_copy(f) for f in old])
    mark_duplicate_names(before.files)
    old_jobs = before.jobs
    plan = compute_plan(
        {name: j.digest for name, j in old_jobs.items()},
        {f.path: FileState(f.path, f.content_hash, list(f.jobs), list(f.problems)) for f in new},
        guard_confirmed=True,  # a review removes what the change removes, at once
        current_paths={name: j.path for name, j in old_jobs.items()},
    )
    out = review(plan, old_jobs, now, n)
    out.old_invalid = [f.path for f in before.files if f.problems]
    return out


def _copy(result: FileResult) -> FileResult:
    return FileResult(result.path, result.content_hash, list(result.jobs), list(result.problems))


def review(
    plan: Plan,
    old: Mapping[str, LoadedJob],
    now: datetime,
    n: int,
    progress: Mapping[str, Progress] | None = None,
) -> Review:
    """Explain `plan` (old -> new): `old` holds the previous definitions known (by name),
    `progress` what the daemon remembers of each (execution count, `every` phase)."""
    out = Review(now, n, unchanged=len(plan.unchanged), problems=list(plan.problems))
    out.kept = dict(plan.kept_last_good)
    out.jobs = _touched(plan, old)
    out.unchanged -= sum(1 for j in out.jobs if j.status == "renamed" and not j.old_name)
    for item in out.jobs:
        _foresee(
            item, plan.desired.get(item.name), old.get(item.old_name or item.name), out, progress
        )
    out.consequences = file_consequences(plan.problems, plan.kept_last_good)
    out.consequences += [c for j in out.jobs for c in j.consequences]
    return out


def _touched(plan: Plan, old: Mapping[str, LoadedJob]) -> list[JobReview]:
    """Every job the plan touches, by name: renames paired out of adds and removals."""
    added, removed, jobs = list(plan.add), list(plan.remove), []
    for new_job, old_job in _renames(added, removed, old):
        added.remove(new_job)
        removed.remove(old_job.job.name)
        jobs.append(_renamed(old_job, new_job))
    jobs += [_moved(old[name], plan.desired[name]) for name in _moves(plan, old)]
    jobs += [JobReview("added", j.job.name, j.path, j.line) for j in added]
    jobs += [_changed(old.get(j.job.name), j) for j in plan.update]
    jobs += [_removed(name, old.get(name)) for name in removed]
    return sorted(jobs, key=lambda j: (j.name, j.status))


def _renames(
    added: list[LoadedJob], removed: list[str], old: Mapping[str, LoadedJob]
) -> list[tuple[LoadedJob, LoadedJob]]:
    """Pairs (new, old) of an added and a removed job with the same definition but the name."""
    pairs, free = [], [old[name] for name in removed if name in old]
    for new_job in added:
        match = next((o for o in free if body(o) == body(new_job)), None)
        if match is not None:
            free.remove(match)
            pairs.append((new_job, match))
    return pairs


def _moves(plan: Plan, old: Mapping[str, LoadedJob]) -> list[str]:
    """Unchanged jobs that now live in another file."""
    return [
        name
        for name in plan.unchanged
        if name in old and name in plan.desired and old[name].path != plan.desired[name].path
    ]


def body(loaded: LoadedJob) -> dict[str, Any]:
    """The definition without its name: equal bodies make a rename."""
    return loaded.job.model_dump(mode="json", by_alias=True, exclude={"name"})


def _renamed(old: LoadedJob, new: LoadedJob) -> JobReview:
    item = JobReview("renamed", new.job.name, new.path, new.line, old.job.name, old.path)
    item.note = (
        "a new name: the daemon treats it as a new job (execution count, `every` phase"
        " and history start afresh)"
    )
    return item


def _moved(old: LoadedJob, new: LoadedJob) -> JobReview:
    item = JobReview("renamed", new.job.name, new.path, new.line, None, old.path)
    item.note = "same name in another file: the daemon keeps its state"
    return item


def _changed(old: LoadedJob | None, new: LoadedJob) -> JobReview:
    item = JobReview("changed", new.job.name, new.path, new.line)
    if old is None:
        item.note = "the previous definition is not known: changed fields cannot be shown"
        return item
    item.old_path = old.path if old.path != new.path else None
    item.fields = changed_fields(old, new)
    return item


def _removed(name: str, old: LoadedJob | None) -> JobReview:
    return JobReview("removed", name, old.path if old else "", old.line if old else 0)


def changed_fields(old: LoadedJob, new: LoadedJob) -> list[FieldChange]:
    """Every leaf that differs, dotted; secret references stay references (they are never
    resolved here) and literal values under secret-named keys show as ***."""
    before, after = _flat(body(old)), _flat(body(new))
    found = [
        FieldChange(key, before.get(key), after.get(key))
        for key in sorted(before.keys() | after.keys())
        if before.get(key) != after.get(key)
    ]
    if old.path != new.path:
        found.insert(0, FieldChange("file", old.path, new.path))
    return found


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(value, dict) or (prefix and not value):
        return {prefix: value}
    out: dict[str, Any] = {}
    for key, item in value.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if is_secret_key(key) and isinstance(item, str) and "${" not in item:
            out[name] = REDACTED
        else:
            out.update(_flat(item, name))
    return out


def _progress_of(
    item: JobReview, new: LoadedJob, progress: Mapping[str, Progress] | None
) -> Progress | None:
    """What the daemon keeps of a job across the change, as the scheduler decides it: a
    new name is a new job, and an edited one-shot a new one-shot (runs again)."""
    if progress is None or (item.status == "renamed" and item.old_name):
        return None
    if item.status == "changed" and not new.job.schedule.recurring:
        return None
    return progress.get(item.name)


def _foresee(
    item: JobReview,
    new: LoadedJob | None,
    old: LoadedJob | None,
    out: Review,
    progress: Mapping[str, Progress] | None,
) -> None:
    """Fire times and consequences of one touched job (none for a removed one)."""
    if item.status == "removed" or new is None:
        return
    known = _progress_of(item, new, progress)
    times = [] if new.job.suspend else next_fires(new.job, out.now, out.n + 1, known)
    item.zone = new.job.schedule.tz
    item.fires = marked(times[: out.n], item.zone, out.now)
    ends = ending(new.job, times, out.n, known)
    if item.status == "changed" and old is not None:
        item.old_zone = old.job.schedule.tz
        was = [] if old.job.suspend else next_fires(old.job, out.now, out.n, known)
        item.old_fires = marked(was, item.old_zone, out.now)
    item.consequences = job_consequences(item.name, item.status, new, old, out.now, ends)
