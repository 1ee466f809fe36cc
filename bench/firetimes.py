"""Benchmark of runner.timing.firetimes at 100,000 jobs; prints a Markdown table.

Run: .venv/bin/python bench/firetimes.py [jobs]

The mix: ~200 distinct cron expressions (fixed-time, wildcard, L, W, n#k, seconds,
macros) over 8 zones, plus `every` jobs and a few one-shots, drawn with a fixed seed.
"""

from __future__ import annotations

import gc
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runner.timing.firetimes import Recurrence, next_fire

ZONES = [
    "UTC",
    "America/New_York",
    "America/Los_Angeles",
    "Europe/Amsterdam",
    "Europe/London",
    "Asia/Kolkata",
    "Asia/Tokyo",
    "Australia/Lord_Howe",
]
EVERY_MS = [10_000, 60_000, 300_000, 900_000, 3_600_000, 86_400_000]
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def expressions() -> list[str]:
    """About 200 distinct expressions, shaped like real crontabs."""
    daily = [f"{m} {h} * * *" for m in (0, 15, 30, 45) for h in range(24)]  # 96
    weekdays = [f"{m} {h} * * mon-fri" for m in (0, 30) for h in range(6, 20)]  # 28
    wildcard = [f"*/{n} * * * *" for n in (1, 2, 5, 10, 15, 20, 30)]
    wildcard += [f"{m} * * * *" for m in (0, 5, 17, 30, 45)]
    wildcard += [f"0 */{n} * * *" for n in (2, 3, 4, 6, 8, 12)]
    monthly = [f"0 {h} {d} * *" for h in (0, 3, 6) for d in (1, 15, 28)]  # 9
    special = [
        "0 0 L * *", "30 23 L * *", "0 9 15W * *", "0 9 1W * *", "0 0 * * 5#3", "0 8 * * 1#1",
        "0 18 * * 5L", "0 0 1 1 *", "0 12 1 */3 *", "0 9 1,15 * mon", "0 0 */2 * *",
        "*/30 * * * * *", "0 */5 * * * *", "15 30 4 * * *", "@hourly", "@daily", "@weekly",
        "@monthly", "@yearly", "5 1-3 * * *", "*/7 2 * * *", "0 9,17 * * 1-5", "0 22 * * sat,sun",
        "0 4 * jan,jul *", "0 0 29 2 *",
    ]  # fmt: skip
    extra = [
        f"{m} {h} * * {d}" for m, h, d in zip(range(1, 60, 2), range(24), range(7), strict=False)
    ]
    weekly = [f"0 {h} * * 1" for h in range(0, 24, 2)]  # 12
    return sorted(set(daily + weekdays + wildcard + monthly + special + extra + weekly))


def build_jobs(count: int, seed: int = 42) -> list[Recurrence]:
    rng = random.Random(seed)
    exprs = expressions()
    jobs = []
    for i in range(count):
        roll = rng.random()
        anchor = NOW - timedelta(seconds=rng.randrange(86_400))
        if roll < 0.80:
            jobs.append(Recurrence(cron=rng.choice(exprs), tz=rng.choice(ZONES), anchor=anchor))
        elif roll < 0.95:
            jobs.append(Recurrence(every_ms=rng.choice(EVERY_MS), anchor=anchor))
        else:
            start = NOW + timedelta(minutes=i % 10_000)
            jobs.append(Recurrence(start_at=start, anchor=anchor))
    return jobs


def rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


def timed(fn: object) -> tuple[float, object]:
    assert callable(fn)
    began = time.perf_counter()
    result = fn()
    return time.perf_counter() - began, result


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    base = rss()
    jobs = build_jobs(count)
    after_jobs = rss()
    build_s, firsts = timed(lambda: [next_fire(job, NOW) for job in jobs])
    after_schedule = rss()
    assert isinstance(firsts, list)
    recurring = [(job, fire) for job, fire in zip(jobs, firsts, strict=True) if job.cron]
    warm_s, _ = timed(lambda: [next_fire(job, NOW) for job in jobs])
    step_s, _ = timed(lambda: [next_fire(job, fire) for job, fire in recurring])
    fold = datetime(2026, 11, 1, 5, 30, tzinfo=UTC)  # New York's repeated hour begins 05:00Z
    fold_jobs = [job for job, _ in recurring if job.tz == "America/New_York"]
    fold_s, _ = timed(lambda: [next_fire(job, fold) for job in fold_jobs])
    rows = [
        ("jobs (cron / every / one-shot)", f"{count:,} ({len(recurring):,} / "
         f"{sum(1 for j in jobs if j.every_ms):,} / "
         f"{sum(1 for j in jobs if not j.cron and not j.every_ms):,})"),
        ("distinct cron expressions x zones", f"{len(expressions())} x {len(ZONES)}"),
        ("schedule build: first next_fire for all jobs (cold caches)", f"{build_s:.3f} s"),
        ("same, warm caches", f"{warm_s:.3f} s"),
        ("next_fire/s, all jobs (warm)", f"{count / warm_s:,.0f}"),
        ("next_fire/s, cron jobs advancing from their last fire",
         f"{len(recurring) / step_s:,.0f}"),
        ("next_fire/s, New York cron jobs inside the repeated hour",
         f"{len(fold_jobs) / fold_s:,.0f}"),
        ("RSS per job: Recurrence object", f"{(after_jobs - base) / count:,.0f} B"),
        ("RSS per job: Recurrence + first fire + shared caches",
         f"{(after_schedule - base) / count:,.0f} B"),
        ("RSS total at the end", f"{after_schedule / 2**20:,.1f} MiB"),
    ]  # fmt: skip
    print("| measure | value |")
    print("|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
