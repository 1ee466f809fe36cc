"""Load and validate N generated job files; print files per second (issue: >= 5,000/s).

.venv/bin/python bench/load.py [--files 10000]
"""

from __future__ import annotations

import argparse
import platform
import random
import tempfile
import time
from pathlib import Path

from runner.jobs.loader import load_folder

KINDS = [
    "kind: action\napp: billing\nevent: charge\n",
    "kind: workflow\nworkflow: nightly\n",
    "kind: notification\nnotification: orders\nevent: shipped\n",
    "kind: database\ndatabase: inv\noperation: insert\n",
    "type: feature\nevent: digest\nstart_at: 0\nrepeat:\n  every: 86400000\n  limit: 10\n",
]
SCHEDULES = [
    "schedule:\n  cron: '*/15 * * * *'\n",
    "schedule:\n  cron: '0 9 * * 1-5'\n  tz: America/New_York\n",
    "schedule:\n  every: 15m\n",
    "schedule:\n  cron: '30 2 * * *'\n  tz: Europe/Amsterdam\n  limit: 100\n",
]


def generate(folder: Path, count: int) -> None:
    rng = random.Random(7)
    for i in range(count):
        body = rng.choice(KINDS)
        if "repeat" not in body:
            body += rng.choice(SCHEDULES)
        text = f"# job {i}\nname: job-{i:05d}\nproduct: shop\nenv: prd\n{body}"
        text += f"input:\n  customer: c-{i}\n  amount: {i % 100}\nretries: {i % 4}\n"
        suffix = ".yaml"
        (folder / f"job-{i:05d}{suffix}").write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        generate(folder, args.files)
        load_folder([folder])  # warm caches (zone data, cron parsing) like a running daemon
        start = time.perf_counter()
        result = load_folder([folder])
        elapsed = time.perf_counter() - start
    problems = result.all_problems()
    assert not problems, problems[:3]
    print(
        f"machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}"
    )
    print("| files | valid jobs | seconds | files/s |")
    print("|---:|---:|---:|---:|")
    print(f"| {args.files} | {len(result.jobs)} | {elapsed:.3f} | {args.files / elapsed:,.0f} |")


if __name__ == "__main__":
    main()
