"""Parsing many job files on every core at once (a first start of 100,000 jobs, issue 12).

YAML with every key's position and the validation of each job are Python work that
holds the GIL: 100,000 jobs in 100 files took about 5.5 s of one core. Worker processes
(`python -m runner.jobs.parallel`, started afresh: nothing of the daemon's threads,
signal handlers, open files or secrets is inherited) parse and validate files and send
back each valid file's stored form (runner.jobs.stored), which rebuilds in about a fifth
of the time. The calling process meanwhile parses files itself, from the other end of
the list, so it never waits idle while the workers start.

Plain pipes and pickled frames, not multiprocessing: that would leave a resource-tracker
process beside the daemon for good, and a thread that can stop finishing futures when a
worker dies (Python 3.11). A file with problems is sent back as None and parsed again by
the caller, which finds the same problems with the same lines: only valid files cross
over. A worker that dies, or a form that does not rebuild, leaves its files to the
caller; the result is the same, only slower.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import queue
import signal
import struct
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import structlog

from runner.jobs import stored
from runner.jobs.loader import Defaults, FileResult, Limits, LoadedJob, load_file, read_bounded
from runner.jobs.yamlsrc import SourceError

log = structlog.get_logger("runner.folder")

# One worker for each this much to parse: below it, one process is quicker than starting
# one (a worker takes about 0.3 s to import the job model; 1 MiB parses in about 0.5 s).
MIN_BYTES = 1024 * 1024
_FRAME = struct.Struct("!Q")
_MAX_FRAME = 1 << 30
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent.parent)
WORKER_COMMAND = [sys.executable, "-m", "runner.jobs.parallel"]


# Each worker imports the job model (about 50 MB while it lives): on a large machine,
# one per core would start dozens for a few MiB of files.
MAX_WORKERS = 8


def workers_for(setting: int | None) -> int:
    """How many worker processes: the setting, or (None) one per core this process may
    use, at most MAX_WORKERS."""
    if setting is not None:
        return setting
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count() or 1
    return min(cores, MAX_WORKERS)


def workers_to_start(workers: int, size: int, per_worker: int = MIN_BYTES) -> int:
    """Of `workers`, how many to start for `size` bytes to parse: one per `per_worker`
    bytes at most, so none below it (0: no such bound)."""
    return min(workers, size // per_worker) if per_worker > 0 else workers


def stored_form(shown: str, digest: str, limits: Limits, defaults: Defaults) -> bytes | None:
    """In a worker: the stored form of one valid file's jobs, read from `shown` (the
    caller's bytes are not sent, only their hash: a file that changed since the caller
    read it is left to the caller). None if it has problems, changed, or cannot be
    stored: the caller parses it and reports what it finds."""
    try:  # bounded and non-blocking: a FIFO or a huge file swapped in meanwhile is refused
        data = read_bounded(Path(shown), limits)
    except SourceError:
        return None
    if hashlib.sha256(data).hexdigest() != digest:
        return None
    result = load_file(Path(shown), limits, defaults, data=data)
    if result.problems:
        return None
    return stored.dump(result.jobs)


def _send(stream: IO[bytes], value: Any) -> None:
    frame = pickle.dumps(value, protocol=5)
    stream.write(_FRAME.pack(len(frame)) + frame)
    stream.flush()


def _receive(stream: IO[bytes]) -> Any:
    head = stream.read(_FRAME.size)
    if len(head) < _FRAME.size:
        raise EOFError("the worker closed its pipe")
    (size,) = _FRAME.unpack(head)
    if size > _MAX_FRAME:
        raise EOFError(f"a frame of {size} bytes: not a frame")
    frame = stream.read(size)
    if len(frame) < size:
        raise EOFError("the worker closed its pipe mid-answer")
    return pickle.loads(frame)  # our own child's answer: bytes or None


def _serve() -> None:
    """A worker's loop: (path, digest, limits, defaults) in, stored form or None out."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group
    # Answers go out on the original stdout alone: anything printed (a log line, a
    # library's notice) goes to stderr, not into the frames.
    stdin, stdout = sys.stdin.buffer, os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    while True:
        try:
            request = _receive(stdin)
        except EOFError:
            return
        _send(stdout, stored_form(*request))


_GONE = object()  # a worker's answer when it died


@dataclass(eq=False)
class _Worker:
    proc: subprocess.Popen[bytes]
    given: deque[tuple[str, bytes, str]] = field(default_factory=deque)  # path, bytes, hash
    reader: threading.Thread | None = None

    def read_answers(self, answers: queue.SimpleQueue[tuple[_Worker, object]]) -> None:
        """In a thread: each answer as it comes, so the worker never waits to write it
        (an answer is larger than a pipe holds) while the caller is parsing."""
        assert self.proc.stdout is not None
        try:
            while True:
                answers.put((self, _receive(self.proc.stdout)))
        except Exception:  # whatever it was, the caller must hear of it (or wait forever)
            answers.put((self, _GONE))


def _start_worker(answers: queue.SimpleQueue[tuple[_Worker, object]]) -> _Worker:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUCTAPE_RUNNER_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_ROOT, env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        WORKER_COMMAND,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        close_fds=True,
    )
    worker = _Worker(proc)
    worker.reader = threading.Thread(
        target=worker.read_answers, args=(answers,), name="parse-worker-answers", daemon=True
    )
    worker.reader.start()
    return worker


def load_files(
    files: Sequence[tuple[str, bytes]],
    limits: Limits,
    defaults: Defaults,
    *,
    workers: int,
    per_worker: int = MIN_BYTES,
    parse: Callable[[str, bytes], FileResult] | None = None,
) -> dict[str, FileResult]:
    """Parse and validate `files` ((shown path, content) each): path -> FileResult, the
    same as `load_file` gives for each. Uses up to `workers` processes besides this
    one, one per `per_worker` bytes of files (`workers_to_start`): none for a few files."""

    def here(shown: str, data: bytes) -> FileResult:
        if parse is not None:
            return parse(shown, data)
        return load_file(Path(shown), limits, defaults, data=data)

    workers = workers_to_start(workers, sum(len(data) for _, data in files), per_worker)
    if workers < 1 or len(files) < 2:
        return {shown: here(shown, data) for shown, data in files}
    results: dict[str, FileResult] = {}
    answers: queue.SimpleQueue[tuple[_Worker, object]] = queue.SimpleQueue()
    pool: list[_Worker] = []
    first, last = 0, len(files)

    def give(worker: _Worker) -> None:
        # Two files each (a request is a path and a hash: it never fills the pipe), so
        # the next is there as soon as one is answered.
        nonlocal first
        while len(worker.given) < 2 and first < last and worker in pool:
            shown, data = files[first]
            first += 1
            digest = hashlib.sha256(data).hexdigest()
            worker.given.append((shown, data, digest))
            try:
                assert worker.proc.stdin is not None
                _send(worker.proc.stdin, (shown, digest, limits, defaults))
            except OSError:
                drop(worker)

    def drop(worker: _Worker) -> None:
        """A worker that died: what it held is parsed here."""
        if worker in pool:
            pool.remove(worker)
            _stop(worker)
            log.debug("file.worker_lost", files=len(worker.given))
            for shown, data, _ in worker.given:
                results[shown] = here(shown, data)
            worker.given.clear()

    def take(worker: _Worker, form: object) -> None:
        if form is _GONE:
            drop(worker)
        elif worker in pool:
            shown, data, digest = worker.given.popleft()
            results[shown] = _rebuilt(shown, data, digest, form, here)
            give(worker)

    try:
        for _ in range(min(workers, len(files) - 1)):
            pool.append(_start_worker(answers))
        for worker in list(pool):
            give(worker)
        while first < last:  # this process takes from the end meanwhile
            last -= 1
            shown, data = files[last]
            results[shown] = here(shown, data)
            while not answers.empty():
                take(*answers.get())
        while any(worker.given for worker in pool):
            take(*answers.get())
    finally:
        for worker in list(pool):
            _stop(worker)
    return {shown: results[shown] for shown, _ in files}  # in the files' order


def _stop(worker: _Worker) -> None:
    """Close its input (it exits at the end of it) and wait for it; kill it if it lingers."""
    if worker.proc.stdin is not None:
        with contextlib.suppress(OSError):  # it died with a request half written
            worker.proc.stdin.close()
    try:
        worker.proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        worker.proc.kill()
        worker.proc.wait()
    if worker.reader is not None and worker.reader is not threading.current_thread():
        worker.reader.join(timeout=5)
    if worker.proc.stdout is not None:
        worker.proc.stdout.close()


def _rebuilt(
    shown: str,
    data: bytes,
    digest: str,
    form: object,
    here: Callable[[str, bytes], FileResult],
) -> FileResult:
    jobs: list[LoadedJob] | None = None
    if isinstance(form, bytes):
        try:
            jobs = stored.load(form, shown)
        except stored.Unreadable as exc:
            log.debug("file.parsed_here", path=shown, reason=str(exc))
    if jobs is None:  # problems (found again here, with their lines), or not storable
        return here(shown, data)
    return FileResult(shown, content_hash=digest, jobs=jobs)


if __name__ == "__main__":
    _serve()
