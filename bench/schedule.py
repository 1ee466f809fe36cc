"""Build the schedule for N jobs (default 100,000): time, RSS per job, and firing throughput.

    .venv/bin/python bench/schedule.py [--jobs 100000]

Measures the real Scheduler with the real SQLite store (in a temp dir) and a no-op
executor: what `ductape-runner run` does at start-up after the folder is parsed.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import logging
import platform
import random
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil
import structlog

from runner.daemon.scheduler import RunControl, Scheduler
from runner.jobs.loader import LoadedJob
from runner.jobs.model import JOB_ADAPTER, Job
from runner.store import Occurrence
from runner.store.sqlite import SqliteStore
from runner.timing.clock import SystemClock

CRONS = [
    "*/5 * * * *",
    "0 * * * *",
    "30 2 * * *",
    "0 9 * * 1-5",
    "15 */3 * * *",
    "0 0 L * *",
    "0 0 * * 5#3",
]
ZONES = ["UTC", "America/New_York", "Europe/Amsterdam", "Asia/Kolkata", "Australia/Lord_Howe"]


def make_jobs(n: int) -> list[LoadedJob]:
    rng = random.Random(3)
    jobs = []
    for i in range(n):
        schedule: dict[str, object] = (
            {"cron": f"{i % 60} {rng.choice(['*', '*/2', '3'])} * * *", "tz": rng.choice(ZONES)}
            if i % 3
            else {"cron": rng.choice(CRONS), "tz": rng.choice(ZONES)}
            if i % 2
            else {"every": rng.choice([60_000, 300_000, 3_600_000])}
        )
        job = JOB_ADAPTER.validate_python(
            {
                "name": f"job-{i}",
                "kind": "quota",
                "tag": "t",
                "product": "p",
                "env": "e",
                "schedule": schedule,
            }
        )
        digest = hashlib.sha256(job.model_dump_json().encode()).hexdigest()
        jobs.append(LoadedJob(job, f"jobs.d/job-{i}.yaml", 1, digest))
    return jobs


async def noop(job: Job, occ: Occurrence, deadline: datetime | None, control: RunControl) -> None:
    occ.state = "succeeded"


async def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=100_000)
    args = parser.parse_args()
    proc = psutil.Process()
    jobs = make_jobs(args.jobs)
    gc.collect()
    rss_before = proc.memory_info().rss
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "state.sqlite3")
        scheduler = Scheduler(store, noop, SystemClock())
        start = time.perf_counter()
        with store.batch():  # one transaction for the initial load, as the daemon does
            scheduler.start({j.job.name: j for j in jobs})
        build = time.perf_counter() - start
        gc.collect()
        rss_after = proc.memory_info().rss
        due = sum(1 for e in scheduler.entries.values() if e.due is not None)
        start = time.perf_counter()
        count = 0
        for entry in list(scheduler.entries.values())[:20_000]:
            scheduler._reschedule(entry, datetime.now(UTC), catch_up=False)
            count += 1
        resched = count / (time.perf_counter() - start)
        store.close()
    print(
        f"machine: {platform.machine()}, {psutil.cpu_count()} cores, "
        f"Python {platform.python_version()}"
    )
    print("| jobs | scheduled | build s | reschedules/s | RSS per job |")
    print("|---:|---:|---:|---:|---:|")
    per_job = (rss_after - rss_before) / args.jobs
    print(f"| {args.jobs:,} | {due:,} | {build:.2f} | {resched:,.0f} | {per_job:,.0f} B |")


if __name__ == "__main__":
    asyncio.run(main())
