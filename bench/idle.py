"""Idle cost of the daemon: CPU over a window with N jobs whose next fire is an hour away.

    .venv/bin/python bench/idle.py [--jobs 10000] [--seconds 60]

Starts the real daemon process (built-in emulator, temp folder and state), waits until
it has loaded and settled, then samples its CPU time and RSS over the window.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil


def write_jobs(folder: Path, count: int) -> None:
    first = datetime.now(UTC) + timedelta(hours=1)  # every job's next fire is an hour away
    for i in range(count):
        start = (first + timedelta(seconds=i % 600)).isoformat()
        (folder / f"job-{i:05d}.yaml").write_text(
            f"kind: quota\nproduct: p\nenv: prd\ntag: t{i}\n"
            f"schedule: {{start_at: '{start}', every: 1h}}\n"
        )


def wait_started(log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if '"daemon.started"' in line:
                return
        time.sleep(0.2)
    raise SystemExit(f"daemon did not start:\n{log.read_text()[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        jobs = root / "jobs.d"
        jobs.mkdir()
        write_jobs(jobs, args.jobs)
        env = {
            **os.environ,
            "DUCTAPE_RUNNER_LOG_JSON": "true",
            "DUCTAPE_RUNNER_CONTROL_SOCKET": str(root / "control.sock"),
        }
        log = root / "daemon.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "runner", "run", "--emulator", "--jobs-dir", str(jobs),
                 "--state", str(root / "state.sqlite3")],
                env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            wait_started(log, 300)
            time.sleep(5)  # let the first resync and start-up work finish
            ps = psutil.Process(proc.pid)
            cpu0, wall0 = ps.cpu_times(), time.monotonic()
            rss_peak = 0
            while time.monotonic() - wall0 < args.seconds:
                rss_peak = max(rss_peak, ps.memory_info().rss)
                time.sleep(1)
            cpu1, wall = ps.cpu_times(), time.monotonic() - wall0
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        runs = sum(1 for line in log.read_text().splitlines() if '"run.finished"' in line)
    cpu = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    print(
        f"machine: {platform.machine()}, {psutil.cpu_count()} cores, "
        f"Python {platform.python_version()}"
    )
    print("| jobs | window s | CPU s | % of one core | RSS MiB | runs in window |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {args.jobs:,} | {wall:.0f} | {cpu:.2f} | {100 * cpu / wall:.2f}% | "
        f"{rss_peak / 2**20:.0f} | {runs} |"
    )


if __name__ == "__main__":
    main()
