"""Dispatch benchmark: N immediately-due occurrences through the runner vs a bare httpx loop.

    .venv/bin/python bench/dispatch.py [--n 10000] [--concurrency 64]

Three rows, same emulator, same concurrency, one run: the bare floor (encrypt + POST);
the client alone (build_operation + DuctapeClient.execute); and the runner itself: N
one-shot jobs due now, fired by the real Scheduler, written to a real SQLite state file
before each call, executed by DuctapeExecutor with a global limit of `concurrency`.
The emulator runs in its own process so the client side is measured on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import structlog
from pydantic import SecretStr

from runner.daemon.execute import DuctapeExecutor, RunHooks
from runner.daemon.scheduler import Scheduler
from runner.ductape import emulator as emu
from runner.ductape import wire
from runner.ductape.client import Credentials, DuctapeClient
from runner.ductape.operations import build_operation
from runner.jobs.loader import LoadedJob
from runner.jobs.model import JOB_ADAPTER, Job
from runner.store import Occurrence
from runner.store.sqlite import SqliteStore
from runner.timing.clock import SystemClock

ROOT = Path(__file__).resolve().parent.parent
JOB = JOB_ADAPTER.validate_python(
    {
        "name": "bench",
        "kind": "action",
        "product": "shop",
        "env": "prd",
        "app": "mailer",
        "event": "send_digest",
        "input": {"to": "ops@example.com", "items": list(range(20))},
    }
)


@dataclass(frozen=True)
class Measure:
    label: str
    calls: int
    wall_s: float
    cpu_s: float

    @property
    def rate(self) -> float:
        return self.calls / self.wall_s


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_emulator(port: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "runner.ductape.emulator", "--port", str(port)]
    command += ["--no-access-log", "--log-level", "warning"]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/_emulator/calls", timeout=0.5)
            return proc
        except httpx.TransportError:
            time.sleep(0.05)
    proc.terminate()
    raise SystemExit("emulator did not start")


async def run_workers(n: int, concurrency: int, one: Callable[[int], Awaitable[None]]) -> None:
    counter = itertools.count()

    async def worker() -> None:
        while (i := next(counter)) < n:
            await one(i)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def measure(
    label: str, n: int, concurrency: int, one: Callable[[int], Awaitable[None]]
) -> Measure:
    await run_workers(min(n, 200), concurrency, one)  # warm the pool and caches
    wall, cpu = time.perf_counter(), time.process_time()
    await run_workers(n, concurrency, one)
    return Measure(label, n, time.perf_counter() - wall, time.process_time() - cpu)


async def bare(creds: Credentials, n: int, concurrency: int, pool: int) -> Measure:
    """The floor: encrypt, POST, check status; no operation building, no classification."""
    limits = httpx.Limits(max_connections=pool, max_keepalive_connections=pool)
    url = creds.base_url + wire.EXECUTE_PATH
    token = creds.access_token.get_secret_value()
    params = build_operation(
        JOB, idempotency_key="k", default_product=None, default_env=None
    ).params
    async with httpx.AsyncClient(limits=limits, trust_env=False) as http:

        async def one(i: int) -> None:
            payload = wire.build_payload("actions", "run", params, creds.user_id)
            body = wire.build_request_body(
                payload,
                workspace_id=creds.workspace_id,
                user_id=creds.user_id,
                public_key=creds.public_key,
            )
            headers = {"x-access-token": token, "Idempotency-Key": f"bare-{i}"}
            response = await http.post(url, json=body, headers=headers, timeout=10)
            if response.json().get("status") is not True:
                raise RuntimeError(f"call {i} failed: {response.text[:200]}")

        return await measure("bare httpx.AsyncClient", n, concurrency, one)


async def client(creds: Credentials, n: int, concurrency: int, pool: int) -> Measure:
    """The runner's path: build_operation + DuctapeClient.execute."""
    async with DuctapeClient(
        creds, max_connections=pool, max_keepalive_connections=pool
    ) as ductape:

        async def one(i: int) -> None:
            key = f"bench:{i}"
            op = build_operation(JOB, idempotency_key=key, default_product=None, default_env=None)
            await ductape.execute(op, idempotency_key=key, timeout_s=10)

        return await measure("build_operation + DuctapeClient.execute", n, concurrency, one)


async def runner(creds: Credentials, n: int, concurrency: int, pool: int) -> Measure:
    """The whole runner path: scheduler, state file, executor, client."""
    jobs = {}
    for i in range(n):
        job = JOB.model_copy(update={"name": f"bench-{i}"})
        jobs[job.name] = LoadedJob(job, "bench", 1, f"digest-{i}")
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "state.sqlite3")
        async with DuctapeClient(
            creds, max_connections=pool, max_keepalive_connections=pool
        ) as ductape:
            clock = SystemClock()
            finished = asyncio.Event()
            count = itertools.count(1)

            def on_finished(job: Job, occ: Occurrence) -> None:
                if next(count) == n:
                    finished.set()

            hooks = RunHooks(on_finished=on_finished)
            executor = DuctapeExecutor(ductape, store, clock, hooks=hooks)
            scheduler = Scheduler(store, executor, clock, max_concurrent=concurrency)
            wall, cpu = time.perf_counter(), time.process_time()
            with store.batch():
                scheduler.start(jobs)
            loop = asyncio.create_task(scheduler.run())
            await finished.wait()
            measured = Measure(
                "runner: Scheduler + SQLite + DuctapeExecutor",
                n,
                time.perf_counter() - wall,
                time.process_time() - cpu,
            )
            scheduler.stop()
            await loop
        done = store.db.execute("SELECT count(*) FROM occurrences WHERE state = 'succeeded'")
        succeeded = done.fetchone()[0]
        store.close()
    if succeeded != n:
        raise SystemExit(f"only {succeeded} of {n} occurrences succeeded")
    return measured


def table(results: list[Measure], concurrency: int, pool: int) -> str:
    lines = [
        "| path | calls | concurrency | pool | wall s | calls/s | client CPU µs/call |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for m in results:
        cpu_us = m.cpu_s / m.calls * 1e6
        cells = [m.label, str(m.calls), str(concurrency), str(pool), f"{m.wall_s:.2f}"]
        cells += [f"{m.rate:,.0f}", f"{cpu_us:,.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    base, ours, whole = results
    lines.append("")
    lines.append(f"ratio client / bare: {ours.rate / base.rate:.2f}")
    lines.append(f"ratio runner / bare: {whole.rate / base.rate:.2f} (aim >= 0.8)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--pool", type=int, default=16, help="max connections (runner default)")
    args = parser.parse_args()
    # As the daemon runs: per-call debug events filtered out, not printed.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    pool = args.pool
    port = free_port()
    proc = start_emulator(port)
    creds = Credentials(
        base_url=f"http://127.0.0.1:{port}",
        workspace_id=emu.DEMO_WORKSPACE_ID,
        user_id=emu.DEMO_USER_ID,
        public_key=emu.DEMO_PUBLIC_KEY,
        access_token=SecretStr(emu.DEMO_ACCESS_TOKEN),
    )
    try:
        results = [asyncio.run(bare(creds, args.n, args.concurrency, pool))]
        httpx.delete(f"{creds.base_url}/_emulator/calls")
        results.append(asyncio.run(client(creds, args.n, args.concurrency, pool)))
        httpx.delete(f"{creds.base_url}/_emulator/calls")
        results.append(asyncio.run(runner(creds, args.n, args.concurrency, pool)))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    print(table(results, args.concurrency, pool))


if __name__ == "__main__":
    main()
