"""Keep the schedule in step with the jobs folder: scan it, watch it, apply plans.

watchfiles says *that* something changed, not reliably *what*, so any event only marks
the folder dirty: after a quiet period the whole folder is rescanned (through symlinks),
diffed against the schedule (runner.daemon.reconcile) and the plan applied. Measured facts
behind the odd parts (see the folder-watch issue): a watch through a symlink dies after
the first flip, Kubernetes ConfigMap swaps only touch `..data`, `rm -rf` of the folder
kills its watch silently, a half-written YAML file can still parse, and the default
debounce is 1.6 s. Hence: watch the resolved folder plus the directories holding the
symlinks on its path, re-arm when the resolved path or inode changes, read each file
stat-read-stat, resync fully every minute, and never delete every job in one step.

The scan itself (file states, settle checks, the deletion guard) is runner.daemon.folder;
this module is the event side: watches, quiet periods, resyncs and the reload loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog
import watchfiles

from runner.daemon.folder import FolderReconciler, apply, current_of
from runner.daemon.folder import counts as plan_counts
from runner.daemon.folder import plan_folder as plan_folder  # re-exported for callers
from runner.daemon.reconcile import Plan
from runner.daemon.scheduler import Scheduler
from runner.jobs.loader import discover_names as discover_names  # re-exported for callers
from runner.timing.clock import Clock, SystemClock

log = structlog.get_logger("runner.watch")

# watchfiles wakes every `step` ms to check for changes and the stop event. Measured
# with bench/idle.py (10,000 jobs, resync off): step 50 ms -> 0.72% of a core idle,
# 250 ms -> 0.30%. A longer step adds to the change-to-schedule latency (bench/reload.py).
STEP_MS = 150
# A periodic resync trusts stat (size, mtime_ns, ctime_ns, inode: any write changes
# ctime); every DEEP_EVERY-th one rereads every file anyway. A deep pass over 10,000
# files costs ~0.45 s of CPU, which every minute was 0.75% of a core.
DEEP_EVERY = 10

Reason = Literal["start", "change", "resync", "recheck", "poll", "manual", "sighup"]


# ---- watching ---------------------------------------------------------------------------


@dataclass(frozen=True)
class WatchTargets:
    """What to watch for one folder: the resolved folder and the directories around it."""

    folder: str | None  # resolved folder, watched recursively; None while it is missing
    inode: tuple[int, int] | None
    side: tuple[str, ...]  # watched non-recursively
    names: frozenset[str]  # the only entries in `side` directories that matter


def watch_targets(folder: Path) -> WatchTargets:
    """The resolved folder, its parent, and each directory holding a symlink on its path.

    While the folder is missing, its nearest existing ancestor stands in for the parent.
    """
    absolute = Path(os.path.normpath(folder.absolute()))
    real = absolute.resolve()
    side: dict[Path, None] = {}  # ordered set
    names: set[Path] = set()

    def add(entry: Path) -> None:
        parent = entry.parent.resolve()
        side[parent] = None
        names.add(parent / entry.name)

    try:
        info = real.stat()
        inode: tuple[int, int] | None = (info.st_dev, info.st_ino)
    except OSError:
        inode = None
    main = real if inode is not None and real.is_dir() else None
    add(real if main is not None else _first_missing(absolute))
    add(absolute)
    prefix = Path(absolute.anchor)
    for part in absolute.parts[1:]:
        prefix /= part
        if prefix.is_symlink():
            add(prefix)
    existing = [d for d in side if d.is_dir()]
    return WatchTargets(
        str(main) if main is not None else None,
        inode if main is not None else None,
        tuple(str(d) for d in existing),
        frozenset(str(n) for n in names if n.parent in existing),
    )


def _first_missing(path: Path) -> Path:
    """The outermost missing component of `path` (its parent exists)."""
    for candidate in [*reversed(path.parents), path]:
        if not candidate.exists():
            return candidate
    return path


class FolderWatcher:
    """Turns filesystem events, a periodic resync and re-checks into `on_change` calls.

    `on_change(reason)` is awaited one call at a time, after a quiet period once events
    stop (capped at `max_quiet_s`); it returns seconds until it wants another call even
    without events (unsettled files, the deletion guard), or None.

    With `poll_interval_s` (NFS and other mounts without inotify) there are no events:
    the folder is rescanned every interval instead. Not watchfiles' `force_polling`: its
    poller compares mtimes to the second, so a same-size rewrite within a second is
    missed (measured with watchfiles 1.3); the rescan compares mtime_ns, ctime_ns, size
    and inode, and rereads young files.
    """

    def __init__(
        self,
        folder: Path,
        on_change: Callable[[Reason], Awaitable[float | None]],
        *,
        clock: Clock | None = None,
        debounce_ms: int = 50,
        quiet_s: float = 0.25,
        max_quiet_s: float = 2.0,
        resync_s: float = 60.0,
        poll_interval_s: float | None = None,
    ) -> None:
        self.folder = folder
        self.on_change = on_change
        self.clock: Clock = clock or SystemClock()
        self.debounce_ms = debounce_ms
        self.quiet_s = quiet_s
        self.max_quiet_s = max_quiet_s
        self.resync_s = resync_s
        self.poll_interval_s = poll_interval_s
        self.dirty = asyncio.Event()
        self.targets: WatchTargets | None = None
        self._stopping = False
        self._died = False
        self._arm_stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def stop(self) -> None:
        self._stopping = True
        self.dirty.set()

    async def run(self) -> None:
        """Watch until `stop()`: arm, reload once, then wait for events or timers."""
        try:
            await self._rearm("start")
            recheck = await self.on_change("start")
            resync_at = self.clock.monotonic() + self.resync_s
            while not self._stopping:
                reason = await self._wait(resync_at, recheck)
                if self._stopping:
                    break
                if reason == "resync":
                    resync_at = self.clock.monotonic() + self.resync_s
                await self._rearm_if_moved()
                recheck = await self.on_change(reason)
        finally:
            await self._disarm()

    async def _wait(self, resync_at: float, recheck: float | None) -> Reason:
        """Sleep until dirty (then through the quiet period), a re-check, or the resync."""
        now = self.clock.monotonic()
        recheck_at = now + recheck if recheck is not None else resync_at
        poll_at = now + (self.poll_interval_s or self.resync_s)
        await self.clock.sleep(min(resync_at, recheck_at, poll_at) - now, self.dirty)
        if self.dirty.is_set():
            await self._quiet()
            return "change"
        now = self.clock.monotonic()
        if now >= resync_at:
            return "resync"
        return "recheck" if now >= recheck_at else "poll"

    async def _quiet(self) -> None:
        """Wait until no event came for `quiet_s`, or `max_quiet_s` passed since the first."""
        cap = self.clock.monotonic() + self.max_quiet_s
        while not self._stopping:
            self.dirty.clear()
            left = cap - self.clock.monotonic()
            if left <= 0:
                return
            await self.clock.sleep(min(self.quiet_s, left), self.dirty)
            if not self.dirty.is_set():
                return

    async def _rearm_if_moved(self) -> None:
        targets = watch_targets(self.folder)
        if self._died:
            await self._rearm("watch ended")
        elif targets != self.targets:
            await self._rearm("folder moved" if targets.folder else "folder missing")

    async def _rearm(self, reason: str) -> None:
        await self._disarm()
        targets = watch_targets(self.folder)
        self.targets, self._died = targets, False
        self._arm_stop = asyncio.Event()
        if self.poll_interval_s is None:  # when polling, rescans stand in for events
            self._start_watches(targets)
        await asyncio.sleep(0)  # let each awatch set up its watch before anyone scans
        log.info(
            "watch.rearmed",
            reason=reason,
            folder=targets.folder,
            side=list(targets.side),
            polling=self.poll_interval_s is not None,
        )

    def _start_watches(self, targets: WatchTargets) -> None:
        if targets.folder is not None:
            self._tasks.append(asyncio.create_task(self._watch([targets.folder], True, None)))
        if targets.side:
            wanted = targets.names  # a busy parent directory must not cause rescans
            self._tasks.append(
                asyncio.create_task(
                    self._watch(list(targets.side), False, lambda _c, p: p in wanted)
                )
            )

    async def _disarm(self) -> None:
        self._arm_stop.set()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _watch(
        self,
        paths: list[str],
        recursive: bool,
        keep: Callable[[watchfiles.Change, str], bool] | None,
    ) -> None:
        stop = self._arm_stop
        try:
            async for _ in watchfiles.awatch(
                *paths,
                watch_filter=keep,
                debounce=self.debounce_ms,
                step=STEP_MS,
                stop_event=stop,
                recursive=recursive,
                ignore_permission_denied=True,
            ):
                self.dirty.set()
        except (OSError, RuntimeError) as exc:
            log.warning("watch.failed", paths=paths, error=str(exc))
        if not stop.is_set():
            self._died = True  # the watch ended by itself: re-arm on the next pass
            self.dirty.set()


class FolderSync:
    """The folder → schedule loop: watcher events become reloads applied to the scheduler."""

    def __init__(
        self,
        reconciler: FolderReconciler,
        scheduler: Scheduler,
        *,
        debounce_ms: int = 50,
        max_quiet_s: float = 2.0,
        resync_s: float = 60.0,
        poll_interval_s: float | None = None,
        on_reloaded: Callable[[Plan], None] | None = None,
        planned_at: int = -1,
    ) -> None:
        """`planned_at`: the scheduler's `definitions` once the reconciler's last plan was
        applied (the daemon's first load), if it was; -1 plans the first reload in full."""
        self.reconciler = reconciler
        self.scheduler = scheduler
        self.on_reloaded = on_reloaded
        self.watcher = FolderWatcher(
            reconciler.folder,
            self._on_change,
            clock=reconciler.clock,
            debounce_ms=debounce_ms,
            quiet_s=reconciler.quiet_s,
            max_quiet_s=max_quiet_s,
            resync_s=resync_s,
            poll_interval_s=poll_interval_s,
        )
        self.reloads = 0
        self.resyncs = 0
        self._lock = asyncio.Lock()
        self._planned_at = planned_at  # the scheduler's `definitions` when last applied

    async def run(self) -> None:
        await self.watcher.run()

    def stop(self) -> None:
        self.watcher.stop()

    async def reload(self, reason: Reason = "manual", *, deep: bool = False) -> Plan:
        """Rescan (in a thread: file I/O and parsing), then apply the plan on the loop."""
        async with self._lock:
            started = time.perf_counter()
            log.debug("reload.started", reason=reason, folder=str(self.reconciler.folder))
            reading = await asyncio.to_thread(self.reconciler.read, deep=deep)
            same = self._planned_at == self.scheduler.definitions
            plan = self.reconciler.unchanged(reading) if same else None
            if plan is not None:
                counts = plan_counts(plan)  # nothing to apply
            else:
                current, paths = current_of(self.scheduler)
                plan = await asyncio.to_thread(self.reconciler.plan, reading, current, paths)
                with self.scheduler.store.batch():
                    counts = apply(plan, self.scheduler)
                self._planned_at = self.scheduler.definitions
                self.reconciler.applied()
            self.reloads += 1
            quiet = reason in ("poll", "resync", "recheck") and not (plan.changes or plan.guard)
            (log.debug if quiet else log.info)(
                "reload.finished",
                reason=reason,
                **counts,
                kept_last_good=sum(len(v) for v in plan.kept_last_good.values()),
                unsettled=len(plan.unsettled),
                guard=plan.guard is not None,
                duration_ms=round((time.perf_counter() - started) * 1000, 1),
            )
            if self.on_reloaded is not None:
                self.on_reloaded(plan)
            return plan

    async def _on_change(self, reason: Reason) -> float | None:
        if reason == "resync":
            self.resyncs += 1
        deep = reason == "start" or (reason == "resync" and self.resyncs % DEEP_EVERY == 0)
        await self.reload(reason, deep=deep)
        return self.reconciler.next_check_s()
