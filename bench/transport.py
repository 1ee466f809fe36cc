"""Transport benchmark: the same encrypted SDK-proxy call over three HTTP clients, one run.

    .venv/bin/python bench/transport.py [--n 4000] [--concurrency 64] [--pool 16]

Rows, each against the same emulator (its own process, so the CPU column is the client's):
httpx.AsyncClient with its own pool (the runner's transport until now); httpx's API over
httpx-aiohttp's AiohttpTransport; aiohttp.ClientSession alone; and DuctapeClient.execute
as the runner calls it (aiohttp, plus operation building, classification, the gate). The
three bare rows do the same work per call: build and encrypt the body, POST it, read and
parse the answer. Each row warms its pool first; `--repeat` runs the whole set again.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import aiohttp
import httpx
import structlog
from dispatch import JOB, Measure, free_port, measure, start_emulator
from httpx_aiohttp import AiohttpTransport
from pydantic import SecretStr

from runner.ductape import emulator as emu
from runner.ductape import wire
from runner.ductape.client import Credentials, DuctapeClient
from runner.ductape.operations import build_operation

Post = Callable[[str, bytes, dict[str, str]], Awaitable[tuple[int, bytes]]]


def body_for(creds: Credentials, i: int) -> tuple[bytes, dict[str, str]]:
    """What every bare row sends: the runner's encrypted body and headers."""
    op = build_operation(JOB, idempotency_key=f"t{i}", default_product=None, default_env=None)
    payload = wire.build_payload(op.module, op.method, list(op.params), creds.user_id)
    body = wire.build_request_body(
        payload,
        workspace_id=creds.workspace_id,
        user_id=creds.user_id,
        public_key=creds.public_key,
    )
    encoded = wire.encode_body(body)
    headers = {
        **encoded.headers,
        wire.ACCESS_TOKEN_HEADER: creds.access_token.get_secret_value(),
        wire.IDEMPOTENCY_HEADER: f"transport-{i}",
    }
    return encoded.content, headers


async def bare(label: str, creds: Credentials, n: int, concurrency: int, post: Post) -> Measure:
    url = creds.base_url + wire.EXECUTE_PATH

    async def one(i: int) -> None:
        content, headers = body_for(creds, i)
        status, answer = await post(url, content, headers)
        if not isinstance(wire.parse_response(status, answer), wire.ProxySuccess):
            raise RuntimeError(f"{label}: call {i} failed: HTTP {status} {answer[:200]!r}")

    return await measure(label, n, concurrency, one)


async def with_httpx(creds: Credentials, n: int, concurrency: int, pool: int) -> Measure:
    limits = httpx.Limits(max_connections=pool, max_keepalive_connections=pool)
    async with httpx.AsyncClient(limits=limits, timeout=30, trust_env=False) as http:

        async def post(url: str, content: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
            response = await http.post(url, content=content, headers=headers)
            return response.status_code, response.content

        return await bare(f"httpx.AsyncClient, pool {pool}", creds, n, concurrency, post)


async def with_httpx_aiohttp(creds: Credentials, n: int, concurrency: int, pool: int) -> Measure:
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=pool))
    transport = AiohttpTransport(client=session)
    async with httpx.AsyncClient(transport=transport, timeout=30, trust_env=False) as http:

        async def post(url: str, content: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
            response = await http.post(url, content=content, headers=headers)
            return response.status_code, response.content

        label = f"httpx over httpx_aiohttp.AiohttpTransport, limit {pool}"
        result = await bare(label, creds, n, concurrency, post)
    await session.close()
    return result


async def with_aiohttp(creds: Credentials, n: int, concurrency: int, pool: int) -> Measure:
    connector = aiohttp.TCPConnector(limit=pool)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def post(url: str, content: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
            async with http.post(url, data=content, headers=headers) as response:
                return response.status, await response.read()

        return await bare(f"aiohttp.ClientSession, limit {pool}", creds, n, concurrency, post)


async def with_client(creds: Credentials, n: int, concurrency: int, pool: int) -> Measure:
    async with DuctapeClient(creds, max_connections=pool) as ductape:

        async def one(i: int) -> None:
            key = f"client-{i}"
            op = build_operation(JOB, idempotency_key=key, default_product=None, default_env=None)
            await ductape.execute(op, idempotency_key=key, timeout_s=30)

        return await measure(f"DuctapeClient.execute (aiohttp), pool {pool}", n, concurrency, one)


def table(results: list[Measure], concurrency: int) -> str:
    lines = [
        "| transport | calls | concurrency | wall s | calls/s | client CPU µs/call |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for m in results:
        cpu_us = m.cpu_s / m.calls * 1e6
        cells = [m.label, str(m.calls), str(concurrency), f"{m.wall_s:.2f}", f"{m.rate:,.0f}"]
        lines.append("| " + " | ".join([*cells, f"{cpu_us:,.0f}"]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--pool", type=int, default=16, help="connections (runner default)")
    parser.add_argument("--repeat", type=int, default=1, help="run the whole set this often")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    port = free_port()
    proc = start_emulator(port)
    creds = Credentials(
        base_url=f"http://127.0.0.1:{port}",
        workspace_id=emu.DEMO_WORKSPACE_ID,
        user_id=emu.DEMO_USER_ID,
        public_key=emu.DEMO_PUBLIC_KEY,
        access_token=SecretStr(emu.DEMO_ACCESS_TOKEN),
    )
    rows = [with_httpx, with_httpx_aiohttp, with_aiohttp, with_client]
    results: list[Measure] = []
    try:
        for _ in range(args.repeat):
            for row in rows:
                results.append(asyncio.run(row(creds, args.n, args.concurrency, args.pool)))
                httpx.delete(f"{creds.base_url}/_emulator/calls")
                time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    print(table(results, args.concurrency))


if __name__ == "__main__":
    main()
