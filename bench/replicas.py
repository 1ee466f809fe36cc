"""Occurrences per second with 1 and 3 replicas on one PostgreSQL database (SQLite for scale).

    .venv/bin/python bench/replicas.py [--jobs 2000] [--dsn postgresql://root@127.0.0.1/postgres]

N one-shot jobs all due at the same instant, real `ductape-runner run` processes, one
emulator process. Measured: from the due instant until the emulator has received all
N calls (each key once), so it includes claiming, the call and the bookkeeping. Each
PostgreSQL row uses a fresh database, dropped afterwards.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import psutil
import psycopg

from runner.ductape import emulator as emu


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_emulator(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", "emulator", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/_emulator/calls", timeout=1).raise_for_status()
            return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("emulator did not start")


def write_jobs(folder: Path, count: int, start_ms: int) -> None:
    folder.mkdir(parents=True)
    for first in range(0, count, 100):
        docs = [
            f"name: job-{i:05d}\nkind: quota\nproduct: p\nenv: dev\ntag: t\n"
            f"schedule: {{start_at: {start_ms}}}\nconcurrency: allow\n"
            for i in range(first, min(first + 100, count))
        ]
        (folder / f"batch-{first:05d}.yaml").write_text("---\n".join(docs))


def replica_env(work: Path, name: str, state: str, port: int) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(work),
        "DUCTAPE_RUNNER_JOBS_DIR": str(work / "jobs.d"),
        "DUCTAPE_RUNNER_STATE": state,
        "DUCTAPE_RUNNER_REPLICA_ID": name,
        "DUCTAPE_RUNNER_BASE_URL": f"http://127.0.0.1:{port}",
        "DUCTAPE_RUNNER_WORKSPACE_ID": emu.DEMO_WORKSPACE_ID,
        "DUCTAPE_RUNNER_USER_ID": emu.DEMO_USER_ID,
        "DUCTAPE_RUNNER_PUBLIC_KEY": emu.DEMO_PUBLIC_KEY,
        "DUCTAPE_RUNNER_ACCESS_TOKEN": emu.DEMO_ACCESS_TOKEN,
        "DUCTAPE_RUNNER_CONTROL_SOCKET": str(work / f"{name}.sock"),
        "DUCTAPE_RUNNER_LOG_LEVEL": "warning",
        "DUCTAPE_RUNNER_LOG_JSON": "true",
    }


def run_case(replicas: int, state: str, jobs: int, port: int) -> tuple[float, int]:
    """Seconds from the due instant to the last call, and keys called more than once."""
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    http.delete("/_emulator/calls").raise_for_status()
    start_ms = (int(time.time()) + 6 + replicas) * 1000
    procs = []
    with tempfile.TemporaryDirectory(prefix="bench-replicas-") as tmp:
        for i in range(replicas):
            work = Path(tmp) / f"r{i}"
            write_jobs(work / "jobs.d", jobs, start_ms)
            env = replica_env(work, f"r{i}", state, port)
            log = (work / "daemon.log").open("wb")
            cmd = [sys.executable, "-m", "runner", "run"]
            procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
        try:
            keys = wait_for_calls(http, jobs, timeout_s=120 + start_ms / 1000 - time.time())
            elapsed = time.time() - start_ms / 1000
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=60)
    http.close()
    return elapsed, sum(1 for n in keys.values() if n > 1)


def wait_for_calls(http: httpx.Client, jobs: int, timeout_s: float) -> Counter[str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        calls = http.get("/_emulator/calls").json()
        keys = Counter(c["idempotency_key"] for c in calls)
        if len(keys) >= jobs:
            return keys
        time.sleep(0.05)
    raise RuntimeError(f"only {len(keys)} of {jobs} occurrences reached the emulator")


def fresh_database(admin_dsn: str) -> tuple[str, str]:
    name = f"bench_replicas_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    params = psycopg.conninfo.conninfo_to_dict(admin_dsn)
    host, db_port = params.get("host", "127.0.0.1"), params.get("port", 5432)
    return name, f"postgresql://{params.get('user', 'root')}@{host}:{db_port}/{name}"


def drop_database(admin_dsn: str, name: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--dsn", default="postgresql://root@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    port = free_port()
    emulator = start_emulator(port)
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            elapsed, twice = run_case(1, str(Path(tmp) / "state.sqlite3"), args.jobs, port)
            rows.append(("SQLite", 1, elapsed, twice))
        for replicas in (1, 3):
            name, dsn = fresh_database(args.dsn)
            try:
                elapsed, twice = run_case(replicas, dsn, args.jobs, port)
            finally:
                drop_database(args.dsn, name)
            rows.append(("PostgreSQL", replicas, elapsed, twice))
    finally:
        emulator.terminate()
        emulator.wait(timeout=10)
    cores = psutil.cpu_count()
    print(f"machine: {platform.machine()}, {cores} cores, Python {platform.python_version()}")
    print("| state | replicas | occurrences | seconds | occurrences/s | keys called twice |")
    print("|---|---:|---:|---:|---:|---:|")
    for state, replicas, elapsed, twice in rows:
        rate = args.jobs / elapsed
        print(f"| {state} | {replicas} | {args.jobs} | {elapsed:.2f} | {rate:,.0f} | {twice} |")


if __name__ == "__main__":
    main()
