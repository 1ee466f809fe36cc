"""Scanning the jobs folder: file states read stat-read-stat, settle checks, plans, applying."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog

from runner.daemon.reconcile import FileState, Plan, compute_plan
from runner.daemon.scheduler import Scheduler
from runner.errors import Problem
from runner.jobs import parallel, stored
from runner.jobs.loader import (
    Defaults,
    FileResult,
    Limits,
    LoadedJob,
    discover_names,
    load_file,
    read_bounded,
)
from runner.jobs.yamlsrc import SourceError
from runner.timing.clock import Clock, SystemClock

log = structlog.get_logger("runner.watch")

DEFAULT_LIMITS, DEFAULT_DEFAULTS = Limits(), Defaults()
CACHE_AGE_S = 1.0  # a file unchanged for this long is skipped while its stat is unchanged
# A file changed in place less than this long ago may still be half written: it waits,
# unless the kernel says nobody has it open for writing (issue 11, item 1).
SETTLE_S = 2.0


# ---- scanning ---------------------------------------------------------------------------


@dataclass
class Reading:
    """The folder as one pass read it: file states by shown path."""

    found: dict[str, FileState]
    unsettled: list[str]  # still being written: their previous states stand
    present: bool  # the folder exists


@dataclass(frozen=True)
class _Stat:
    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, info: os.stat_result) -> _Stat:
        return cls(info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)

    def age_s(self, now_s: float) -> float:
        return now_s - max(self.mtime_ns, self.ctime_ns) / 1e9


@dataclass(slots=True)
class _Read:
    """A file read whole and settled, not parsed yet."""

    shown: str
    data: bytes | SourceError
    previous: FileState | None
    digest: str | None = None  # of `data`, once `_to_parse` has hashed it


class FolderReconciler:
    """Per-file state between scans: `scan` yields the plan, `apply()` carries it out.

    Files whose stat changed during the read, or that are younger than `quiet_s`, are
    "unsettled": their previous version stands and the plan asks for a re-check. The
    mass-deletion guard holds every job while the folder is gone or empty, until that
    state has lasted `confirm_s` (on the injected clock).
    """

    def __init__(
        self,
        folder: Path,
        *,
        clock: Clock | None = None,
        limits: Limits = DEFAULT_LIMITS,
        defaults: Defaults = DEFAULT_DEFAULTS,
        quiet_s: float = 0.25,
        confirm_s: float = 300.0,
        parse_workers: int = 0,
    ) -> None:
        """`parse_workers`: processes that parse changed files besides this one, when
        there is at least `parallel.MIN_BYTES` of them (runner.jobs.parallel)."""
        self.folder = folder
        self.parse_workers = parse_workers
        self.parallel_min_bytes = parallel.MIN_BYTES
        self._parsed: dict[str, FileResult] = {}  # by the workers, for `_parse` to take
        self.clock: Clock = clock or SystemClock()
        self.limits = limits
        self.defaults = defaults
        self.quiet_s = quiet_s
        self.confirm_s = confirm_s
        self.files: dict[str, FileState] = {}
        self.last_plan: Plan | None = None
        self._seen: dict[str, _Stat] = {}  # stat of the settled read each state came from
        self._inodes: dict[str, tuple[int, int]] = {}  # (dev, ino) of each path's last read
        self._guard_since: float | None = None
        self.present: bool | None = None  # the folder existed at the last scan
        # Last good contents from the state file (path -> content), for files that are
        # invalid when first read after a restart (issue 11, item 2).
        self.stored: dict[str, bytes] = {}
        # Files whose validated jobs the state keeps (path -> digest), and how to read
        # them: an unchanged file's jobs are rebuilt from them instead of parsed (issue 12).
        self.validated: dict[str, str] = {}
        self.read_validated: Callable[[str, str], bytes | None] = lambda path, digest: None
        self._reported: dict[str, str] = {}  # path -> problem already logged

    def scan(
        self,
        current: Mapping[str, str],
        current_paths: Mapping[str, str] | None = None,
        *,
        deep: bool = False,
    ) -> Plan:
        """Rescan the folder and plan against `current` (name -> digest); `deep` rereads all."""
        return self.plan(self.read(deep=deep), current, current_paths)

    def read(self, *, deep: bool = False) -> Reading:
        """Read the folder's files: only those whose stat or (`deep`) content changed are
        parsed; the others are the states they were, the same objects."""
        real = os.path.realpath(self.folder)
        present = Path(real).is_dir()
        now_s = self.clock.now().timestamp()
        found: dict[str, FileState] = {}
        unsettled: list[str] = []
        cut, shown_base = len(real.rstrip(os.sep)) + 1, str(self.folder)
        reads: list[tuple[str, FileState | _Read | None]] = []
        for path in discover_names(real) if present else []:
            # Shown under the configured folder: stable across symlink swaps.
            shown = os.path.join(shown_base, path[cut:])  # noqa: PTH118 (strings: see discover_names)
            got = self._read(path, shown, now_s, deep)
            if isinstance(got, _Read) and not self._to_parse(got):
                got = self._parse(got.shown, got.data, got.previous, got.digest)  # as read
            reads.append((shown, got))
        self._parse_ahead([got for _, got in reads if isinstance(got, _Read)])
        try:
            for shown, got in reads:
                state = (
                    self._parse(got.shown, got.data, got.previous, got.digest)
                    if isinstance(got, _Read)
                    else got
                )
                if state is None:
                    unsettled.append(shown)
                    state = self.files.get(shown)
                if state is not None:
                    found[shown] = state
        finally:
            self._parsed.clear()
        return Reading(found, unsettled, present)

    def _to_parse(self, read: _Read) -> bool:
        """Whether `_parse` would parse the file (not unreadable, unchanged, or rebuilt
        from the state): only those wait for `_parse_ahead`."""
        data, previous = read.data, read.previous
        if isinstance(data, SourceError):
            return False
        digest = read.digest = hashlib.sha256(data).hexdigest()
        if previous is not None and previous.content_hash == digest:
            return False
        return self.validated.get(read.shown) != digest

    def _parse_ahead(self, reads: list[_Read]) -> None:
        """Parse the files that `_parse` would, in worker processes too when there is
        enough of them to be worth it (a first start, a large change)."""
        todo = [(read.shown, read.data) for read in reads if isinstance(read.data, bytes)]
        if not todo:
            return  # nothing changed
        self._parsed = parallel.load_files(
            todo,
            self.limits,
            self.defaults,
            workers=self.parse_workers,
            per_worker=self.parallel_min_bytes,
        )

    def plan(
        self,
        reading: Reading,
        current: Mapping[str, str],
        current_paths: Mapping[str, str] | None = None,
    ) -> Plan:
        """Plan what was read against `current` (name -> digest), and remember it."""
        found = reading.found
        plan = compute_plan(
            current,
            found,
            folder_present=reading.present,
            guard_confirmed=self._guard(bool(found), bool(current)),
            current_paths=current_paths,
        )
        plan.unsettled = reading.unsettled
        self._note_presence(reading.present)
        self._commit(plan, found)
        return plan

    def unchanged(self, reading: Reading) -> Plan | None:
        """A plan that changes nothing, made with no work per job, when what the last plan
        was made from is all still there: every file is the state it was (no file
        changed), none is being written, and that plan found no invalid file, guard or
        file being written. The caller vouches that the last plan was applied and that
        the schedule has not changed since. Else None: plan in full.

        A periodic resync of 100,000 unchanged jobs planned in full was about 0.3 s of
        Python: on the loop (the schedule's digests, applying the plan) and in a thread
        that held the GIL against it. At 100,000 occurrences a minute each resync left a
        backlog behind it, fire lateness up to 0.45 s (issue 12, item 3).
        """
        last = self.last_plan
        if (
            last is None
            or last.problems
            or last.guard
            or last.kept_last_good
            or last.unsettled
            or reading.unsettled
            or reading.present != self.present
            or reading.found.keys() != self.files.keys()
            or any(state is not self.files[path] for path, state in reading.found.items())
        ):
            return None
        self.applied()  # the schedule holds what it wanted: all unchanged now
        return Plan(unchanged=(self.last_plan or last).unchanged)

    def applied(self) -> None:
        """The last plan is in the schedule now: keep of it what later reads need (its
        problems, guard, last good versions, accepted files, files being written, and
        the names it left as they were), not the jobs it added or wanted, which the
        schedule holds (issue 12: a 100,000-job start kept 5 MB of them for good)."""
        last = self.last_plan
        if last is None or not (last.changes or last.desired):
            return
        self.last_plan = Plan(
            unchanged=list(last.desired),
            problems=last.problems,
            kept_last_good=last.kept_last_good,
            guard=last.guard,
            accepted=last.accepted,
            unsettled=last.unsettled,
        )

    def _note_presence(self, present: bool) -> None:
        """Say when the folder is missing (at start: maybe a sidecar has not made it yet)."""
        if present == self.present:
            return
        if not present:
            log.warning(
                "folder.missing",
                folder=str(self.folder),
                message=f"jobs folder {self.folder} does not exist; watching for it",
            )
        elif self.present is False:
            log.info("folder.appeared", folder=str(self.folder))
        self.present = present

    def next_check_s(self) -> float | None:
        """Seconds until the folder should be scanned again without an event, if ever."""
        plan = self.last_plan
        waits = []
        if plan is not None and plan.unsettled:
            waits.append(max(self.quiet_s, 0.05))
        if plan is not None and plan.guard and self._guard_since is not None:
            held = self.clock.monotonic() - self._guard_since
            waits.append(max(self.confirm_s - held, 0.0) + 0.01)
        return min(waits, default=None)

    def _read(self, path: str, shown: str, now_s: float, deep: bool) -> FileState | _Read | None:
        """Stat, read, stat: the file's state, what to parse for it, or None while it is
        still being written."""
        previous = self.files.get(shown)
        try:
            before = _Stat.of(os.stat(path))  # noqa: PTH116
        except OSError as exc:  # a dangling symlink, or deleted since the walk
            return _Read(shown, SourceError(f"cannot open file: {exc.strerror}", 1, 1), previous)
        if not deep and previous is not None and self._seen.get(shown) == before:
            return previous
        try:
            data: bytes | SourceError = read_bounded(Path(path), self.limits)
        except SourceError as exc:
            data = exc
        try:
            after = _Stat.of(os.stat(path))  # noqa: PTH116
        except OSError:
            return None
        if after != before or (self.quiet_s > 0 and not self._settled(path, shown, before, now_s)):
            return None
        if before.age_s(now_s) >= CACHE_AGE_S:
            self._seen[shown] = before
        self._inodes[shown] = (before.dev, before.ino)
        return _Read(shown, data, previous)

    def _settled(self, path: str, shown: str, before: _Stat, now_s: float) -> bool:
        """Quiet for `quiet_s`, and not being written: a writer that pauses mid-file
        leaves a prefix that may well parse (issue 11, item 1).

        Nobody holding the file open for writing settles it at once (`cp`, editors,
        ConfigMap and git-sync swaps). Where the kernel will not say (another owner's
        files, as under systemd), a path that now names another file was swapped in
        whole (rename, symlink swap) and settles at once; anything else written in
        place waits until it has been unchanged for SETTLE_S.
        """
        age = before.age_s(now_s)
        if age < self.quiet_s:
            return False
        if age >= max(SETTLE_S, self.quiet_s):
            return True
        writing = open_for_writing(path)
        if writing is not None:
            return not writing
        last = self._inodes.get(shown)
        return last is not None and last != (before.dev, before.ino)

    def _parse(
        self,
        shown: str,
        data: bytes | SourceError,
        previous: FileState | None,
        digest: str | None = None,
    ) -> FileState:
        last_good = None if previous is None else previous.last_good_jobs
        if isinstance(data, SourceError):
            problem = Problem(shown, data.line, data.column, "", data.message)
            last_good = last_good if last_good is not None else self._stored_good(shown)
            return FileState(shown, "", [], [problem], last_good)
        digest = digest or hashlib.sha256(data).hexdigest()
        if previous is not None and previous.content_hash == digest:
            return previous  # only changed files are parsed
        jobs = self._validated(shown, digest)
        if jobs is not None:
            return FileState(shown, digest, jobs, [], last_good, source=data)
        result = self._parsed.pop(shown, None) or load_file(
            Path(shown), self.limits, self.defaults, data=data
        )
        if result.problems:
            last_good = last_good if last_good is not None else self._stored_good(shown)
            return FileState(shown, digest, result.jobs, result.problems, last_good)
        return FileState(shown, digest, result.jobs, [], last_good, source=data)

    def _validated(self, shown: str, digest: str) -> list[LoadedJob] | None:
        """The file's jobs rebuilt from the state, if validated there from this content."""
        if self.validated.pop(shown, None) != digest:
            return None
        form = self.read_validated(shown, digest)
        if form is None:
            return None
        try:
            return stored.load(form, shown)
        except stored.Unreadable as exc:
            log.debug("file.reparsed", path=shown, reason=str(exc))
            return None

    def _stored_good(self, shown: str) -> list[LoadedJob] | None:
        """The jobs of the file's last accepted content kept in the state, if any."""
        content = self.stored.get(shown)
        if content is None:
            return None
        result = load_file(Path(shown), self.limits, self.defaults, data=content)
        return None if result.problems else result.jobs

    def take_sources(self) -> dict[str, tuple[str, bytes]]:
        """Contents of the files the last plan accepted, not yet taken: path -> (digest,
        content). Taken once, so the bytes are not held in memory any longer."""
        taken = {}
        for path in self.last_plan.accepted if self.last_plan is not None else {}:
            state = self.files.get(path)
            if state is not None and state.source is not None:
                taken[path] = (state.content_hash, state.source)
                state.source = None
        return taken

    def _guard(self, has_files: bool, has_jobs: bool) -> bool:
        """Track how long the folder has been gone or empty; True once confirmed."""
        if has_files or not has_jobs:
            if self._guard_since is not None:
                log.info("folder.guard", state="cleared", folder=str(self.folder))
            self._guard_since = None
            return False
        now = self.clock.monotonic()
        if self._guard_since is None:
            self._guard_since = now
        return now - self._guard_since >= self.confirm_s

    def _commit(self, plan: Plan, found: dict[str, FileState]) -> None:
        for path, jobs in plan.accepted.items():
            found[path].last_good_jobs = jobs
        if plan.guard:
            # Hold on to the vanished files too, so their last good versions survive.
            found = {**self.files, **found}
            held = self.clock.monotonic() - (self._guard_since or self.clock.monotonic())
            log.warning(
                "folder.guard",
                state="holding",
                folder=str(self.folder),
                jobs=len(plan.unchanged),
                held_s=round(held, 1),
                confirm_s=self.confirm_s,
                message=plan.guard,
            )
        elif self._guard_since is not None and plan.remove:
            log.warning("folder.guard", state="confirmed", removed=len(plan.remove))
        self._seen = {p: s for p, s in self._seen.items() if p in found}
        self._inodes = {p: i for p, i in self._inodes.items() if p in found}
        self.files = found
        self.last_plan = plan
        self._report(plan)

    def _report(self, plan: Plan) -> None:
        """Log each file's first problem once per distinct problem, not every scan."""
        first: dict[str, Problem] = {}
        for problem in plan.problems:
            first.setdefault(problem.path, problem)
        for path, problem in first.items():
            if self._reported.get(path) == str(problem):
                continue
            self._reported[path] = str(problem)
            log.error(
                "file.invalid",
                path=path,
                line=problem.line,
                field=problem.field,
                message=problem.message,
                problems=sum(1 for p in plan.problems if p.path == path),
                kept=plan.kept_last_good.get(path, []),
            )
        self._reported = {p: m for p, m in self._reported.items() if p in first}


def open_for_writing(path: str) -> bool | None:
    """Whether some process holds the file open for writing; None where unknown.

    Linux refuses a read lease (EAGAIN) while any process has the file open for
    writing. Taking one needs to own the file; on another owner's file, or on systems
    without leases, the answer is None. The lease is dropped at once; should a writer
    open the file meanwhile, the kernel signals SIGURG (ignored by default) instead
    of SIGIO, whose default would end the daemon.
    """
    setlease = getattr(fcntl, "F_SETLEASE", None)
    if setlease is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.fcntl(fd, fcntl.F_SETSIG, signal.SIGURG)
        fcntl.fcntl(fd, setlease, fcntl.F_RDLCK)
    except OSError as exc:
        return True if exc.errno == errno.EAGAIN else None
    else:
        fcntl.fcntl(fd, setlease, fcntl.F_UNLCK)
        return False
    finally:
        os.close(fd)


def current_of(scheduler: Scheduler) -> tuple[dict[str, str], dict[str, str]]:
    """The schedule as plans see it: name -> digest, and name -> defining path."""
    entries = scheduler.entries
    return (
        {name: e.loaded.digest for name, e in entries.items()},
        {name: e.loaded.path for name, e in entries.items()},
    )


def apply(plan: Plan, scheduler: Scheduler) -> dict[str, int]:
    """Carry a plan out on the scheduler; returns counts by action."""
    for loaded in [*plan.add, *plan.update]:
        scheduler.upsert(loaded)
    removed = sum(1 for name in plan.remove if scheduler.remove(name))
    for name in plan.unchanged:
        wanted, entry = plan.desired.get(name), scheduler.entries.get(name)
        if wanted is not None and entry is not None and entry.loaded.path != wanted.path:
            scheduler.upsert(wanted)  # same definition, moved to another file
    return counts(plan, removed)


def counts(plan: Plan, removed: int = 0) -> dict[str, int]:
    """A plan's jobs by action, as reload.finished reports them."""
    return {
        "added": len(plan.add),
        "updated": len(plan.update),
        "removed": removed,
        "unchanged": len(plan.unchanged),
        "invalid": len(plan.invalid_paths),
    }


def plan_folder(
    folder: Path,
    limits: Limits = DEFAULT_LIMITS,
    defaults: Defaults = DEFAULT_DEFAULTS,
    current: Mapping[str, str] | None = None,
    current_paths: Mapping[str, str] | None = None,
) -> Plan:
    """What the daemon would change now (for `ductape-runner plan`); changes nothing.

    A fresh process knows no last good versions, so an invalid file keeps the jobs that
    `current_paths` says came from it, as the daemon would.
    """
    reconciler = FolderReconciler(folder, limits=limits, defaults=defaults, quiet_s=0.0)
    return reconciler.scan(current or {}, current_paths, deep=True)
