"""Issue 18's scheduler bugs, each a regression test on the fake clock and a real SQLite file."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from runner.daemon.decisions import from_ms
from runner.store import OPEN_STATES
from runner.timing.clock import FakeClock
from tests.sched_helpers import FakeExecutor, Harness, jobs_from

T0 = datetime(2026, 3, 1, 0, 0, tzinfo=UTC)
JOB = "kind: quota\ntag: t\n"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


def open_rows(h: Harness, job: str) -> list[tuple[int, str]]:
    return [(o.scheduled_ms, o.state) for o in h.store.history(job, 1000) if o.state in OPEN_STATES]


async def test_editing_a_running_job_keeps_its_counters_and_limit(
    tmp_path: Path, clock: FakeClock
) -> None:
    # Bug 1: the edit copied `pending` into a new entry; the running task decremented the
    # old copy, so `limit: 3` made 2 runs and ended `completed` with pending 1.
    text = "name: j\n" + JOB + "schedule: {every: 1m, limit: 3}\n"
    ex = FakeExecutor(clock, duration_s=30)
    h = await Harness(tmp_path, clock, ex).start(jobs_from(tmp_path, text))
    await clock.advance(10)  # the first run is in flight
    h.scheduler.upsert(jobs_from(tmp_path, text.replace("tag: t", "tag: edited"))["j"])
    await clock.advance(600)
    assert len(ex.times("j")) == 3
    assert h.scheduler.entries["j"].runs.pending == 0
    record = h.store.load_jobs()["j"]
    assert (record.execution_count, record.status) == (3, "completed")
    await h.stop()


async def test_replace_settles_every_occurrence_it_cancels(
    tmp_path: Path, clock: FakeClock
) -> None:
    # Bug 2: only the occurrence inside the executor was marked cancelled; the rest of a
    # catch-up chain stayed `planned` and ran again at the next restart.
    text = (
        "name: r\n" + JOB + "concurrency: replace\nschedule: {every: 1m}\ncatchup: {policy: all}\n"
    )
    ex = FakeExecutor(clock, duration_s=50)
    h = await Harness(tmp_path, clock, ex).start(jobs_from(tmp_path, text))
    await h.crash()
    clock.jump_wall(timedelta(minutes=5, seconds=30))  # five instants missed
    ex2 = FakeExecutor(clock, duration_s=50)
    h2 = await Harness(tmp_path, clock, ex2).start(jobs_from(tmp_path, text))
    await clock.advance(40)  # the next on-time instant replaces the catch-up chain
    rows = h2.store.history("r", 100)
    cancelled = [o for o in rows if o.state == "cancelled"]
    assert len(cancelled) >= 4
    assert all(
        o.reason == "replaced by a newer occurrence (concurrency replace)" for o in cancelled
    )
    assert len(open_rows(h2, "r")) == 1  # only the run that replaced them
    assert h2.scheduler.entries["r"].runs.pending == 1
    await h2.crash()
    ex3 = FakeExecutor(clock)
    h3 = await Harness(tmp_path, clock, ex3).start(jobs_from(tmp_path, text))
    await clock.settle()
    assert len(ex3.calls) == 1  # no ghost runs: only the one that was really open
    await h3.stop()


async def test_replace_cancels_a_run_still_waiting_for_a_slot(
    tmp_path: Path, clock: FakeClock
) -> None:
    # Bug 2 again: a run cancelled before it took a slot never ran its `finally`.
    hog = "name: hog\n" + JOB + "schedule: {every: 1h}\n"
    text = hog + "---\nname: r\n" + JOB + "concurrency: replace\nschedule: {every: 1m}\n"
    ex = FakeExecutor(clock, duration_s=150)
    h = await Harness(tmp_path, clock, ex, max_concurrent=1).start(jobs_from(tmp_path, text))
    await clock.advance(200)
    rows = {o.scheduled_ms: o.state for o in h.store.history("r", 100)}
    assert list(rows.values()).count("planned") + list(rows.values()).count("running") <= 1
    assert h.scheduler.entries["r"].runs.pending <= 1
    await h.stop()


async def test_an_edited_one_shot_runs_after_its_old_version_and_owns_its_success(
    tmp_path: Path, clock: FakeClock
) -> None:
    # Bug 5: the edited one-shot came due while the old one ran; `forbid` skipped it and
    # the old run's success was stamped with the new definition's hash: never ran.
    text = "name: once\n" + JOB + "schedule: {start_at: '2026-03-01T00:05:00Z'}\n"
    ex = FakeExecutor(clock, duration_s=120)
    h = await Harness(tmp_path, clock, ex).start(jobs_from(tmp_path, text))
    await clock.advance(6 * 60)  # the old version runs from 00:05 to 00:07
    edited = jobs_from(tmp_path, text.replace("tag: t", "tag: fixed"))["once"]
    h.scheduler.upsert(edited)
    await clock.advance(10 * 60)
    assert len(ex.calls) == 2
    first, second = ex.calls
    assert first.key != second.key  # a new definition is a new call, not a duplicate
    assert second.at >= first.at + timedelta(seconds=120)  # never at the same time
    record = h.store.load_jobs()["once"]
    assert (record.succeeded_hash, record.status) == (edited.digest, "completed")
    await h.stop()


async def test_catchup_all_runs_at_most_its_cap_after_a_long_outage(
    tmp_path: Path, clock: FakeClock
) -> None:
    # Bug 6: the missed-scan stopped at 100,000 and left a past instant on the heap;
    # each round ran 100 more (300 after 2.5 days of an every-1s job).
    text = "name: s\n" + JOB + "schedule: {every: 1s}\ncatchup: {policy: all}\n"
    ex = FakeExecutor(clock)
    h = await Harness(tmp_path, clock, ex).start(jobs_from(tmp_path, text))
    await h.crash()
    clock.jump_wall(timedelta(days=2, hours=12))
    ex2 = FakeExecutor(clock)
    h2 = await Harness(tmp_path, clock, ex2).start(jobs_from(tmp_path, text))
    await clock.advance(5)
    catchup = [o for o in h2.store.history("s", 1000) if o.trigger == "catchup"]
    assert len(catchup) == 100
    assert len(ex2.calls) <= 100 + 6  # the cap, then the on-time ones
    assert h2.scheduler.entries["s"].due is not None
    assert h2.scheduler.entries["s"].due > clock.now() - timedelta(seconds=2)
    await h2.stop()


async def test_catchup_after_a_stall_waits_for_the_running_run_under_forbid(
    tmp_path: Path, clock: FakeClock
) -> None:
    # Bug 7: `_start_chain` skipped the busy check; after a 75 s stall a 150 s job ran twice.
    text = "name: f\n" + JOB + "schedule: {every: 1m}\ncatchup: {policy: all}\n"
    ex = FakeExecutor(clock, duration_s=150)
    h = await Harness(tmp_path, clock, ex).start(jobs_from(tmp_path, text))
    await clock.advance(1)
    clock.jump_wall(timedelta(seconds=75))  # the loop stalled: 00:01:00 is late now
    await clock.advance(400)
    assert ex.peak == 1
    await h.stop()


async def test_a_resumed_run_and_catchup_runs_do_not_overlap_under_forbid(
    tmp_path: Path, clock: FakeClock
) -> None:
    # Bug 7: after a restart `_resume_open` and the catch-up chain both started at once.
    text = "name: f\n" + JOB + "schedule: {every: 1m}\ncatchup: {policy: all}\n"
    ex = FakeExecutor(clock, duration_s=30)
    h = await Harness(tmp_path, clock, ex).start(jobs_from(tmp_path, text))
    await clock.advance(5)
    await h.crash()  # the 00:00 run is left `running`
    clock.jump_wall(timedelta(minutes=3))
    ex2 = FakeExecutor(clock, duration_s=30)
    h2 = await Harness(tmp_path, clock, ex2).start(jobs_from(tmp_path, text))
    await clock.advance(300)
    assert ex2.peak == 1
    resumed_first = [c.scheduled for c in ex2.calls][:4]
    assert resumed_first == sorted(resumed_first)  # the resumed (oldest) one first
    assert resumed_first[0] == T0
    await h2.stop()


async def test_pausing_holds_queued_runs_and_resume_releases_them(
    tmp_path: Path, clock: FakeClock
) -> None:
    # Bug 9 at the scheduler: a paused job starts no attempt, a resumed one goes on.
    text = "name: p\n" + JOB + "schedule: {every: 1m}\ncatchup: {policy: all}\n"
    ex = FakeExecutor(clock, duration_s=20)
    h = await Harness(tmp_path, clock, ex).start(jobs_from(tmp_path, text))
    await h.crash()
    clock.jump_wall(timedelta(minutes=5, seconds=30))
    ex2 = FakeExecutor(clock, duration_s=20)
    h2 = await Harness(tmp_path, clock, ex2).start(jobs_from(tmp_path, text))
    await clock.advance(5)  # the first catch-up run is in flight
    h2.scheduler.pause("p")
    await clock.advance(600)
    assert len(ex2.calls) == 1  # the attempt in flight finished; nothing else started
    h2.scheduler.resume("p")
    await clock.advance(300)
    assert len({c.key for c in ex2.calls}) >= 5
    await h2.stop()


async def test_a_manual_trigger_never_takes_a_scheduled_instant_nor_counts_to_limit(
    tmp_path: Path, clock: FakeClock
) -> None:
    text = "name: m\n" + JOB + "schedule: {every: 1m, limit: 2}\n"
    ex = FakeExecutor(clock)
    h = await Harness(tmp_path, clock, ex).start(jobs_from(tmp_path, text))
    await clock.advance(59.999)
    await clock.advance(0.001)  # now exactly on the 00:01 instant, which just ran
    manual = h.scheduler.trigger("m")
    assert from_ms(manual.scheduled_ms) != T0 + timedelta(minutes=1)
    await clock.advance(300)
    scheduled = [o for o in h.store.history("m") if o.trigger == "schedule"]
    assert len(scheduled) == 2  # limit 2, the manual run aside
    record = h.store.load_jobs()["m"]
    assert record.execution_count == 2
    await h.stop()
