"""The APScheduler 3 side of bench/harness.py: one process, AsyncIOScheduler, date triggers.

    .venv/bin/python bench/aps_worker.py --base-url URL --instants FILE [--client aiohttp]
        [--scheduler none]

Reads scheduled instants (JSON list of epoch milliseconds, one job each), adds one date
job per instant, starts the scheduler and prints `ready` on stdout. `--scheduler none`
is the floor under any scheduler that calls through the same client: no scheduler
library at all, one `loop.call_at` per instant on the bare asyncio loop, each starting
the same call (no job store, no misfire checks, nothing written, nothing logged). Each job encrypts
the same payload the runner sends and POSTs it with httpx (default) or aiohttp, as a
careful user would: one client for the process, 16 connections and at most 64 calls at
once (the runner's defaults), with the key `apscheduler:<job>:<scheduled ms>`, so
lateness is measured at the emulator exactly as for the runner. SIGTERM prints a JSON
summary ({"ok": n, "errors": n}) and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from apscheduler.schedulers.asyncio import AsyncIOScheduler  # type: ignore[import-untyped]

from runner.ductape import emulator as emu
from runner.ductape import wire

PARAMS = [{"product": "p", "env": "dev", "tag": "t", "input": {}}]
POOL = 16  # the runner's max_connections
SLOTS = 64  # the runner's max_concurrent_runs


class Caller:
    """What every job runs: build and encrypt the proxy body, POST it, check the answer."""

    def __init__(self, base_url: str) -> None:
        self.url = base_url + wire.EXECUTE_PATH
        # As the runner's max_concurrent_runs (64): unbounded, a 10,000-task burst all
        # waiting on httpx's pool made no progress at all (0 calls in 20 s, measured).
        self.slots = asyncio.Semaphore(SLOTS)
        self.ok = 0
        self.errors = 0

    async def post(self, body: dict[str, Any], headers: dict[str, str]) -> bool:
        """POST the body; True on HTTP 200, False on any transport error."""
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

    async def __call__(self, key: str) -> None:
        payload = wire.build_payload("quotas", "run", PARAMS, emu.DEMO_USER_ID)
        body = wire.build_request_body(
            payload,
            workspace_id=emu.DEMO_WORKSPACE_ID,
            user_id=emu.DEMO_USER_ID,
            public_key=emu.DEMO_PUBLIC_KEY,
        )
        headers = {"x-access-token": emu.DEMO_ACCESS_TOKEN, wire.IDEMPOTENCY_HEADER: key}
        async with self.slots:
            good = await self.post(body, headers)
        if good:
            self.ok += 1
        else:
            self.errors += 1


class HttpxCaller(Caller):
    def __init__(self, base_url: str) -> None:
        super().__init__(base_url)
        limits = httpx.Limits(max_connections=POOL, max_keepalive_connections=POOL)
        # No pool timeout: a burst queues for a connection instead of failing.
        timeout = httpx.Timeout(30.0, pool=None)
        self.http = httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=False)

    async def post(self, body: dict[str, Any], headers: dict[str, str]) -> bool:
        try:
            response = await self.http.post(self.url, json=body, headers=headers)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def aclose(self) -> None:
        await self.http.aclose()


class AiohttpCaller(Caller):
    def __init__(self, base_url: str) -> None:
        super().__init__(base_url)
        # One session for the process; 30 s per call once a connection is ours (the
        # semaphore above keeps the connector's queue short, as for httpx).
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=30)
        connector = aiohttp.TCPConnector(limit=POOL)
        self.http = aiohttp.ClientSession(connector=connector, timeout=timeout)

    async def post(self, body: dict[str, Any], headers: dict[str, str]) -> bool:
        try:
            async with self.http.post(self.url, json=body, headers=headers) as response:
                await response.read()
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def aclose(self) -> None:
        await self.http.close()


CALLERS: dict[str, type[Caller]] = {"httpx": HttpxCaller, "aiohttp": AiohttpCaller}


CALLER: Caller | None = None


async def fire(key: str) -> None:
    """The job function: a plain coroutine function, so AsyncIOExecutor awaits it on the loop."""
    assert CALLER is not None
    await CALLER(key)


def schedule_bare(instants: list[int]) -> None:
    """One loop.call_at per instant, each creating the job's task: the least any asyncio
    program can do to start a call at an instant (wall clock mapped to the loop's)."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    def start(key: str) -> None:
        task = loop.create_task(fire(key))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    offset = loop.time() - time.time()
    for i, ms in enumerate(instants):
        loop.call_at(ms / 1000 + offset, start, f"asyncio:b{i:06d}:{ms}")


async def main_async(
    base_url: str, instants: list[int], client: str, scheduler_name: str = "apscheduler"
) -> dict[str, int]:
    global CALLER
    caller = CALLER = CALLERS[client](base_url)
    scheduler = None
    if scheduler_name == "none":
        schedule_bare(instants)
    else:
        # misfire_grace_time=None: a late job still runs (and its lateness is measured)
        # instead of being dropped after APScheduler's default 1 s grace.
        scheduler = AsyncIOScheduler(
            timezone=UTC, job_defaults={"misfire_grace_time": None, "coalesce": False}
        )
        for i, ms in enumerate(instants):
            name = f"b{i:06d}"
            scheduler.add_job(
                fire,
                "date",
                run_date=datetime.fromtimestamp(ms / 1000, UTC),
                args=[f"apscheduler:{name}:{ms}"],
                id=name,
            )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    if scheduler is not None:
        scheduler.start()
    print("ready", flush=True)
    await stop.wait()
    if scheduler is not None:
        scheduler.shutdown(wait=False)
    await caller.aclose()
    return {"ok": caller.ok, "errors": caller.errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--instants", type=Path, required=True)
    parser.add_argument("--client", choices=sorted(CALLERS), default="httpx")
    parser.add_argument("--scheduler", choices=["apscheduler", "none"], default="apscheduler")
    args = parser.parse_args()
    instants = json.loads(args.instants.read_text())
    summary = asyncio.run(main_async(args.base_url, instants, args.client, args.scheduler))
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
