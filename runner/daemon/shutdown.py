"""Signals and the stop step of `Daemon`: drain with a grace, and what a second Ctrl-C does.

Signal handlers only queue a request; `Daemon.run` acts on it (runner.daemon.service).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

import structlog

from runner.daemon.scheduler import Scheduler
from runner.settings import Settings

log = structlog.get_logger("runner.daemon")

EXIT_FORCED = 130  # 128 + SIGINT: what a shell reports for a process killed by Ctrl-C


class Shutdown:
    """SIGHUP/SIGTERM/SIGINT handling and the stop step, as `Daemon` uses them."""

    settings: Settings
    scheduler: Scheduler
    requests: asyncio.Queue[str]
    interrupts: int
    exit_status: int

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.requests.put_nowait, "reload")
        loop.add_signal_handler(signal.SIGTERM, self.requests.put_nowait, "stop")
        loop.add_signal_handler(signal.SIGINT, self._on_interrupt)

    def _on_interrupt(self) -> None:
        self.interrupts += 1
        self.requests.put_nowait("stop" if self.interrupts == 1 else "kill")

    # ---- stop -------------------------------------------------------------------------

    async def _stop(self, loop_task: asyncio.Task[Any]) -> int:
        urgent = self.requests.get_nowait() == "kill"
        if urgent:
            self._forced()
        grace = 0.0 if urgent else self.settings.shutdown_grace_s
        hint = {"force": "interrupt again (Ctrl-C) to force exit"} if self.interrupts else {}
        log.info("daemon.stopping", grace_s=grace, open_runs=self._open_runs(), **hint)
        drain = asyncio.create_task(self.scheduler.drain(grace))
        while not drain.done():
            kill = asyncio.create_task(self.requests.get())
            await asyncio.wait({drain, kill}, return_when=asyncio.FIRST_COMPLETED)
            if kill.done() and kill.result() in ("kill", "stop") and self.interrupts > 1:
                self._forced()
                drain.cancel()  # a second SIGINT: stop waiting for attempts in flight
            kill.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            cancelled = await drain
            log.info("daemon.stopped", cancelled_attempts=cancelled)
        if self.exit_status == EXIT_FORCED:
            await self.scheduler.abandon()  # before the client closes under them
        loop_task.cancel()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await loop_task
        return self.exit_status

    def _open_runs(self) -> int:
        """Occurrences in flight or queued: what a forced exit leaves open in the state."""
        runs = self.scheduler.runs.values()
        return sum(len(run.queue) for job in runs for run in job.active.values())

    def _forced(self) -> None:
        """A second SIGINT: say what is left open, and exit 130 (128 + SIGINT) like a shell."""
        if self.exit_status != EXIT_FORCED:
            left = self._open_runs()
            log.warning(
                "daemon.forced",
                open_runs=left,
                message=f"second interrupt: not waiting; {left} runs left open, resumed "
                "with the same idempotency keys at the next start",
            )
        self.exit_status = EXIT_FORCED
