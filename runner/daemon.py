"""`ductape-runner run`: start, serve, reload and stop, as three plain steps.

Signal handlers only queue a request; the main coroutine acts on it:
SIGHUP reloads, SIGTERM/SIGINT drain and exit 0, a second SIGINT exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog
from pydantic import SecretStr

from runner.clock import Clock, SystemClock
from runner.ductape.client import Credentials, DuctapeClient
from runner.execute import DuctapeExecutor
from runner.loader import Defaults, Limits, LoadedJob, load_folder
from runner.scheduler import Scheduler, to_ms
from runner.secrets import SecretRegistry
from runner.settings import Settings
from runner.store.sqlite import SqliteStore

log = structlog.get_logger("runner.daemon")


class Daemon:
    """Owns the parts of a running runner and their order of start and stop."""

    def __init__(
        self,
        settings: Settings,
        environ: dict[str, str],
        *,
        registry: SecretRegistry,
        clock: Clock | None = None,
        emulator: bool = False,
    ) -> None:
        self.settings = settings
        self.environ = environ
        self.registry = registry
        self.clock = clock or SystemClock()
        self.emulator = emulator
        self.requests: asyncio.Queue[str] = asyncio.Queue()
        self.interrupts = 0
        self.loaded = False
        self.invalid: list[str] = []
        self.last_reload: datetime | None = None

    # ---- start -----------------------------------------------------------------------

    async def run(self) -> int:
        """Start everything, serve until asked to stop, then drain; the exit status."""
        self._install_signals()
        emulator = await self._start_emulator() if self.emulator else None
        self.store = SqliteStore(self.settings.state)
        self.client = DuctapeClient(
            self._credentials(), max_connections=self.settings.max_connections
        )
        self.executor = DuctapeExecutor(
            self.client,
            self.store,
            self.clock,
            default_product=self.settings.product,
            default_env=self.settings.env,
            environ=self.environ,
            credentials_dir=self.settings.credentials_directory,
            registry=self.registry,
            dry_run=self.settings.dry_run,
        )
        self.scheduler = Scheduler(
            self.store,
            self.executor,
            self.clock,
            max_concurrent=self.settings.max_concurrent_runs,
        )
        try:
            with self.store.batch():
                self.scheduler.start(self._load())
            self.loaded = True
            log.info("daemon.started", jobs=len(self.scheduler.entries), state=self.settings.state)
            loop_task = asyncio.create_task(self.scheduler.run(), name="scheduler")
            prune_task = asyncio.create_task(self._prune_forever(), name="prune")
            await self._serve()
            prune_task.cancel()
            return await self._stop(loop_task)
        finally:
            await self.client.aclose()
            self.store.close()
            if emulator is not None:
                emulator.should_exit = True

    async def _start_emulator(self) -> Any:
        """The built-in Ductape emulator on a free loopback port, with the demo credentials."""
        from runner import emulator

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = emulator.EmulatorConfig(
            host="127.0.0.1", port=port, access_log=False, uvicorn_logging=False
        )
        server = emulator.make_server(config)
        self._emulator_task = asyncio.create_task(server.serve(sockets=[sock]), name="emulator")
        self.settings = self.settings.model_copy(
            update={
                "base_url": f"http://127.0.0.1:{port}",
                "workspace_id": emulator.DEMO_WORKSPACE_ID,
                "user_id": emulator.DEMO_USER_ID,
                "public_key": emulator.DEMO_PUBLIC_KEY,
                "access_token": SecretStr(emulator.DEMO_ACCESS_TOKEN),
            }
        )
        log.info("emulator.started", base_url=self.settings.base_url)
        return server

    def _credentials(self) -> Credentials:
        s = self.settings
        token = s.access_token.get_secret_value()
        if token:
            self.registry.add(token)
        return Credentials(
            base_url=s.base_url,
            workspace_id=s.workspace_id,
            user_id=s.user_id,
            public_key=s.public_key,
            access_token=s.access_token,
        )

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.requests.put_nowait, "reload")
        loop.add_signal_handler(signal.SIGTERM, self.requests.put_nowait, "stop")
        loop.add_signal_handler(signal.SIGINT, self._on_interrupt)

    def _on_interrupt(self) -> None:
        self.interrupts += 1
        self.requests.put_nowait("stop" if self.interrupts == 1 else "kill")

    # ---- serve ------------------------------------------------------------------------

    async def _serve(self) -> None:
        while True:
            request = await self.requests.get()
            if request == "reload":
                self.reload()
            elif request in ("stop", "kill"):
                self.requests.put_nowait(request)  # _stop reads it to know how urgent
                return

    def _load(self) -> dict[str, LoadedJob]:
        s = self.settings
        result = load_folder(
            [Path(s.jobs_dir)],
            Limits(max_file_bytes=s.max_file_bytes),
            Defaults(product=s.product, env=s.env),
        )
        problems = result.all_problems()
        self.invalid = sorted({p.path for p in problems})
        for problem in problems:
            log.error(
                "file.invalid",
                path=problem.path,
                line=problem.line,
                field=problem.field,
                message=problem.message,
            )
        self.last_reload = self.clock.now()
        return result.jobs

    def reload(self) -> dict[str, int]:
        """Rescan the folder and apply the difference to the schedule."""
        jobs = self._load()
        counts = {"added": 0, "updated": 0, "unchanged": 0, "removed": 0}
        with self.store.batch():
            self._apply(jobs, counts)
        log.info("reload.finished", invalid_files=len(self.invalid), **counts)
        return counts

    def _apply(self, jobs: dict[str, LoadedJob], counts: dict[str, int]) -> None:
        for loaded in jobs.values():
            counts[self.scheduler.upsert(loaded)] += 1
        for name in [n for n in self.scheduler.entries if n not in jobs]:
            counts["removed"] += self.scheduler.remove(name)

    async def _prune_forever(self) -> None:
        """Forget finished occurrences past the retention horizon, hourly."""
        keep_ms = self.settings.history_retention_days * 86_400_000
        while True:
            removed = self.store.prune(to_ms(self.clock.now()) - keep_ms)
            if removed:
                log.info("history.pruned", occurrences=removed)
            await self.clock.sleep(3600)

    # ---- stop -------------------------------------------------------------------------

    async def _stop(self, loop_task: asyncio.Task[Any]) -> int:
        urgent = self.requests.get_nowait() == "kill"
        grace = 0.0 if urgent else self.settings.shutdown_grace_s
        log.info("daemon.stopping", grace_s=grace)
        drain = asyncio.create_task(self.scheduler.drain(grace))
        while not drain.done():
            kill = asyncio.create_task(self.requests.get())
            await asyncio.wait({drain, kill}, return_when=asyncio.FIRST_COMPLETED)
            if kill.done() and kill.result() in ("kill", "stop") and self.interrupts > 1:
                drain.cancel()  # a second SIGINT: stop waiting for attempts in flight
            kill.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            cancelled = await drain
            log.info("daemon.stopped", cancelled_attempts=cancelled)
        loop_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop_task
        return 0
