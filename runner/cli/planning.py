"""`ductape-runner plan`: what a reload would change now, computed without changing anything."""

from __future__ import annotations

from pathlib import Path

from runner.daemon.folder import plan_folder
from runner.jobs.loader import Defaults, Limits
from runner.settings import Settings


def current_from_state(state: str) -> tuple[dict[str, str], dict[str, str]]:
    """The schedule the daemon holds (name -> digest, name -> path), read from its state
    file, or with a postgresql:// DSN from the state the replicas share."""
    from runner.store.postgres import is_dsn

    if is_dsn(state):
        from runner.store.postgres.readonly import read_jobs

        records = [r for r in read_jobs(state).values() if r.removed_ms is None]
    elif not Path(state).is_file():
        return {}, {}
    else:
        from runner.store.sqlite import SqliteStore

        store = SqliteStore(state)
        try:
            records = [r for r in store.load_jobs().values() if r.removed_ms is None]
        finally:
            store.close()
    return {r.name: r.definition_hash for r in records}, {r.name: r.path for r in records}


def print_plan(settings: Settings) -> int:
    """Print the plan; exit 1 when some file is invalid, else 0."""
    current, paths = current_from_state(settings.state)
    plan = plan_folder(
        Path(settings.jobs_dir),
        Limits(max_file_bytes=settings.max_file_bytes),
        Defaults(product=settings.product, env=settings.env),
        current,
        paths,
    )
    print(plan.describe())
    return 1 if plan.problems else 0
