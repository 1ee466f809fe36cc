"""The APScheduler 3 side of bench/harness.py: one process, AsyncIOScheduler, date triggers.

    .venv/bin/python bench/aps_worker.py --base-url URL --instants FILE

Reads scheduled instants (JSON list of epoch milliseconds, one job each), adds one date
job per instant, starts the scheduler and prints `ready` on stdout. Each job encrypts
the same payload the runner sends and POSTs it with httpx (a 16-connection pool and at
most 64 calls at once, as the runner's defaults), with the key
`apscheduler:<job>:<scheduled ms>`, so lateness is measured at the emulator exactly as
for the runner. SIGTERM prints a JSON summary
({"ok": n, "errors": n}) and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from datetime import UTC, datetime
from pathlib import Path

import httpx
from apscheduler.schedulers.asyncio import AsyncIOScheduler  # type: ignore[import-untyped]

from runner.ductape import emulator as emu
from runner.ductape import wire

PARAMS = [{"product": "p", "env": "dev", "tag": "t", "input": {}}]


class Caller:
    """What every job runs: build and encrypt the proxy body, POST it, check the answer."""

    def __init__(self, base_url: str) -> None:
        limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
        # No pool timeout: a burst queues for a connection instead of failing.
        timeout = httpx.Timeout(30.0, pool=None)
        self.http = httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=False)
        self.url = base_url + wire.EXECUTE_PATH
        # As the runner's max_concurrent_runs (64): unbounded, a 10,000-task burst all
        # waiting on httpx's pool made no progress at all (0 calls in 20 s, measured).
        self.slots = asyncio.Semaphore(64)
        self.ok = 0
        self.errors = 0

    async def __call__(self, key: str) -> None:
        payload = wire.build_payload("quotas", "run", PARAMS, emu.DEMO_USER_ID)
        body = wire.build_request_body(
            payload,
            workspace_id=emu.DEMO_WORKSPACE_ID,
            user_id=emu.DEMO_USER_ID,
            public_key=emu.DEMO_PUBLIC_KEY,
        )
        headers = {"x-access-token": emu.DEMO_ACCESS_TOKEN, wire.IDEMPOTENCY_HEADER: key}
        try:
            async with self.slots:
                response = await self.http.post(self.url, json=body, headers=headers)
            good = response.status_code == 200
        except httpx.HTTPError:
            good = False
        if good:
            self.ok += 1
        else:
            self.errors += 1


CALLER: Caller | None = None


async def fire(key: str) -> None:
    """The job function: a plain coroutine function, so AsyncIOExecutor awaits it on the loop."""
    assert CALLER is not None
    await CALLER(key)


async def main_async(base_url: str, instants: list[int]) -> dict[str, int]:
    global CALLER
    caller = CALLER = Caller(base_url)
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
    scheduler.start()
    print("ready", flush=True)
    await stop.wait()
    scheduler.shutdown(wait=False)
    await caller.http.aclose()
    return {"ok": caller.ok, "errors": caller.errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--instants", type=Path, required=True)
    args = parser.parse_args()
    instants = json.loads(args.instants.read_text())
    print(json.dumps(asyncio.run(main_async(args.base_url, instants))), flush=True)


if __name__ == "__main__":
    main()
