"""Transport benchmark: the same encrypted SDK-proxy call over three HTTP clients, one run.

    .venv/bin/python bench/transport.py [--n 4000] [--concurrency 64] [--pool 16]
        [--others]

Rows, each against the same emulator (its own process, so the CPU column is the client's):
httpx.AsyncClient with its own pool (the runner's transport until now); httpx's API over
httpx-aiohttp's AiohttpTransport; aiohttp.ClientSession alone; and DuctapeClient.execute
as the runner calls it (aiohttp, plus operation building, classification, the gate). The
three bare rows do the same work per call: build and encrypt the body, POST it, read and
parse the answer. Each row warms its pool first; `--repeat` runs the whole set again.

`--others` adds rows for async clients the runner does not use and the lock does not
pin (install them by hand: `.venv/bin/pip install pyreqwest rnet curl_cffi`; a missing
one is skipped with a note): whether any native-code client costs less CPU a call than
aiohttp, measured the same way.
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


async def with_pyreqwest(creds: Credentials, n: int, concurrency: int, pool: int) -> Measure:
    from datetime import timedelta

    from pyreqwest.client import ClientBuilder  # type: ignore[import-not-found,unused-ignore]

    builder = ClientBuilder().max_connections(pool).pool_max_idle_per_host(pool)
    client = builder.pool_idle_timeout(timedelta(seconds=4)).http1_only().build()
    async with client:

        async def post(url: str, content: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
            request = client.post(url).headers(headers).body_bytes(content).build()
            response = await request.send()
            return response.status, bytes(await response.bytes())

        return await bare(
            f"pyreqwest (Rust reqwest), {pool} connections", creds, n, concurrency, post
        )


async def with_rnet(creds: Credentials, n: int, concurrency: int, pool: int) -> Measure:
    import rnet  # type: ignore[import-not-found,unused-ignore]

    client = rnet.Client(
        pool_max_idle_per_host=pool, pool_max_size=pool, pool_idle_timeout=4, http1_only=True
    )

    async def post(url: str, content: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        response = await client.post(url, body=content, headers=headers)
        return int(response.status), bytes(await response.bytes())

    return await bare(f"rnet (Rust), {pool} connections", creds, n, concurrency, post)


async def with_curl_cffi(creds: Credentials, n: int, concurrency: int, pool: int) -> Measure:
    from curl_cffi.requests import AsyncSession  # type: ignore[import-not-found,unused-ignore]

    async with AsyncSession(max_clients=pool) as http:

        async def post(url: str, content: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
            response = await http.post(url, data=content, headers=headers)
            return response.status_code, response.content

        return await bare(f"curl_cffi (libcurl), {pool} clients", creds, n, concurrency, post)


OTHERS = {"pyreqwest": with_pyreqwest, "rnet": with_rnet, "curl_cffi": with_curl_cffi}


def available(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        print(f"skipped: {module} is not installed (.venv/bin/pip install {module})")
        return False
    return True


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
    parser.add_argument("--others", action="store_true", help="also pyreqwest, rnet, curl_cffi")
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
    if args.others:
        rows += [row for name, row in OTHERS.items() if available(name)]
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
