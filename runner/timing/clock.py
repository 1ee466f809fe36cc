"""Clocks: the system clock for the daemon, a fake one that tests drive by hand."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """Wall time (aware UTC), monotonic time, and an interruptible sleep."""

    def now(self) -> datetime: ...

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float, wake: asyncio.Event | None = None) -> None:
        """Sleep `seconds`, or less if `wake` is set meanwhile."""
        ...

    def land(self, seconds: float) -> None:
        """Hold the thread `seconds` (under a few milliseconds), for a precise landing."""
        ...


class SystemClock:
    """The real clocks."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float, wake: asyncio.Event | None = None) -> None:
        if wake is None:
            await asyncio.sleep(max(seconds, 0))
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout=max(seconds, 0))

    def land(self, seconds: float) -> None:
        time.sleep(max(seconds, 0))  # the whole loop waits: callers keep it short


class FakeClock:
    """A clock that moves only when a test says so; sleepers wake in deadline order."""

    def __init__(self, start: datetime) -> None:
        self._now = start
        self._mono = 1_000.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    async def sleep(self, seconds: float, wake: asyncio.Event | None = None) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._mono + max(seconds, 0), next(self._seq), future))
        waits: list[asyncio.Future[object]] = [future]  # type: ignore[list-item]
        if wake is not None:
            waits.append(asyncio.ensure_future(wake.wait()))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()

    def land(self, seconds: float) -> None:
        """Both clocks move by `seconds` at once (sleepers due meanwhile wake late, as
        behind a real blocking wait)."""
        self._set(self._mono + max(seconds, 0))

    async def settle(self) -> None:
        """Let every runnable task run until all are blocked again: 50 loop passes, and
        more (up to 400) while callbacks are still queued (a chain of catch-up runs takes
        a few passes each: the state file's group commit counts passes)."""
        ready = getattr(asyncio.get_running_loop(), "_ready", None)  # asyncio's own loop
        for passes in range(400):
            await asyncio.sleep(0)
            if passes >= 49 and not ready:
                return

    async def advance(self, seconds: float) -> None:
        """Move both clocks forward, waking each sleeper at its own deadline."""
        await self.run_until(self._mono + seconds)

    async def run_until(self, mono_target: float) -> None:
        await self.settle()
        while self._sleepers and self._sleepers[0][0] <= mono_target:
            deadline, _, future = heapq.heappop(self._sleepers)
            if future.done():
                continue
            self._set(deadline)
            future.set_result(None)
            await self.settle()
        self._set(mono_target)
        await self.settle()

    async def advance_to(self, moment: datetime) -> None:
        await self.run_until(self._mono + (moment - self._now).total_seconds())

    def jump_wall(self, delta: timedelta) -> None:
        """Step the wall clock alone, as NTP or a suspend/resume does."""
        self._now += delta

    def _set(self, mono: float) -> None:
        self._now += timedelta(seconds=mono - self._mono)
        self._mono = mono
