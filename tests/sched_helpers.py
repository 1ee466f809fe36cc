"""Fakes and builders for scheduler tests: a recording executor and jobs from YAML text."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from runner.daemon.scheduler import RunControl, Scheduler
from runner.jobs.loader import LoadedJob, load_file
from runner.jobs.model import Job
from runner.store import Occurrence
from runner.store.sqlite import SqliteStore
from runner.timing.clock import FakeClock


@dataclass
class Call:
    job: str
    scheduled: datetime
    key: str
    at: datetime


@dataclass
class FakeExecutor:
    """Records each occurrence it runs; optionally takes `duration_s` of fake time or fails."""

    clock: FakeClock
    duration_s: float = 0.0
    outcome: str = "succeeded"
    calls: list[Call] = field(default_factory=list)
    running: int = 0
    peak: int = 0
    store: SqliteStore | None = None  # set by Harness: like the real one, it records attempts

    async def __call__(
        self, job: Job, occ: Occurrence, deadline: datetime | None, control: RunControl
    ) -> None:
        from runner.daemon.scheduler import from_ms

        self.calls.append(
            Call(job.name, from_ms(occ.scheduled_ms), occ.idempotency_key, self.clock.now())
        )
        occ.state, occ.attempts = "running", occ.attempts + 1
        if self.store is not None:
            self.store.update_occurrence(occ)
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            if self.duration_s:
                await self.clock.sleep(self.duration_s)
        finally:
            self.running -= 1
        occ.state = self.outcome  # type: ignore[assignment]
        if self.outcome == "failed":
            occ.last_error = "boom"

    def times(self, job: str) -> list[str]:
        return [c.scheduled.isoformat() for c in self.calls if c.job == job]


def jobs_from(tmp_path: Path, text: str, name: str = "jobs.yaml") -> dict[str, LoadedJob]:
    path = tmp_path / name
    path.write_text(text)
    result = load_file(path)
    assert not result.problems, [str(p) for p in result.problems]
    return {j.job.name: j for j in result.jobs}


class Harness:
    """A scheduler on a fake clock and a real SQLite file, with its loop running."""

    def __init__(
        self, tmp_path: Path, clock: FakeClock, executor: FakeExecutor, **kw: object
    ) -> None:
        self.tmp_path = tmp_path
        self.clock = clock
        self.executor = executor
        self.store = SqliteStore(tmp_path / "state.sqlite3")
        executor.store = self.store
        kw.setdefault("max_sleep_s", 86_400.0)
        self.scheduler = Scheduler(self.store, executor, clock, **kw)  # type: ignore[arg-type]
        self.task: asyncio.Task[None] | None = None

    async def start(self, jobs: dict[str, LoadedJob]) -> Harness:
        self.scheduler.start(jobs)
        self.task = asyncio.create_task(self.scheduler.run())
        await self.clock.settle()
        return self

    async def crash(self) -> None:
        """Stop as SIGKILL would: no drain, nothing more written."""
        assert self.task is not None
        for entry in self.scheduler.entries.values():
            for task in entry.tasks.values():
                task.cancel()
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        self.store.close()

    async def stop(self) -> None:
        await self.scheduler.drain(0.0)
        assert self.task is not None
        await asyncio.gather(self.task, return_exceptions=True)
        self.store.close()
