"""`ductape-runner plan`: what a reload would change now, computed without changing anything.

The diff of the daemon's state against the folder: the daemon's own reconciliation says
what changes, and the review core of `diff` (runner.daemon.review) adds, for each job
touched, the changed fields (where the state file holds the previous file's content),
the next fire times and the consequences.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from runner.cli.visible import visible
from runner.daemon.folder import plan_folder
from runner.daemon.outlook import Progress
from runner.jobs.loader import Defaults, Limits, LoadedJob, load_file
from runner.settings import Settings
from runner.store import JobRecord

FIRES = 3  # fire times shown per job touched


@dataclass
class Held:
    """What the daemon's state file says it holds: its jobs and the files they came from."""

    records: dict[str, JobRecord] = field(default_factory=dict)
    sources: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # path -> content


def read_state(state: str) -> Held:
    """The schedule the daemon holds, read from its state file (empty without one), or
    with a postgresql:// DSN from the state the replicas share (no file contents there)."""
    from runner.store.postgres import is_dsn

    if is_dsn(state):
        from runner.store.postgres.readonly import read_jobs

        jobs = read_jobs(state)
        return Held({n: r for n, r in jobs.items() if r.removed_ms is None})
    if not Path(state).is_file():
        return Held()
    from runner.store.sqlite import SqliteStore

    store = SqliteStore(state)
    try:
        records = {n: r for n, r in store.load_jobs().items() if r.removed_ms is None}
        return Held(records, store.load_last_good())
    finally:
        store.close()


def definitions(held: Held, limits: Limits, defaults: Defaults) -> dict[str, LoadedJob]:
    """The definitions the daemon runs, where the state keeps their file's content."""
    found: dict[str, LoadedJob] = {}
    for path, (_, content) in sorted(held.sources.items()):
        for loaded in load_file(Path(path), limits, defaults, data=content).jobs:
            record = held.records.get(loaded.job.name)
            if record is not None and record.definition_hash == loaded.digest:
                found[loaded.job.name] = loaded
    return found


def print_plan(settings: Settings, now: datetime | None = None) -> int:
    """Print the plan, then what it does to each job; exit 1 when some file is invalid."""
    from runner.cli.diffrender import details
    from runner.daemon.review import review

    held = read_state(settings.state)
    limits = Limits(max_file_bytes=settings.max_file_bytes)
    defaults = Defaults(product=settings.product, env=settings.env)
    plan = plan_folder(
        Path(settings.jobs_dir),
        limits,
        defaults,
        {r.name: r.definition_hash for r in held.records.values()},
        {r.name: r.path for r in held.records.values()},
    )
    print(visible(plan.describe(), keep="\n"))  # file names may hold ESC or bidi characters
    progress = {n: Progress(r.anchor_ms, r.execution_count) for n, r in held.records.items()}
    old = definitions(held, limits, defaults)
    explained = review(plan, old, now or datetime.now(UTC), FIRES, progress)
    lines = details(explained)
    if lines:
        print(visible("\n".join(lines), keep="\n"))
    return 1 if plan.problems else 0
