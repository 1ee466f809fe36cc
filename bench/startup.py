"""Start-up of the real daemon on N cron jobs in F files: time to `daemon.started`, RSS per job.

    .venv/bin/python bench/startup.py [--jobs 100000] [--files 100] [--profile out.prof]
                                      [--tree DIR] [--peer]

Writes the folder, starts `ductape-runner run --dry-run` (nothing is called) on a fresh
state file and on the same state again (a restart), and prints a table. Each daemon is
stopped once it is idle after `daemon.started` (what it stores after the start is there
for the restart, as after any run longer than a few seconds). `--profile`
runs both starts under cProfile (PATH.fresh.prof, PATH.restart.prof). `--tree` starts
the daemon from another checkout (e.g. a worktree of main, for a before/after in one
session). The daemon's CPU seconds are printed beside the wall-clock time: on a shared
machine they move less than the wall clock. `--peer` also starts APScheduler 3 on the
same folder (bench/aps_cron.py: PyYAML's C loader, a CronTrigger per job, an aiohttp
session) and measures it the same way, to its `ready` line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
ZONES = ["UTC", "America/New_York", "Europe/Amsterdam", "Asia/Kolkata", "Australia/Lord_Howe"]


def write_folder(folder: Path, jobs: int, files: int) -> None:
    folder.mkdir(parents=True)
    per_file = -(-jobs // files)
    for f in range(files):
        lines = ["jobs:"]
        for i in range(f * per_file, min((f + 1) * per_file, jobs)):
            cron = f"{i % 60} {(i // 60) % 24} * * *"
            lines.append(
                f"  - {{name: c{i:06d}, kind: quota, product: p, env: dev, tag: t,"
                f" schedule: {{cron: '{cron}', tz: {ZONES[i % len(ZONES)]}}}}}"
            )
        (folder / f"jobs-{f:04d}.yaml").write_text("\n".join(lines) + "\n")


def start(tmp: Path, profile: Path | None, tree: Path) -> tuple[float, float, int]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp),
        "DUCTAPE_RUNNER_JOBS_DIR": str(tmp / "jobs.d"),
        "DUCTAPE_RUNNER_STATE": str(tmp / "state.sqlite3"),
        "DUCTAPE_RUNNER_CONTROL_SOCKET": str(tmp / "control.sock"),
        "DUCTAPE_RUNNER_LOG_JSON": "true",
    }
    command = [sys.executable]
    if profile is not None:
        command += ["-m", "cProfile", "-o", str(profile)]
    command += ["-m", "runner", "run", "--dry-run"]
    return until_ready(
        command,
        tmp / "runner.log",
        b'"daemon.started"',
        "daemon",
        600,
        cwd=tree,
        env=env,
        idle=True,
    )


def until_ready(
    command: list[str],
    log: Path,
    needle: bytes,
    what: str,
    limit_s: float,
    *,
    cwd: Path,
    env: dict[str, str] | None = None,
    idle: bool = False,
) -> tuple[float, float, int]:
    """Start `command`, logging to `log`, until `needle` is in the log: seconds to then,
    CPU seconds and RSS then. With `idle`, let it settle before it is stopped."""
    started = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
    try:
        while time.monotonic() - started < limit_s:
            if proc.poll() is not None:
                raise SystemExit(f"{what} exited {proc.returncode}: {log.read_text()[-2000:]}")
            if needle in log.read_bytes():
                ready_s = time.monotonic() - started
                process = psutil.Process(proc.pid)
                cpu = process.cpu_times()
                figures = ready_s, cpu.user + cpu.system, process.memory_info().rss
                if idle:
                    settle(process)
                return figures
            time.sleep(0.05)
        raise SystemExit(f"{what} not ready within {limit_s:g} s")
    finally:
        proc.terminate()
        proc.wait(30)


def start_peer(tmp: Path) -> tuple[float, float, int]:
    """bench/aps_cron.py on the same folder: time to `ready`, CPU, RSS then."""
    command = [sys.executable, str(ROOT / "bench" / "aps_cron.py"), "--folder", str(tmp / "jobs.d")]
    return until_ready(command, tmp / "peer.log", b"ready", "peer", 900, cwd=ROOT)


def settle(daemon: psutil.Process, timeout_s: float = 120.0) -> None:
    """Let the daemon finish what it does after `daemon.started` (storing each file's
    validated jobs for the next start) before it is stopped: until it has used under
    0.05 CPU s in half a second. A daemon that is restarted has usually run longer."""
    deadline = time.monotonic() + timeout_s
    last = sum(daemon.cpu_times()[:2])
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = sum(daemon.cpu_times()[:2])
        if now - last < 0.05:
            return
        last = now


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--profile", type=Path)
    parser.add_argument("--tree", type=Path, default=ROOT)
    parser.add_argument("--peer", action="store_true", help="also APScheduler 3, same folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        write_folder(tmp / "jobs.d", args.jobs, args.files)
        rows = []
        profiles = (
            (None, None)
            if args.profile is None
            else (
                args.profile.with_suffix(".fresh.prof"),
                args.profile.with_suffix(".restart.prof"),
            )
        )
        for label, profile in zip(("fresh state", "restart"), profiles, strict=True):
            ready_s, cpu_s, rss = start(tmp, profile, args.tree.resolve())
            rows.append((label, ready_s, cpu_s, rss))
        if args.peer:
            rows.append(("APScheduler 3 (peer)", *start_peer(tmp)))
    print(f"{args.jobs:,} cron jobs in {args.files} files, `run --dry-run`, to daemon.started")
    print("| start | ready (s) | CPU (s) | RSS (MiB) | RSS per job (B) |")
    print("|---|---:|---:|---:|---:|")
    for label, ready_s, cpu_s, rss in rows:
        mib, per_job = rss / 2**20, rss / args.jobs
        print(f"| {label} | {ready_s:.2f} | {cpu_s:.2f} | {mib:.0f} | {per_job:,.0f} |")
    if args.peer:
        peer = rows[-1][3]
        for label, _, _, rss in rows[:-1]:
            print(f"RSS per job, runner ({label}) / peer: {rss / peer:.2f}")
    print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
