"""The APScheduler 3 side of bench/startup.py: the same folder of cron jobs, loaded by hand.

    .venv/bin/python bench/aps_cron.py --folder DIR

What a careful user writes instead of the runner: read each YAML file of the folder
with PyYAML's C loader, add one AsyncIOScheduler job per entry with a CronTrigger in the
job's zone (APScheduler's own from_crontab), the job's product, env and tag as its
arguments, and an aiohttp session ready for the calls (none is made: the first fire
times are hours away). Prints `ready <jobs>` on stdout once the scheduler has started
with every job, then runs until SIGTERM. No validation, no state file, no positions
for errors: the peer's side of the comparison is the lightest program that schedules
the same jobs.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

import aiohttp
import yaml
from apscheduler.schedulers.asyncio import AsyncIOScheduler  # type: ignore[import-untyped]
from apscheduler.triggers.cron import CronTrigger  # type: ignore[import-untyped]


async def call(name: str, product: str, env: str, tag: str) -> None:
    """What each job would run (not reached here: no fire time comes in the run)."""
    raise NotImplementedError(name)


def add_jobs(scheduler: AsyncIOScheduler, folder: Path) -> int:
    jobs = 0
    for path in sorted(folder.glob("*.yaml")):
        for entry in yaml.load(path.read_bytes(), Loader=yaml.CSafeLoader)["jobs"]:
            schedule = entry["schedule"]
            trigger = CronTrigger.from_crontab(schedule["cron"], timezone=schedule["tz"])
            args = (entry["name"], entry["product"], entry["env"], entry["tag"])
            scheduler.add_job(call, trigger, args=args, id=entry["name"])
            jobs += 1
    return jobs


async def main(folder: Path) -> None:
    scheduler = AsyncIOScheduler()
    session = aiohttp.ClientSession()
    jobs = add_jobs(scheduler, folder)
    scheduler.start()
    print(f"ready {jobs}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    scheduler.shutdown(wait=False)
    await session.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, required=True)
    asyncio.run(main(parser.parse_args().folder))
