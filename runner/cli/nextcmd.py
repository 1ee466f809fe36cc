"""`ductape-runner next`: upcoming fire times of one job, computed as the daemon does."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from runner.daemon.decisions import from_ms, to_ms
from runner.daemon.outlook import Progress, next_fires
from runner.errors import RunnerError
from runner.jobs.durations import parse_timestamp
from runner.jobs.loader import Defaults, Limits, LoadedJob, load_file, load_folder
from runner.settings import Settings
from runner.store import JobRecord


class NextError(RunnerError):
    """The job cannot be found or its file is invalid."""


def find_job(target: str, settings: Settings) -> LoadedJob:
    limits = Limits(max_file_bytes=settings.max_file_bytes)
    defaults = Defaults(product=settings.product, env=settings.env)
    path = Path(target)
    if path.is_file():
        result = load_file(path, limits, defaults)
        if result.problems:
            raise NextError("\n".join(str(p) for p in result.problems))
        if len(result.jobs) != 1:
            names = ", ".join(j.job.name for j in result.jobs)
            raise NextError(f"{path} defines several jobs ({names}): name one of them")
        return result.jobs[0]
    jobs = load_folder([settings.jobs_dir], limits, defaults).jobs
    if target not in jobs:
        raise NextError(f"no valid job named '{target}' in {settings.jobs_dir}")
    return jobs[target]


def _remembered(name: str, state: str) -> JobRecord | None:
    """The daemon's record of the job (anchor, count), read-only, if a state file exists
    or, with a postgresql:// DSN, as the replicas share it."""
    from runner.store.postgres import is_dsn

    if is_dsn(state):
        from runner.store.postgres.readonly import read_jobs

        return read_jobs(state).get(name)
    if not Path(state).is_file():
        return None
    from runner.store.sqlite import SqliteStore

    store = SqliteStore(state)
    try:
        return store.load_jobs().get(name)
    finally:
        store.close()


def upcoming(
    target: str, settings: Settings, *, n: int, after: str | None, as_json: bool
) -> list[str]:
    loaded = find_job(target, settings)
    job = loaded.job
    zone = ZoneInfo(job.schedule.tz)
    now = datetime.now(UTC)
    start = now if after is None else _instant(after, zone)
    record = _remembered(job.name, settings.state)
    progress = Progress(record.anchor_ms, record.execution_count) if record else None
    times = next_fires(job, start, n, progress)
    local = [t.astimezone(zone) for t in times]
    if as_json:
        return [json.dumps([t.isoformat() for t in local])]
    if not local:
        return [f"{job.name}: no further fire times (limit, endDate or a past one-shot)"]
    return [f"{t:%Y-%m-%d %H:%M:%S %Z (%z)}  {from_ms(to_ms(t)):%Y-%m-%dT%H:%M:%SZ}" for t in local]


def _instant(text: str, zone: ZoneInfo) -> datetime:
    try:
        return parse_timestamp(text, zone)
    except ValueError as exc:
        raise NextError(f"--after: {exc}") from None
