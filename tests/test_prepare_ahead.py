"""Occurrences written ahead of their instants (issue 12, item 3): one commit for many,
and never a run lost, doubled or run early because of it. Fake clock, real SQLite file."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from runner.daemon.decisions import to_ms
from runner.daemon.scheduler import PREPARE_AHEAD_S, PREPARE_BATCH, RunControl
from runner.jobs.model import Job
from runner.store import Occurrence
from runner.timing.clock import FakeClock
from runner.timing.policy import idempotency_key
from tests.sched_helpers import FakeExecutor, Harness, jobs_from

T0 = datetime(2026, 3, 1, 0, 0, tzinfo=UTC)
FIRST_MS = to_ms(T0 + timedelta(seconds=1))
JOB = "kind: quota\ntag: t\n"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


class WaitingExecutor(FakeExecutor):
    """Like the real executor, a first attempt waits for `next_attempt_ms` (a resumed
    occurrence that was written ahead of its instant)."""

    async def __call__(
        self, job: Job, occ: Occurrence, deadline: datetime | None, control: RunControl
    ) -> None:
        if occ.next_attempt_ms is not None:
            wait_s = (occ.next_attempt_ms - to_ms(self.clock.now())) / 1000
            if wait_s > 0:
                await self.clock.sleep(wait_s)
        await super().__call__(job, occ, deadline, control)


def one_shots(count: int, *, first_ms: int = FIRST_MS, extra: str = "") -> str:
    """`count` one-shot jobs, j00 at `first_ms`, each next one a millisecond later."""
    return "jobs:\n" + "".join(
        f"  - name: j{i:02d}\n    kind: quota\n    tag: t\n"
        f"    schedule: {{start_at: {first_ms + i}}}\n{extra}"
        for i in range(count)
    )


async def ahead(tmp_path: Path, clock: FakeClock, ex: FakeExecutor, text: str) -> Harness:
    """A scheduler that writes ahead as the daemon's does, started on `text`'s jobs."""
    harness = Harness(tmp_path, clock, ex, prepare_ahead_s=PREPARE_AHEAD_S)
    return await harness.start(jobs_from(tmp_path, text))


async def at_first_instant(
    tmp_path: Path, clock: FakeClock, ex: FakeExecutor, text: str
) -> Harness:
    """`ahead`, then the clock at FIRST_MS: j00's instant, when the occurrences due in
    the next 40 ms have been written ahead."""
    harness = await ahead(tmp_path, clock, ex, text)
    await clock.advance_to(T0 + timedelta(seconds=1))
    return harness


def committed(path: Path) -> dict[tuple[str, int], tuple[str, int, int | None]]:
    """What another process sees in the state file: (job, instant) -> (state, attempts,
    next_attempt_ms)."""
    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT job, scheduled_ms, state, attempts, next_attempt_ms FROM occurrences"
        ).fetchall()
    return {(job, ms): (state, attempts, nxt) for job, ms, state, attempts, nxt in rows}


async def test_occurrences_due_soon_are_on_disk_before_their_instants(
    tmp_path: Path, clock: FakeClock
) -> None:
    ex = FakeExecutor(clock)
    h = await at_first_instant(
        tmp_path, clock, ex, one_shots(11)
    )  # j00 fires; j01..j10 are 1-10 ms away
    assert [c.job for c in ex.calls] == ["j00"]
    rows = committed(tmp_path / "state.sqlite3")
    for i in range(1, 11):
        ms = FIRST_MS + i
        assert rows[(f"j{i:02d}", ms)] == ("planned", 0, ms), i  # written ahead, committed
    assert set(h.scheduler.prepared) == {f"j{i:02d}" for i in range(1, 11)}

    await clock.advance(0.02)
    assert sorted(c.job for c in ex.calls) == [f"j{i:02d}" for i in range(11)]
    for call in ex.calls:  # each at (not before) its instant, with its own key
        assert to_ms(call.at) >= to_ms(call.scheduled)
        assert call.key == idempotency_key(call.job, to_ms(call.scheduled))
    await h.stop()
    rows = committed(tmp_path / "state.sqlite3")
    assert {state for state, _, _ in rows.values()} == {"succeeded"}
    assert len(rows) == 11


async def test_a_removed_or_edited_job_leaves_no_prepared_occurrence(
    tmp_path: Path, clock: FakeClock
) -> None:
    ex = FakeExecutor(clock)
    h = await at_first_instant(tmp_path, clock, ex, one_shots(3))
    assert set(h.scheduler.prepared) == {"j01", "j02"}
    h.scheduler.remove("j01")
    later = one_shots(3).replace(f"start_at: {FIRST_MS + 2}", f"start_at: {FIRST_MS + 500}")
    h.scheduler.upsert(jobs_from(tmp_path, later, "later.yaml")["j02"])  # moved 498 ms on
    await clock.settle()
    rows = committed(tmp_path / "state.sqlite3")
    assert ("j01", FIRST_MS + 1) not in rows
    assert ("j02", FIRST_MS + 2) not in rows
    await clock.advance(1)
    assert [(c.job, to_ms(c.scheduled)) for c in ex.calls] == [
        ("j00", FIRST_MS),
        ("j02", FIRST_MS + 500),
    ]
    await h.stop()


async def test_a_prepared_instant_skipped_by_forbid_is_recorded_skipped_once(
    tmp_path: Path, clock: FakeClock
) -> None:
    # r (every second, forbid) is prepared while idle, at j00's instant 5 ms before its
    # own; a manual run makes it busy before its instant, which is then skipped.
    text = one_shots(1, first_ms=FIRST_MS - 5) + (
        "  - name: r\n    kind: quota\n    tag: t\n    concurrency: forbid\n"
        f"    schedule: {{every: 1s, start_at: {FIRST_MS}}}\n"
    )
    ex = FakeExecutor(clock, duration_s=5)
    h = await ahead(tmp_path, clock, ex, text)
    await clock.advance_to(T0 + timedelta(milliseconds=995))
    assert h.scheduler.prepared["r"].scheduled_ms == FIRST_MS
    h.scheduler.trigger("r")
    await clock.advance(0.01)
    assert [c.job for c in ex.calls].count("r") == 1  # the manual run only
    assert committed(tmp_path / "state.sqlite3")[("r", FIRST_MS)][0] == "skipped"
    assert "r" not in h.scheduler.prepared
    await h.stop()


async def test_a_one_shot_prepared_then_busy_runs_after_the_run_in_flight(
    tmp_path: Path, clock: FakeClock
) -> None:
    # Its last occurrence waits its turn instead of being skipped (it would be lost).
    text = one_shots(2, extra="    concurrency: forbid\n")
    ex = FakeExecutor(clock, duration_s=5)
    h = await at_first_instant(tmp_path, clock, ex, text)
    assert "j01" in h.scheduler.prepared
    h.scheduler.trigger("j01")
    await clock.advance(10)
    assert [(c.job, to_ms(c.scheduled)) for c in ex.calls if c.job == "j01"][1] == (
        "j01",
        FIRST_MS + 1,
    )
    assert committed(tmp_path / "state.sqlite3")[("j01", FIRST_MS + 1)][0] == "succeeded"
    await h.stop()


async def test_a_crash_after_writing_ahead_runs_each_once_at_its_instant(
    tmp_path: Path, clock: FakeClock
) -> None:
    text = one_shots(6, extra="")
    text = text.replace(f"start_at: {FIRST_MS + 5}", f"start_at: {FIRST_MS + 30}")
    ex = WaitingExecutor(clock)
    h = await at_first_instant(tmp_path, clock, ex, text)
    assert set(h.scheduler.prepared) == {"j01", "j02", "j03", "j04", "j05"}
    await h.crash()  # as SIGKILL: their rows are on disk, their jobs' rows are not

    ex2 = WaitingExecutor(clock)
    h2 = await ahead(tmp_path, clock, ex2, text)
    assert ex2.calls == []  # nothing runs before its instant
    await clock.advance(0.1)
    got = sorted((c.job, to_ms(c.scheduled)) for c in ex2.calls)
    instants = [FIRST_MS + 1, FIRST_MS + 2, FIRST_MS + 3, FIRST_MS + 4, FIRST_MS + 30]
    assert got == [(f"j{i:02d}", ms) for i, ms in enumerate(instants, start=1)]
    for call in ex2.calls:
        assert to_ms(call.at) >= to_ms(call.scheduled)
    await clock.advance(60)
    assert len(ex2.calls) == 5  # not planned again (a one-shot would have run at +1 ms)
    await h2.stop()
    rows = committed(tmp_path / "state.sqlite3")
    assert len(rows) == 6
    assert {state for state, _, _ in rows.values()} == {"succeeded"}


async def test_a_clean_stop_deletes_what_was_written_ahead(
    tmp_path: Path, clock: FakeClock
) -> None:
    ex = FakeExecutor(clock)
    h = await at_first_instant(tmp_path, clock, ex, one_shots(4))
    assert set(h.scheduler.prepared) == {"j01", "j02", "j03"}
    await h.stop()
    rows = committed(tmp_path / "state.sqlite3")
    assert list(rows) == [("j00", FIRST_MS)]  # the others wait for the next start


async def test_jobs_with_a_limit_are_planned_at_their_instant(
    tmp_path: Path, clock: FakeClock
) -> None:
    text = "name: every\n" + JOB + "schedule: {every: 10ms, limit: 3}\n"
    ex = FakeExecutor(clock)
    h = await ahead(tmp_path, clock, ex, text)
    await clock.advance(0.1)
    assert h.scheduler.prepared == {}
    assert len(ex.calls) == 3
    await h.stop()


async def test_a_store_that_cannot_write_prepares_nothing(tmp_path: Path, clock: FakeClock) -> None:
    ex = FakeExecutor(clock)
    h = Harness(tmp_path, clock, ex, prepare_ahead_s=PREPARE_AHEAD_S)
    h.store.failure = "writes fail: disk I/O error"
    occ = Occurrence("j", FIRST_MS, "k", next_attempt_ms=FIRST_MS)
    assert h.store.prepare([occ]) == [False]
    h.store.failure = None
    assert h.store.prepare([occ]) == [True]
    assert h.store.prepare([occ]) == [False]  # already there
    await asyncio.sleep(0)  # its commit, queued for this pass
    assert committed(tmp_path / "state.sqlite3") == {("j", FIRST_MS): ("planned", 0, FIRST_MS)}
    h.store.unprepare(occ)
    await asyncio.sleep(0)
    assert committed(tmp_path / "state.sqlite3") == {}
    h.store.close()


async def test_a_lone_instant_is_written_ahead_too(tmp_path: Path, clock: FakeClock) -> None:
    # Nothing else wakes the loop before it: it wakes PREPARE_WAKE_S early to write it.
    text = one_shots(1, first_ms=FIRST_MS + 9_000)
    ex = FakeExecutor(clock)
    h = await ahead(tmp_path, clock, ex, text)
    await clock.advance_to(T0 + timedelta(seconds=10) - timedelta(milliseconds=20))
    assert ex.calls == []
    assert committed(tmp_path / "state.sqlite3") == {
        ("j00", FIRST_MS + 9_000): ("planned", 0, FIRST_MS + 9_000)
    }
    await clock.advance(0.03)
    assert [(c.job, to_ms(c.at)) for c in ex.calls] == [("j00", FIRST_MS + 9_000)]
    await h.stop()


async def test_a_crowd_due_at_one_instant_is_written_ahead_in_batches(
    tmp_path: Path, clock: FakeClock
) -> None:
    count = PREPARE_BATCH * 2 + 100
    text = "jobs:\n" + "".join(
        f"  - name: c{i:04d}\n    kind: quota\n    tag: t\n"
        f"    schedule: {{start_at: {FIRST_MS + 9_000}}}\n"
        for i in range(count)
    )
    ex = FakeExecutor(clock)
    h = await ahead(tmp_path, clock, ex, text)
    await clock.advance_to(T0 + timedelta(seconds=10) - timedelta(milliseconds=20))
    assert len(h.scheduler.prepared) == count  # three passes, one commit each
    rows = committed(tmp_path / "state.sqlite3")
    assert len(rows) == count
    assert set(rows.values()) == {("planned", 0, FIRST_MS + 9_000)}
    await clock.advance(0.03)
    assert len(ex.calls) == count
    assert len({c.key for c in ex.calls}) == count
    await h.stop()


async def test_a_crash_while_a_prepared_run_is_in_flight_runs_it_again_with_its_key_only(
    tmp_path: Path, clock: FakeClock
) -> None:
    # The crash suite's failure: the attempt's `running` was on disk, its job's row
    # (last_scheduled_ms) was not, so the restart planned the one-shot again at +1 ms
    # and it ran twice with two keys. Its job's row is now written at the instant.
    ex = FakeExecutor(clock, duration_s=5)
    h = await ahead(tmp_path, clock, ex, one_shots(3))
    await clock.advance_to(T0 + timedelta(seconds=1, milliseconds=10))
    assert {c.job for c in ex.calls} == {"j00", "j01", "j02"}
    rows = committed(tmp_path / "state.sqlite3")
    assert {state for state, _, _ in rows.values()} == {"running"}  # on disk, in flight
    await h.crash()

    ex2 = FakeExecutor(clock)
    h2 = await ahead(tmp_path, clock, ex2, one_shots(3))
    await clock.advance(60)
    assert sorted((c.job, c.key) for c in ex2.calls) == [
        (f"j{i:02d}", idempotency_key(f"j{i:02d}", FIRST_MS + i)) for i in range(3)
    ]  # resumed with the same keys, none planned again at +1 ms
    await h2.stop()
    assert len(committed(tmp_path / "state.sqlite3")) == 3
