"""Parsing job files in worker processes (a first start): the same jobs and problems as
parsing them here, real `spawn`ed processes, and a fall-back when a worker cannot help."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from runner.daemon.folder import FolderReconciler
from runner.jobs import parallel
from runner.jobs.loader import Defaults, FileResult, Limits, load_file
from tests.daemon_helpers import DaemonProcess, cli, wait_for
from tests.emulator_fixture import RunningEmulator
from tests.test_stored_jobs import VARIED, assert_same

BROKEN = """\
jobs:
  - {name: ok1, kind: quota, tag: t, schedule: {cron: '0 * * * *'}}
  - {name: bad, kind: quota, tag: t, schedule: {cron: '61 * * * *'}}
"""


def many(n: int, prefix: str) -> bytes:
    lines = ["jobs:"]
    for i in range(n):
        lines.append(
            f"  - {{name: {prefix}{i:04d}, kind: quota, product: p, env: dev, tag: t,"
            f" schedule: {{cron: '{i % 60} * * * *', tz: Europe/Amsterdam}}}}"
        )
    return ("\n".join(lines) + "\n").encode()


def files_of(tmp_path: Path) -> list[tuple[str, bytes]]:
    contents = {
        "a.yaml": many(300, "a"),
        "b.yaml": VARIED.encode(),
        "c.yaml": BROKEN.encode(),
        "d.yaml": many(200, "d"),
        "e.yaml": b"jobs: [unclosed\n",
        "f.yaml": many(250, "f"),
    }
    return [(str(tmp_path / name), data) for name, data in contents.items()]


def load_noting_here(
    files: list[tuple[str, bytes]], workers: int
) -> tuple[dict[str, FileResult], list[str]]:
    """`load_files` on these few KiB with workers all the same (no bytes-per-worker
    bound), and the names of the files this process parsed itself."""
    parsed_here: list[str] = []

    def here(shown: str, data: bytes) -> FileResult:
        parsed_here.append(Path(shown).name)
        return load_file(Path(shown), data=data)

    got = parallel.load_files(
        files, Limits(), Defaults(), workers=workers, per_worker=0, parse=here
    )
    return got, parsed_here


@pytest.mark.parametrize("workers", [1, 2])
def test_workers_give_the_same_jobs_and_problems_as_parsing_here(
    tmp_path: Path, workers: int
) -> None:
    files = files_of(tmp_path)
    for shown, data in files:
        Path(shown).write_bytes(data)
    got, parsed_here = load_noting_here(files, workers)
    assert list(got) == [shown for shown, _ in files]  # in the files' order
    # The valid files the workers took came back from them; the others were parsed
    # here, from the end of the list, and the files with problems once more.
    assert {"c.yaml", "e.yaml", "f.yaml"} <= set(parsed_here)
    assert {"a.yaml", "b.yaml"}.isdisjoint(parsed_here)
    for shown, data in files:
        want = load_file(Path(shown), data=data)
        assert got[shown].content_hash == want.content_hash
        assert_same(got[shown].jobs, want.jobs)
        assert [str(p) for p in got[shown].problems] == [str(p) for p in want.problems]
    assert [str(p) for p in got[str(tmp_path / "c.yaml")].problems] == [
        str(p) for p in load_file(tmp_path / "c.yaml", data=BROKEN.encode()).problems
    ]
    assert got[str(tmp_path / "c.yaml")].problems[0].line == 3


@pytest.mark.parametrize(
    "dies", ["sys.exit(3)", "sys.stdin.buffer.read(100); sys.exit(3)", "os.kill(os.getpid(), 9)"]
)
def test_workers_that_die_leave_their_files_to_this_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dies: str
) -> None:
    # The OOM killer, say: every file a dead worker held is parsed here, same result.
    command = [sys.executable, "-c", f"import os, sys; {dies}"]
    monkeypatch.setattr(parallel, "WORKER_COMMAND", command)
    files = files_of(tmp_path)
    got = parallel.load_files(files, Limits(), Defaults(), workers=2, per_worker=0)
    for shown, data in files:
        assert_same(got[shown].jobs, load_file(Path(shown), data=data).jobs)


def test_the_folder_parses_a_large_change_in_workers_with_the_same_plan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "jobs.d"
    folder.mkdir()
    for shown, data in files_of(folder):
        Path(shown).write_bytes(data)
    calls: list[int] = []
    real = parallel.load_files

    def counted(*args: object, **kwargs: object) -> object:
        calls.append(len(args[0]))  # type: ignore[arg-type]
        return real(*args, **kwargs)  # type: ignore[arg-type]

    here = FolderReconciler(folder, quiet_s=0.0)
    want = here.scan({}, deep=True)
    pooled = FolderReconciler(folder, quiet_s=0.0, parse_workers=2)
    pooled.parallel_min_bytes = 0
    monkeypatch.setattr(parallel, "load_files", counted)
    got = pooled.scan({}, deep=True)
    current = {name: loaded.digest for name, loaded in got.desired.items()}
    again = pooled.scan(current, deep=True)  # read again, unchanged: nothing to parse
    assert calls == [6]
    assert sorted(got.desired) == sorted(want.desired)
    for name, loaded in got.desired.items():
        assert_same([loaded], [want.desired[name]])
    assert [str(p) for p in got.problems] == [str(p) for p in want.problems]
    assert not again.changes


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def test_a_daemon_starts_on_a_large_folder_with_workers_and_runs_its_jobs(
    tmp_path: Path, emulator: RunningEmulator
) -> None:
    # 1.5 MiB of job files: over the size that starts a worker (one per MiB), started
    # by the real daemon as it is under systemd.
    d = DaemonProcess(tmp_path, emulator, env={"DUCTAPE_RUNNER_PARSE_WORKERS": "2"})
    for f in range(12):
        d.write_job(f"many-{f:02d}.yaml", many(1000, f"m{f:02d}-").decode())
    d.write_job("broken.yaml", BROKEN)
    d.write_job(
        "soon.yaml",
        "name: soon\nkind: quota\nproduct: p\nenv: dev\ntag: t\nschedule: {start_at: 0}\n",
    )
    assert sum(p.stat().st_size for p in d.jobs.iterdir()) > parallel.MIN_BYTES
    try:
        d.start()
        [started] = d.events("daemon.started")
        assert (started["jobs"], started["invalid_files"]) == (12 * 1000 + 1, 1)
        [invalid] = d.events("file.invalid")
        assert invalid["path"].endswith("broken.yaml")
        assert (invalid["line"], invalid["field"]) == (3, "jobs[1].schedule.cron")
        assert d.proc is not None and children_of(d.proc.pid) == []  # the workers are gone
        wait_for(lambda: any(":soon:" in c["idempotency_key"] for c in emulator.calls()))
    finally:
        d.stop()


def test_a_file_changed_since_it_was_read_is_parsed_from_the_bytes_read(tmp_path: Path) -> None:
    # The workers read the files themselves (only a hash crosses the pipe): one that is
    # not what the caller read is left to the caller, which parses what it read.
    files = files_of(tmp_path)
    for shown, data in files:
        Path(shown).write_bytes(data.replace(b"tag: t", b"tag: changed"))
    got = parallel.load_files(files, Limits(), Defaults(), workers=2, per_worker=0)
    for shown, data in files:
        assert_same(got[shown].jobs, load_file(Path(shown), data=data).jobs)
    assert {loaded.job.tag for loaded in got[files[0][0]].jobs} == {"t"}  # type: ignore[attr-defined]


def test_what_a_worker_prints_does_not_reach_the_frames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A log line or a library's notice on stdout would have been read as an answer.
    code = (
        "import builtins, runner.jobs.parallel as p; real = p.stored_form\n"
        "def noisy(*a):\n    print('noise'); return real(*a)\n"
        "p.stored_form = noisy; p._serve()\n"
    )
    monkeypatch.setattr(parallel, "WORKER_COMMAND", [sys.executable, "-c", code])
    files = files_of(tmp_path)
    for shown, data in files:
        Path(shown).write_bytes(data)
    got, parsed_here = load_noting_here(files, 2)
    for shown, data in files:
        assert_same(got[shown].jobs, load_file(Path(shown), data=data).jobs)
    assert {"a.yaml", "b.yaml"}.isdisjoint(parsed_here)  # answered by the workers


@pytest.mark.parametrize("swap", ["fifo", "huge"])
def test_a_fifo_or_a_huge_file_swapped_in_is_not_read_by_the_workers(
    tmp_path: Path, swap: str
) -> None:
    # Read bounded and without blocking, as the daemon reads: a FIFO put in a file's
    # place after the daemon read it would have held a worker (and the start) forever.
    files = files_of(tmp_path)
    for shown, _ in files:
        if swap == "fifo":
            os.mkfifo(shown)
        else:
            Path(shown).write_bytes(b"x" * (Limits().max_file_bytes + 10))
    got = parallel.load_files(files, Limits(), Defaults(), workers=2, per_worker=0)
    for shown, data in files:
        assert_same(got[shown].jobs, load_file(Path(shown), data=data).jobs)


def test_check_gives_the_same_verdict_with_workers_as_without(tmp_path: Path) -> None:
    # `ExecStartPre=ductape-runner check` reads the whole folder before every start.
    folder = tmp_path / "jobs.d"
    folder.mkdir()
    for f in range(10):
        (folder / f"many-{f:02d}.yaml").write_bytes(many(1000, f"m{f:02d}-"))
    (folder / "broken.yaml").write_text(BROKEN)
    (folder / "zz-again.yaml").write_text(  # a name another file took: the later file's problem
        "name: m00-0001\nkind: quota\ntag: t\nschedule: {cron: '0 * * * *'}\n"
    )
    assert sum(p.stat().st_size for p in folder.iterdir()) > parallel.MIN_BYTES
    runs = {
        workers: cli("check", str(folder), "--format", "json", env={
            "DUCTAPE_RUNNER_PARSE_WORKERS": workers, "DUCTAPE_RUNNER_LOG_JSON": "true"
        })
        for workers in ("0", "2")
    }  # fmt: skip
    assert runs["0"].returncode == runs["2"].returncode == 1
    assert runs["0"].stdout == runs["2"].stdout
    problems = json.loads(runs["2"].stdout)
    assert [(Path(p["path"]).name, p["line"]) for p in problems] == [
        ("broken.yaml", 3),
        ("zz-again.yaml", 1),
    ]


def test_workers_are_one_per_core_at_most_eight_and_one_per_mib_at_most() -> None:
    assert parallel.workers_for(3) == 3 and parallel.workers_for(0) == 0
    assert 1 <= parallel.workers_for(None) <= min(len(os.sched_getaffinity(0)), 8)
    mib = parallel.MIN_BYTES
    assert [parallel.workers_to_start(8, size) for size in (mib, 2 * mib + 1, 20 * mib)] == [
        1,
        2,
        8,
    ]
    assert parallel.workers_to_start(0, 20 * mib) == 0
