"""Big control API bodies (/metrics, /jobs, /status): made off the event loop, shared.

With 50,000 jobs, /metrics took about 0.4 s and /jobs several seconds of the event
loop per request; four clients asking in turn pushed fire lateness to 17 s and lost
occurrences (issue 13, item 8). A body is now made in a worker thread, one at a time per
path (every request meanwhile waits for that one), and reused while younger than ten
times what it took to make (at most `MAX_AGE_S`): rendering can take at most a tenth of
the process, and a small job set, whose bodies take under `CHEAP_S`, is never reused.
The thread holds the GIL for slices of `sys.getswitchinterval()` (5 ms) at most, so a
due occurrence waits for one slice, not for the whole body.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

CHEAP_S = 0.02
JSON_CHUNK = 256
REUSE_FACTOR = 10.0
MAX_AGE_S = 10.0


class Rendered:
    """One body: made by `make` in a thread, at most one at a time, reused while young."""

    def __init__(self, make: Callable[[], bytes]) -> None:
        self.make = make
        self.body: bytes | None = None
        self.made_at = 0.0
        self.max_age = 0.0
        self._pending: asyncio.Future[bytes] | None = None

    async def get(self) -> bytes:
        if self.body is not None and time.monotonic() - self.made_at < self.max_age:
            return self.body
        if self._pending is None or self._pending.done():
            self._pending = asyncio.ensure_future(self._remake())
        # shield: a client that goes away does not cancel the body the others wait for
        return await asyncio.shield(self._pending)

    def invalidate(self) -> None:
        """Something an operator did (pause, resume, trigger) must show in the next body."""
        self.body = None

    async def _remake(self) -> bytes:
        began = time.monotonic()
        body = await asyncio.to_thread(self.make)
        took = time.monotonic() - began
        self.body, self.made_at = body, time.monotonic()
        self.max_age = 0.0 if took < CHEAP_S else min(REUSE_FACTOR * took, MAX_AGE_S)
        return body


def json_body(payload: Any) -> bytes:
    """JSON as Starlette's JSONResponse writes it; a long list is encoded in chunks, since
    the C encoder keeps the GIL for a whole call (a 50,000-job list: one long pause)."""
    if not isinstance(payload, list) or len(payload) <= JSON_CHUNK:
        return _dumps(payload).encode()
    parts = (_dumps(payload[i : i + JSON_CHUNK])[1:-1] for i in range(0, len(payload), JSON_CHUNK))
    return ("[" + ",".join(parts) + "]").encode()


def _dumps(payload: Any) -> str:
    return json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
