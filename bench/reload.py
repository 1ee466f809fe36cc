"""File change to schedule updated: latency over N edits with M jobs loaded (p50/p99/max).

.venv/bin/python bench/reload.py [--jobs 10000] [--edits 200] [--quiet-ms 250]

Generates one job file per job (cron an hour away, so nothing fires), starts the real
scheduler on SQLite and the real folder watcher, then edits one random file at a time
(alternately rewritten in place and saved by atomic rename) and times the write to the
moment the scheduler holds the new definition digest (polled every 1 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import platform
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog

from runner.daemon.scheduler import RunControl, Scheduler
from runner.daemon.watch import FolderReconciler, FolderSync
from runner.jobs.loader import load_file
from runner.jobs.model import Job
from runner.store import Occurrence
from runner.store.sqlite import SqliteStore
from runner.timing.clock import SystemClock


def job_text(i: int, version: int) -> str:
    later = datetime.now(UTC) + timedelta(hours=1)
    return (
        f"name: job-{i:05d}\nkind: quota\ntag: t{i}\n"
        f"schedule:\n  cron: '{later.minute} {later.hour} * * *'\n"
        f"input:\n  customer: c-{i}\n  version: {version}\n"
    )


async def executor(
    job: Job, occ: Occurrence, deadline: datetime | None, control: RunControl
) -> None:
    occ.state = "succeeded"


def save(path: Path, text: str, atomic: bool) -> None:
    if not atomic:
        path.write_text(text)
        return
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(text)
    temp.replace(path)


async def measure(folder: Path, state: Path, jobs: int, edits: int, quiet_s: float) -> list[float]:
    reconciler = FolderReconciler(folder, quiet_s=quiet_s)
    store = SqliteStore(state)
    scheduler = Scheduler(store, executor, SystemClock())
    scheduler.start(reconciler.scan({}, deep=True).desired)  # as the daemon starts
    assert len(scheduler.entries) == jobs, len(scheduler.entries)
    sync = FolderSync(reconciler, scheduler)
    tasks = [asyncio.create_task(scheduler.run()), asyncio.create_task(sync.run())]
    for _ in range(1000):  # the watcher's own first reload, before any edit
        if sync.reloads:
            break
        await asyncio.sleep(0.01)
    rng, latencies = random.Random(7), []
    for edit in range(edits):
        i = rng.randrange(jobs)
        path, text = folder / f"job-{i:05d}.yaml", job_text(i, edit + 1)
        digest = load_file(path, data=text.encode()).jobs[0].digest
        entry_of = scheduler.entries
        start = time.perf_counter()
        save(path, text, atomic=edit % 2 == 1)
        while entry_of[f"job-{i:05d}"].loaded.digest != digest:
            if time.perf_counter() - start > 10:
                raise SystemExit(f"edit {edit} not applied within 10 s")
            await asyncio.sleep(0.001)
        latencies.append((time.perf_counter() - start) * 1000)
    sync.stop()
    scheduler.stop()
    await asyncio.gather(*tasks)
    store.close()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--edits", type=int, default=200)
    parser.add_argument("--quiet-ms", type=int, default=250)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "jobs.d"
        folder.mkdir()
        for i in range(args.jobs):
            (folder / f"job-{i:05d}.yaml").write_text(job_text(i, 0))
        time.sleep(1.1)  # a running daemon's files are not all seconds old
        ms = asyncio.run(
            measure(folder, Path(tmp) / "s.sqlite3", args.jobs, args.edits, args.quiet_ms / 1000)
        )
    ms.sort()
    p50, p99 = statistics.median(ms), ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    print(
        f"machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}"
    )
    print("| jobs | edits | quiet ms | p50 ms | p99 ms | max ms |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {args.jobs} | {args.edits} | {args.quiet_ms} | {p50:.0f} | {p99:.0f} | {ms[-1]:.0f} |"
    )


if __name__ == "__main__":
    main()
