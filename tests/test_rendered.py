"""Big control API bodies: made once for every request waiting, off the loop (issue 13, item 8)."""

from __future__ import annotations

import asyncio
import threading
import time

from starlette.responses import JSONResponse

from runner.daemon import rendered
from runner.daemon.rendered import Rendered, json_body


async def test_requests_that_come_while_a_body_is_made_share_it() -> None:
    made: list[str] = []

    def make() -> bytes:
        made.append(threading.current_thread().name)
        time.sleep(0.05)  # an expensive body: longer than CHEAP_S
        return b"body"

    body = Rendered(make)
    results = await asyncio.gather(*(body.get() for _ in range(20)))
    assert results == [b"body"] * 20
    assert len(made) == 1 and made[0] != threading.current_thread().name  # a worker thread
    assert await body.get() == b"body" and len(made) == 1  # young: reused
    body.invalidate()
    await body.get()
    assert len(made) == 2


async def test_a_cheap_body_is_made_afresh_for_each_request() -> None:
    count = 0

    def make() -> bytes:
        nonlocal count
        count += 1
        return str(count).encode()

    body = Rendered(make)
    assert [await body.get() for _ in range(3)] == [b"1", b"2", b"3"]


async def test_an_expensive_body_is_reused_for_ten_times_its_cost_at_most_ten_seconds() -> None:
    body = Rendered(lambda: time.sleep(0.03) or b"x")
    await body.get()
    assert 0.3 <= body.max_age <= rendered.MAX_AGE_S


def test_a_long_list_is_encoded_in_chunks_exactly_as_starlette_would() -> None:
    for payload in ([{"job": i, "é": None} for i in range(1_000)], [], {"a": [1]}, [1] * 257):
        assert json_body(payload) == JSONResponse(payload).body
