"""`ductape-runner run`: start, serve, reload and stop, as three plain steps.

Signal handlers only queue a request; the main coroutine acts on it:
SIGHUP reloads, SIGTERM/SIGINT drain and exit 0, a second SIGINT exits at once (130).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import resource
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import SecretStr

from runner.daemon.access import DuctapeAccess
from runner.daemon.control import build_control_app
from runner.daemon.control_server import private_dir, serve_control, write_token
from runner.daemon.execute import DuctapeExecutor, RunHooks
from runner.daemon.folder import FolderReconciler
from runner.daemon.metrics import Metrics
from runner.daemon.reconcile import Plan
from runner.daemon.scheduler import LANDING_S, PREPARE_AHEAD_S, Scheduler, to_ms
from runner.daemon.sdnotify import Notifier, watchdog_interval_s
from runner.daemon.shutdown import Shutdown
from runner.daemon.ui import Dashboard
from runner.daemon.view import Conditions, DaemonView
from runner.daemon.watch import FolderSync
from runner.ductape.client import DuctapeClient
from runner.jobs import parallel
from runner.jobs import stored as jobs_stored
from runner.jobs.loader import Defaults, Limits, LoadedJob
from runner.jobs.model import Job
from runner.jobs.secrets import SecretPolicy, SecretRegistry
from runner.settings import Settings, control_socket_path, control_token_path
from runner.store import LastGoodFiles, Occurrence, Store
from runner.store.postgres import StoreUnavailable, display_dsn, is_dsn
from runner.store.sqlite import COMMIT_WINDOW_S, SqliteStore
from runner.timing.clock import Clock, SystemClock

if TYPE_CHECKING:
    from runner.store.postgres import PostgresStore

log = structlog.get_logger("runner.daemon")


class Daemon(Shutdown, DuctapeAccess):
    """Owns the parts of a running runner and their order of start and stop."""

    def __init__(
        self,
        settings: Settings,
        environ: dict[str, str],
        *,
        registry: SecretRegistry,
        clock: Clock | None = None,
        emulator: bool = False,
        emulator_port: int = 0,
        reset_state: bool = False,
    ) -> None:
        self.settings = settings
        self.environ = environ
        self.registry = registry
        self.clock = clock or SystemClock()
        self.emulator, self.emulator_port = emulator, emulator_port
        self.reset_state = reset_state
        self.requests: asyncio.Queue[str] = asyncio.Queue()
        self.interrupts = 0
        self.exit_status = 0
        self.requests_stop_seen = False
        self.loaded = False
        self._first_applied = -1  # the scheduler's `definitions` once the first load is in
        self.invalid: dict[str, str] = {}
        self.notifier = Notifier(environ.get("NOTIFY_SOCKET"))
        self.watchdog_s = watchdog_interval_s(
            environ.get("WATCHDOG_USEC"), environ.get("WATCHDOG_PID")
        )
        self._last_ping = 0.0
        self._last_status = 0.0
        self._last_check = 0.0
        self.auth_failures = 0
        self._stored_digests: dict[str, str] = {}  # path -> digest of its stored last good
        # Accepted files whose validated jobs the state does not hold yet: stored between
        # occurrences after the start, not before it (runner.jobs.stored, issue 12).
        self._jobs_key = ""
        self._with_jobs: set[str] = set()
        self._jobs_to_store: dict[str, tuple[str, list[LoadedJob]]] = {}
        self._jobs_queued = asyncio.Event()
        self.auth_error: str | None = None

    # ---- start -----------------------------------------------------------------------

    async def run(self) -> int:
        """Start everything, serve until asked to stop, then drain; the exit status."""
        if not (self.emulator or self.settings.dry_run):
            self._require_credentials()
        raise_open_files_limit()
        self._install_signals()
        emulator = await self._start_emulator() if self.emulator else None
        self.store = self._open_store()
        shared = _shared(self.store)
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
            policy=SecretPolicy.from_settings(self.settings),
            dry_run=self.settings.dry_run,
            hooks=self._run_hooks(),
        )
        max_sleep = 1.0  # a wall-clock step is noticed within it (issue 13, item 14)
        self.scheduler = Scheduler(
            self.store,
            self.executor,
            self.clock,
            max_concurrent=self.settings.max_concurrent_runs,
            max_sleep_s=max_sleep,
            on_tick=self._tick,
            on_skip=lambda job: self.metrics.run_finished(
                job.name, job.canonical_kind, "skipped", None
            ),
            claims=shared,
            landing_s=LANDING_S,
            prepare_ahead_s=PREPARE_AHEAD_S,
        )
        self.metrics = Metrics(self._snapshot, None if shared is None else shared.replica_id)
        self.view = DaemonView(
            self.scheduler,
            stale_after_s=65.0,  # a loop stalled this long is unhealthy
            loaded=lambda: self.loaded,
            invalid=lambda: self.invalid,
            state=self.store.health if isinstance(self.store, SqliteStore) else None,
            conditions=self._conditions,
            on_change=lambda: self.dashboard.changed(),
        )
        self.metrics.watch_probes(self.view.healthy, self.view.ready)
        self.dashboard = Dashboard(self)
        try:
            # No cyclic GC while the jobs load: its collections walked every object made
            # so far, a quarter of the CPU of a 100,000-job start (issue 12).
            gc.disable()
            jobs = await self._first_load()
            # What is loaded now lives as long as the daemon: take it out of the cyclic
            # GC's view, so full collections stop walking 100,000 job models while
            # occurrences are due (a source of lateness tails). Not collected first: a
            # 100,000-job start leaves 10-50 objects in cycles, and finding them walked
            # every object loaded (0.4-0.6 CPU s); those few are kept.
            gc.freeze()
            if shared is not None:
                await self._connect(shared, jobs)
            with self.store.batch():
                self.scheduler.start(jobs, keep=self._kept_at_start())
            # This frame lives as long as the daemon: the name -> job dict would too (3.7 MB
            # at 100,000 jobs, issue 12); the schedule holds the jobs.
            del jobs
            self._first_applied = self.scheduler.definitions  # the first load's plan is applied
            self.reconciler.applied()
            # On disk before `daemon.started` says so (the group commit would hold these
            # writes up to its window).
            if (written := self.store.written()) is not None:
                await written
            if shared is not None:
                shared.start()
            self.loaded = True
            gc.freeze()  # the scheduler's entries, too (freezing is cheap; no collection)
            return_freed_memory()
            # Full collections a hundred times rarer: each walked every object made since
            # the freeze, 50-100 ms on the loop at 10,000 jobs (issue 12: lateness p99
            # 7.3 -> 5.4 ms at 10,000 one-shots a minute). Young collections, which free
            # what each occurrence leaves behind (aiohttp's cycles), keep their defaults.
            gc.set_threshold(700, 10, 1000)
            gc.enable()
            control = await self._start_control()
            log.info(
                "daemon.started",
                jobs=len(self.scheduler.entries),
                invalid_files=len(self.invalid),
                state=self._state_where(),
                replica=None if shared is None else shared.replica_id,
                control=control.where(),
            )
            self.notifier.ready()
            self.notifier.status(self.view.status_line())
            loop_task = asyncio.create_task(self.scheduler.run(), name="scheduler")
            prune_task = asyncio.create_task(self._prune_forever(), name="prune")
            jobs_task = asyncio.create_task(self._store_jobs_forever(), name="store jobs")
            watch_task = self._start_sync()
            for task in (loop_task, watch_task, prune_task, jobs_task):
                task.add_done_callback(self._on_task_done)
            await self._serve()
            self.notifier.stopping()
            prune_task.cancel()
            jobs_task.cancel()
            self.sync.stop()
            await asyncio.gather(watch_task, return_exceptions=True)
            status = await self._stop(loop_task)
            await control.close()
            return status
        finally:
            gc.enable()  # a start that failed before it was enabled again
            await self.client.aclose()
            if (pg := _shared(self.store)) is not None:
                await pg.aclose()
            self.store.close()
            if emulator is not None:
                emulator.should_exit = True

    def _open_store(self) -> Store:
        """SQLite by default; a postgresql:// DSN shares the state between replicas."""
        s = self.settings
        if not is_dsn(s.state):
            store = SqliteStore(s.state, reset=self.reset_state, commit_window_s=COMMIT_WINDOW_S)
            store.checkpoint_in_background()  # no checkpoint in a commit at a fire instant
            return store
        from runner.store.postgres import PostgresStore  # and the driver, only now

        return PostgresStore(
            s.state,
            self.clock,
            replica_id=s.replica_id,
            lease_s=s.lease_s,
            # Four times what it can call at once: the next ones wait, claimed, for a slot
            # while the writer's tick records the last ones (measured: 2x left slots idle
            # waiting for a claim); no more, or a replica takes work its connections
            # cannot start within an attempt's timeout.
            claim_limit=4 * min(s.max_concurrent_runs, s.max_connections),
        )

    async def _connect(self, store: PostgresStore, jobs: dict[str, LoadedJob]) -> None:
        """Migrate and read the shared state; unreachable at start-up is an error (systemd
        restarts the unit), unlike later, when the replica waits for the database."""
        try:
            await asyncio.wait_for(store.open(set(jobs)), store.timeout_s * 4)
        except Exception as exc:
            if isinstance(exc, RuntimeError):
                raise  # a schema newer than this runner
            raise StoreUnavailable(f"{display_dsn(store.dsn)}: {exc}") from exc

    def _state_where(self) -> str:
        state = self.settings.state
        return display_dsn(state) if is_dsn(state) else state

    async def _start_emulator(self) -> Any:
        """The built-in Ductape emulator on loopback (free port unless set), demo credentials."""
        from runner.ductape import emulator

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.emulator_port))
        port = sock.getsockname()[1]
        config = emulator.EmulatorConfig(
            host="127.0.0.1", port=port, access_log=False, uvicorn_logging=False
        )
        server = emulator.make_server(config, own_signals=False)
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

    async def _start_control(self) -> Any:
        s = self.settings
        socket_path = control_socket_path(s, self.environ)
        if not s.control_socket and not self.environ.get("RUNTIME_DIRECTORY"):
            private_dir(Path(socket_path).parent)  # systemd makes RuntimeDirectory itself
        token = None
        if s.control_tcp:
            configured = s.control_token
            token = configured.get_secret_value() if configured else None
            token = token or write_token(control_token_path(s, self.environ))
            self.registry.add(token)  # never logged
        ui = self.dashboard.routes(token)
        app = build_control_app(self.view, self.metrics, secrets=self.registry, token=token, ui=ui)
        server = await serve_control(app, unix_socket=socket_path, tcp=s.control_tcp)
        self.dashboard.tcp = server.tcp_address
        return server

    def _run_hooks(self) -> RunHooks:
        def finished(job: Job, occ: Occurrence) -> None:
            seconds = None if occ.duration_ms is None else occ.duration_ms / 1000
            outcome: Any = occ.state
            self.metrics.run_finished(job.name, job.canonical_kind, outcome, seconds)
            self.dashboard.changed()

        def started(job: Job, occ: Occurrence, late_s: float) -> None:
            self.metrics.lateness(late_s)
            self.dashboard.changed()

        return RunHooks(
            on_attempt=lambda job, s: self.metrics.attempt(job.canonical_kind, s),
            on_finished=finished,
            on_started=started,
            on_call=self._on_call,
        )

    def _snapshot(self) -> list[tuple[str, str, float | None]]:
        entries = list(self.scheduler.entries.items())  # one C-level copy: a worker thread reads it
        return [
            (name, e.record.status, None if e.due is None else e.due.timestamp())
            for name, e in entries
        ]

    def _tick(self) -> None:
        """Called by the scheduler loop on each pass: the watchdog is fed from the loop itself."""
        mono = self.clock.monotonic()
        if isinstance(self.store, SqliteStore) and mono - self._last_check >= 1.0:
            self.store.check()  # notices the state file's recovery (and, later, its loss)
            self._last_check = mono
        if self.watchdog_s and mono - self._last_ping >= min(1.0, self.watchdog_s / 2):
            self.notifier.watchdog()
            self._last_ping = mono
        if mono - self._last_status >= 5.0:
            self.notifier.status(self.view.status_line())
            self._last_status = mono

    def _on_task_done(self, task: asyncio.Task[Any]) -> None:
        """A part that dies on its own is fatal: stop, exit 1, let systemd restart us."""
        if task.cancelled() or self.requests_stop_seen:
            return
        exc = task.exception()
        log.critical(
            "daemon.part_failed",
            part=task.get_name(),
            error=f"{type(exc).__name__}: {exc}" if exc else "ended unexpectedly",
            exc_info=exc,
        )
        self.exit_status = 1
        self.requests.put_nowait("stop")

    # ---- serve ------------------------------------------------------------------------

    async def _serve(self) -> None:
        while True:
            request = await self.requests.get()
            if request == "reload":
                await self.reload()
            elif request in ("stop", "kill"):
                self.requests_stop_seen = True
                self.requests.put_nowait(request)  # _stop reads it to know how urgent
                return

    async def _first_load(self) -> dict[str, LoadedJob]:
        """Read the whole folder once, before the scheduler starts.

        Files still being written are waited for (up to 2 s): a job missing from the
        first load would have its open occurrences cancelled as "no longer defined".
        """
        s = self.settings
        self.reconciler = FolderReconciler(
            Path(s.jobs_dir),
            clock=self.clock,
            limits=Limits(max_file_bytes=s.max_file_bytes),
            defaults=Defaults(product=s.product, env=s.env),
            quiet_s=s.quiet_period_s,
            confirm_s=s.empty_folder_confirm_s,
            parse_workers=parallel.workers_for(s.parse_workers),
        )
        if isinstance(self.store, LastGoodFiles):
            stored = self.store.load_last_good()
            self._stored_digests = {path: digest for path, (digest, _) in stored.items()}
            self.reconciler.stored = {path: content for path, (_, content) in stored.items()}
            key = jobs_stored.code_key(self.reconciler.limits, self.reconciler.defaults)
            self._jobs_key = key
            store = self.store
            self.reconciler.validated = store.validated_digests(key)
            self.reconciler.read_validated = lambda path, digest: store.validated_jobs(
                path, digest, key
            )
            self._with_jobs = set(self.reconciler.validated)
        plan = self.reconciler.scan({}, deep=True)
        deadline = self.clock.monotonic() + 2.0
        while plan.unsettled and self.clock.monotonic() < deadline:
            await self.clock.sleep(max(s.quiet_period_s, 0.05))
            plan = self.reconciler.scan({}, deep=True)
        self._reloaded(plan)
        self.reconciler.stored = {}  # in-memory last good versions take over from here
        self.reconciler.validated = {}
        return plan.desired

    def _conditions(self) -> Conditions:
        folder = self.reconciler.folder
        missing = None
        if not self.reconciler.present and not self.scheduler.entries:
            missing = f"jobs folder {folder} does not exist: no jobs until it appears"
        plan = self.reconciler.last_plan
        if plan is None:
            return Conditions(folder_missing=missing, auth_failing=self.auth_error)
        last_good = {name: path for path, names in plan.kept_last_good.items() for name in names}
        return Conditions(
            folder_missing=missing,
            auth_failing=self.auth_error,
            guard=plan.guard,
            last_good=last_good,
        )

    def _kept_at_start(self) -> set[str] | None:
        """Recorded jobs to keep although the first load did not define them; None keeps
        all (a missing or empty folder: the mass-deletion guard's case, not a deletion)."""
        plan = self.reconciler.last_plan
        if plan is None or not self.reconciler.files:
            return None
        return {name for names in plan.kept_last_good.values() for name in names}

    def _start_sync(self) -> asyncio.Task[None]:
        s = self.settings
        self.sync = FolderSync(
            self.reconciler,
            self.scheduler,
            resync_s=s.resync_interval_s,
            poll_interval_s=s.quiet_period_s * 4 if s.poll else None,
            on_reloaded=self._reloaded,
            planned_at=self._first_applied,
        )
        return asyncio.create_task(self.sync.run(), name="watch")

    def _reloaded(self, plan: Plan) -> None:
        """After every reconcile: last good contents, invalid files, metrics, systemd status."""
        self._keep_last_good(plan)
        self.invalid = {}
        for problem in plan.problems:
            self.invalid.setdefault(problem.path, str(problem))
        if hasattr(self, "metrics"):
            self.metrics.reloaded(
                self.clock.now().timestamp(),
                len(self.invalid),
                guard=plan.guard is not None,
                last_good=sum(len(names) for names in plan.kept_last_good.values()),
            )
            self.notifier.status(self.view.status_line())
        if hasattr(self, "dashboard"):
            self.dashboard.reloaded(plan, self.clock.now())

    def _keep_last_good(self, plan: Plan) -> None:
        """Store each accepted file's content, so a restart runs it while the file is
        invalid (issue 11, item 2); forget deleted files (not while the guard holds)."""
        store = self.store
        if not isinstance(store, LastGoodFiles):
            return
        for path, (digest, content) in self.reconciler.take_sources().items():
            if self._stored_digests.get(path) != digest:
                store.save_last_good(path, digest, content)
                self._stored_digests[path] = digest
                self._with_jobs.discard(path)
            if path not in self._with_jobs:
                self._jobs_to_store[path] = (digest, plan.accepted.get(path, []))
                self._jobs_queued.set()
        if plan.guard is None:
            gone = [p for p in self._stored_digests if p not in self.reconciler.files]
            if gone:
                store.forget_last_good(gone)
                for path in gone:
                    del self._stored_digests[path]
                    self._jobs_to_store.pop(path, None)

    async def reload(self) -> None:
        """SIGHUP: rescan the whole folder now and apply it (RELOADING=1 ... READY=1)."""
        self.notifier.reloading()
        await self.sync.reload("sighup", deep=True)
        self.notifier.ready()

    async def _store_jobs_forever(self) -> None:
        """Store accepted files' validated jobs beside their content, a file at a time
        between occurrences (a 1,000-job file takes about 10 ms), after the start rather
        than before it (runner.jobs.stored, issue 12)."""
        while True:
            await self._jobs_queued.wait()  # never set but with a LastGoodFiles store
            while self._jobs_to_store:
                deadline = self.scheduler.next_deadline_ms()
                if deadline is not None and deadline - to_ms(self.clock.now()) < 100:
                    await self.clock.sleep(0.2)  # an occurrence is due: after it
                    continue
                path, (digest, jobs) = self._jobs_to_store.popitem()
                form = jobs_stored.dump(jobs)
                store = self.store
                if form is not None and isinstance(store, LastGoodFiles):
                    store.save_validated(path, digest, self._jobs_key, form)
                    self._with_jobs.add(path)
                await asyncio.sleep(0)
            self._jobs_queued.clear()

    async def _prune_forever(self) -> None:
        """Forget finished occurrences past the retention horizon, hourly."""
        keep_ms = self.settings.history_retention_days * 86_400_000
        while True:
            removed = self.store.prune(to_ms(self.clock.now()) - keep_ms)
            if removed:
                log.info("history.pruned", occurrences=removed)
            await self.clock.sleep(3600)


def raise_open_files_limit() -> None:
    """Take the hard limit on open files as the soft one (systemd's default soft limit is
    1,024, its hard limit 524,288): the daemon uses epoll, never select(), so a large
    limit costs nothing, and a flood of connections then meets the control API's own
    bound (runner.daemon.control_door) long before the process runs out."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):  # a kernel cap below it: keep soft
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def return_freed_memory() -> None:
    """Hand back to the system the heap that the start used and freed (files parsed, the
    state's rows read): glibc keeps it for later allocations, which a daemon that has
    started makes few of. 100,000 jobs: 13 MB less RSS after a restart (issue 12).
    Nothing to do where the C library is not glibc."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


def _shared(store: Store) -> PostgresStore | None:
    """The PostgreSQL store, if this is one (told without loading the driver for SQLite)."""
    if isinstance(store, SqliteStore):
        return None
    from runner.store.postgres import PostgresStore

    return store if isinstance(store, PostgresStore) else None
