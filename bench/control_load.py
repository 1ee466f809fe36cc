"""Does serving the control API delay due occurrences? Fire lateness with clients hammering it.

    .venv/bin/python bench/control_load.py [--jobs 50000] [--due 300] [--window 30]
        [--clients 4] [--paths /metrics,/jobs]

One real daemon per scenario (built-in emulator in its own process, temp folder and
state, control TCP listener on): `--jobs` cron jobs that never fire in the window (they
make /metrics and /jobs big) and `--due` one-shots spread evenly over `--window` seconds.
Scenario "quiet" serves nothing; each path in `--paths` is then hammered by `--clients`
threads for the whole window (the token from the daemon's `control.token`). The table
gives the one-shots' fire lateness (emulator arrival minus instant), how many never
arrived or were late enough to count as missed, and what the clients got.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from harness import (
    emulator_process,
    fetch_calls,
    free_port,
    lateness,
    machine,
    percentile,
    start_runner,
    stop,
    wait_for_line,
)

JOBS_PER_FILE = 1000


@dataclass
class Row:
    scenario: str
    late: list[float]
    missing: int
    missed_events: int
    requests: int
    mean_ms: float


def write_jobs(folder: Path, jobs: int, instants: list[int]) -> None:
    folder.mkdir()
    for start in range(0, jobs, JOBS_PER_FILE):
        lines = ["jobs:"]
        for i in range(start, min(start + JOBS_PER_FILE, jobs)):
            lines.append(
                f"  - {{name: far{i:06d}, kind: quota, product: p, env: dev, tag: t,"
                f" schedule: {{cron: '0 0 1 1 *'}}}}"
            )
        (folder / f"far-{start // JOBS_PER_FILE:04d}.yaml").write_text("\n".join(lines) + "\n")
    lines = ["jobs:"]
    for i, instant in enumerate(instants):
        lines.append(
            f"  - {{name: due{i:05d}, kind: quota, product: p, env: dev, tag: t,"
            f" schedule: {{start_at: {instant}}}}}"
        )
    (folder / "due.yaml").write_text("\n".join(lines) + "\n")


def hammer(url: str, path: str, token: str, until: float, out: list[float]) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, trust_env=False, timeout=30, headers=headers) as client:
        while time.monotonic() < until:
            began = time.monotonic()
            client.get(path).raise_for_status()
            out.append(time.monotonic() - began)


def scenario(name: str, path: str | None, args: argparse.Namespace) -> Row:
    tmp = Path(tempfile.mkdtemp(prefix="control-load-"))
    try:
        with emulator_process() as emulator_url:
            port = free_port()
            lead = 10.0 + args.jobs / 1200  # start-up grows with the job count
            first = time.time() + lead
            step = args.window / args.due
            instants = [int((first + i * step) * 1000) for i in range(args.due)]
            write_jobs(tmp / "jobs.d", args.jobs, instants)
            tcp = {"DUCTAPE_RUNNER_CONTROL_TCP": f"127.0.0.1:{port}"}
            proc, log = start_runner(tmp, emulator_url, None, tcp)
            try:
                wait_for_line(log, "daemon.started", proc, lead)
                token = (tmp / "control.token").read_text().strip()
                times: list[float] = []
                until = instants[-1] / 1000 - time.time() + time.monotonic() + 1
                threads = [
                    threading.Thread(
                        target=hammer, args=(f"http://127.0.0.1:{port}", path, token, until, times)
                    )
                    for _ in range(args.clients if path else 0)
                ]
                for thread in threads:
                    thread.start()
                time.sleep(max(instants[-1] / 1000 - time.time(), 0) + 3)
                for thread in threads:
                    thread.join()
                calls = fetch_calls(emulator_url)
            finally:
                stop(proc)
            text = log.read_text(errors="replace")
            late, _ = lateness(calls)
            return Row(
                scenario=name,
                late=late,
                missing=args.due - len({c["idempotency_key"] for c in calls}),
                missed_events=text.count('"schedule.catchup"'),
                requests=len(times),
                mean_ms=1000 * sum(times) / len(times) if times else 0.0,
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50_000)
    parser.add_argument("--due", type=int, default=300)
    parser.add_argument("--window", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--paths", default="/metrics,/jobs")
    args = parser.parse_args()
    rows = [scenario("quiet", None, args)]
    for path in filter(None, args.paths.split(",")):
        rows.append(scenario(f"{path} x{args.clients}", path, args))
    print(f"machine: {machine()}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"{args.jobs:,} far jobs, {args.due} one-shots over {args.window:g} s\n")
    print(
        "| scenario | lateness p50 ms | p99 ms | max ms | never arrived | catch-up events "
        "| requests served | mean response ms |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row.scenario} | {percentile(row.late, 0.5):.1f} | {percentile(row.late, 0.99):.1f}"
            f" | {max(row.late, default=float('nan')):.1f} | {row.missing} | {row.missed_events}"
            f" | {row.requests:,} | {row.mean_ms:.0f} |"
        )


if __name__ == "__main__":
    sys.exit(main())
