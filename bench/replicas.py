"""Occurrences per second with 1 and 3 replicas on one PostgreSQL database, and one on SQLite.

    .venv/bin/python bench/replicas.py [--jobs 2000] [--delay-ms 100] [--in-flight 64]
        [--repeat 3] [--dsn postgresql://root@127.0.0.1/postgres]

N one-shot jobs all due at the same instant, real `ductape-runner run` processes, one
emulator process. Every configuration runs in the same invocation, in rounds (each row
is the median of `--repeat` rounds), so their ratios are comparable on a busy machine:
SQLite and PostgreSQL with one replica, then PostgreSQL with three, each with Ductape
answering at once and with every call delayed by `--delay-ms` (the emulator's
`delay_ms` fault). Each replica runs `--in-flight` calls at once (`max_concurrent_runs`
and `max_connections`), so one replica's bound with the delay is in_flight / delay
(640/s for 64 and 100 ms). Measured: from the due instant until the emulator has
received all N calls (each key once), so it includes claiming, the call and the
bookkeeping; and the CPU seconds the replicas, the emulator and the PostgreSQL server
used meanwhile (against cores x seconds, the machine's limit), and their sum per
occurrence: on a machine where they all share the cores, cores / that sum bounds the
rate whatever the number of replicas. Each PostgreSQL row uses a fresh database,
dropped afterwards.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def replica_env(work: Path, name: str, state: str, port: int, in_flight: int) -> dict[str, str]:
    return {
        "DUCTAPE_RUNNER_MAX_CONCURRENT_RUNS": str(in_flight),
        "DUCTAPE_RUNNER_MAX_CONNECTIONS": str(in_flight),
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


@dataclass
class Case:
    """One configuration to measure."""

    state: str  # SQLite | PostgreSQL
    replicas: int
    delay_ms: int


@dataclass
class Result:
    """Seconds from the due instant to the last call, keys called more than once, and
    the CPU seconds the replicas and the emulator used meanwhile."""

    seconds: float
    twice: int
    replicas_cpu_s: float
    emulator_cpu_s: float
    postgres_cpu_s: float = 0.0


def cpu_s(pids: list[int]) -> float:
    return sum(sum(psutil.Process(pid).cpu_times()[:2]) for pid in pids)


def postgres_cpu_s() -> float:
    """CPU seconds of every PostgreSQL server process on this machine (backends come and
    go with connections; one that ended during the round is missed, so this is a floor)."""
    total = 0.0
    for proc in psutil.process_iter(["name", "cpu_times"]):
        if proc.info["name"] in ("postgres", "postmaster") and proc.info["cpu_times"]:
            total += sum(proc.info["cpu_times"][:2])
    return total


def run_case(
    case: Case, state: str, jobs: int, port: int, in_flight: int, emulator_pid: int
) -> Result:
    replicas = case.replicas
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    http.delete("/_emulator/calls").raise_for_status()
    http.delete("/_emulator/faults").raise_for_status()
    if case.delay_ms:
        fault = {"target": "*", "count": jobs * 10, "delay_ms": case.delay_ms}
        http.post("/_emulator/faults", json=fault).raise_for_status()
    start_ms = (int(time.time()) + 6 + replicas) * 1000
    procs = []
    with tempfile.TemporaryDirectory(prefix="bench-replicas-") as tmp:
        for i in range(replicas):
            work = Path(tmp) / f"r{i}"
            write_jobs(work / "jobs.d", jobs, start_ms)
            env = replica_env(work, f"r{i}", state, port, in_flight)
            log = (work / "daemon.log").open("wb")
            cmd = [sys.executable, "-m", "runner", "run"]
            procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
        try:
            time.sleep(max(start_ms / 1000 - time.time(), 0))
            pids = [proc.pid for proc in procs]
            before = cpu_s(pids), cpu_s([emulator_pid]), postgres_cpu_s()
            timeout_s = 120 + start_ms / 1000 - time.time()
            done_at, keys = wait_for_calls(http, jobs, timeout_s)
            after = cpu_s(pids), cpu_s([emulator_pid]), postgres_cpu_s()
            elapsed = done_at - start_ms / 1000
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=60)
    http.close()
    twice = sum(1 for n in keys.values() if n > 1)
    database = after[2] - before[2] if case.state == "PostgreSQL" else 0.0
    return Result(elapsed, twice, after[0] - before[0], after[1] - before[1], database)


def wait_for_calls(http: httpx.Client, jobs: int, timeout_s: float) -> tuple[float, Counter[str]]:
    """When every key had arrived (polling the emulator's count, which is cheap, so the
    polling does not slow it down), and the calls per key (read once, after)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if http.get("/_emulator/calls/count").json()["keys"] >= jobs:
            done_at = time.time()
            calls = http.get("/_emulator/calls").json()
            return done_at, Counter(c["idempotency_key"] for c in calls)
        time.sleep(0.02)
    raise RuntimeError(f"not all {jobs} occurrences reached the emulator in time")


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


def measure(case: Case, args: argparse.Namespace, port: int, emulator_pid: int) -> Result:
    if case.state == "SQLite":
        with tempfile.TemporaryDirectory() as tmp:
            path = str(Path(tmp) / "state.sqlite3")
            return run_case(case, path, args.jobs, port, args.in_flight, emulator_pid)
    name, dsn = fresh_database(args.dsn)
    try:
        return run_case(case, dsn, args.jobs, port, args.in_flight, emulator_pid)
    finally:
        drop_database(args.dsn, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--delay-ms", type=int, default=100)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3, help="rounds; each row is the median")
    parser.add_argument("--dsn", default="postgresql://root@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    cases = [
        Case(state, replicas, delay)
        for delay in (0, args.delay_ms)
        for state, replicas in (("SQLite", 1), ("PostgreSQL", 1), ("PostgreSQL", 3))
    ]
    port = free_port()
    emulator = start_emulator(port)
    results: dict[int, list[Result]] = {i: [] for i in range(len(cases))}
    try:
        for _ in range(args.repeat):  # rounds, so a busy spell hits every configuration
            for i, case in enumerate(cases):
                results[i].append(measure(case, args, port, emulator.pid))
    finally:
        emulator.terminate()
        emulator.wait(timeout=10)
    rows = [(case, median_result(results[i])) for i, case in enumerate(cases)]
    rates = {(c.state, c.replicas, c.delay_ms): args.jobs / r.seconds for c, r in rows}
    print_table(args, rows, rates)


def median_result(results: list[Result]) -> Result:
    """The median of each figure (keys called twice: the most in any round)."""
    return Result(
        statistics.median(r.seconds for r in results),
        max(r.twice for r in results),
        statistics.median(r.replicas_cpu_s for r in results),
        statistics.median(r.emulator_cpu_s for r in results),
        statistics.median(r.postgres_cpu_s for r in results),
    )


def print_table(
    args: argparse.Namespace, rows: list[tuple[Case, Result]], rates: dict[Any, float]
) -> None:
    cores = psutil.cpu_count()
    print(f"machine: {platform.machine()}, {cores} cores, Python {platform.python_version()}")
    print(
        f"{args.jobs} one-shots due at one instant; {args.in_flight} calls in flight per "
        f"replica; median of {args.repeat} rounds"
    )
    print(
        "| Ductape delay | state | replicas | seconds | occurrences/s | vs "
        "| keys called twice | CPU s: replicas, emulator, PostgreSQL | CPU ms per occurrence |"
    )
    print("|---:|---|---:|---:|---:|---|---:|---:|---:|")
    for case, result in rows:
        rate = args.jobs / result.seconds
        used = result.replicas_cpu_s + result.emulator_cpu_s + result.postgres_cpu_s
        cpu_ms = used * 1000 / args.jobs  # all processes: what bounds the rate on this machine
        if case.replicas == 3:
            peer = rates["PostgreSQL", 1, case.delay_ms]
            versus = f"{rate / peer:.2f}x one PostgreSQL replica"
        elif case.state == "PostgreSQL":
            versus = f"{rate / rates['SQLite', 1, case.delay_ms]:.2f}x SQLite"
        else:
            versus = ""
        if case.delay_ms and case.replicas == 1:
            bound = args.in_flight * 1000 / case.delay_ms
            versus += f"{'; ' if versus else ''}{rate / bound:.0%} of {bound:,.0f}/s bound"
        print(
            f"| {case.delay_ms} ms | {case.state} | {case.replicas} | {result.seconds:.2f} "
            f"| {rate:,.0f} | {versus} | {result.twice} "
            f"| {result.replicas_cpu_s:.1f}, {result.emulator_cpu_s:.1f}, "
            f"{result.postgres_cpu_s:.1f} | {cpu_ms:.2f} |"
        )


if __name__ == "__main__":
    main()
