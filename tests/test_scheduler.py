"""The scheduler on a fake clock and a real SQLite file: what fires, when, and how often."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from runner.daemon.scheduler import from_ms, to_ms
from runner.timing.clock import FakeClock
from tests.sched_helpers import FakeExecutor, Harness, jobs_from

T0 = datetime(2026, 3, 1, 0, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


def iso(*moments: str) -> list[str]:
    return [datetime.fromisoformat(m).astimezone(UTC).isoformat() for m in moments]


async def test_every_fires_at_first_sighting_then_each_interval(
    tmp_path: Path, clock: FakeClock
) -> None:
    ex = FakeExecutor(clock)
    h = await Harness(tmp_path, clock, ex).start(
        jobs_from(tmp_path, "name: tick\nkind: quota\ntag: t\nschedule: {every: 10m}\n")
    )
    await clock.advance(25 * 60)
    assert ex.times("tick") == iso(
        "2026-03-01T00:00:00Z", "2026-03-01T00:10:00Z", "2026-03-01T00:20:00Z"
    )
    await h.stop()


async def test_cron_in_a_zone_across_spring_forward(tmp_path: Path) -> None:
    clock = FakeClock(datetime(2026, 3, 7, 12, tzinfo=UTC))
    ex = FakeExecutor(clock)
    text = (
        "name: fixed\nkind: quota\ntag: t\nschedule: {cron: '30 2 * * *', tz: America/New_York}\n---\n"
        "name: hourly\nkind: quota\ntag: t\nschedule: {cron: '0 * * * *', tz: America/New_York}\n"
    )
    h = await Harness(tmp_path, clock, ex).start(jobs_from(tmp_path, text))
    await clock.advance_to(datetime(2026, 3, 9, 12, tzinfo=UTC))
    # 2026-03-08 02:00 EST -> 03:00 EDT: 02:30 does not exist, cronie runs it at 03:00.
    assert ex.times("fixed") == iso("2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00")
    hourly = ex.times("hourly")
    # Hourly jobs follow elapsed time: 01:00 EST is followed by 03:00 EDT, one hour later.
    assert len(hourly) == 49  # 12:00 UTC to 12:00 UTC two days later, both ends included
    i = hourly.index(iso("2026-03-08T01:00:00-05:00")[0])
    assert hourly[i + 1] == iso("2026-03-08T03:00:00-04:00")[0]
    await h.stop()


async def test_limit_stops_after_n_runs_and_marks_the_job_completed(
    tmp_path: Path, clock: FakeClock
) -> None:
    ex = FakeExecutor(clock)
    h = await Harness(tmp_path, clock, ex).start(
        jobs_from(tmp_path, "name: thrice\nkind: quota\ntag: t\nschedule: {every: 1m, limit: 3}\n")
    )
    await clock.advance(10 * 60)
    assert len(ex.times("thrice")) == 3
    record = h.store.load_jobs()["thrice"]
    assert (record.execution_count, record.status, record.next_fire_ms) == (3, "completed", None)
    await h.stop()


async def test_end_date_stops_the_schedule(tmp_path: Path, clock: FakeClock) -> None:
    ex = FakeExecutor(clock)
    text = (
        "name: until\nkind: quota\ntag: t\nschedule: {every: 1h, endDate: '2026-03-01T02:30:00Z'}\n"
    )
    h = await Harness(tmp_path, clock, ex).start(jobs_from(tmp_path, text))
    await clock.advance(86_400)
    assert ex.times("until") == iso(
        "2026-03-01T00:00:00Z", "2026-03-01T01:00:00Z", "2026-03-01T02:00:00Z"
    )
    await h.stop()


async def test_forbid_records_a_skip_while_the_previous_run_is_still_running(
    tmp_path: Path, clock: FakeClock
) -> None:
    ex = FakeExecutor(clock, duration_s=90)
    h = await Harness(tmp_path, clock, ex).start(
        jobs_from(tmp_path, "name: slow\nkind: quota\ntag: t\nschedule: {every: 1m}\n")
    )
    await clock.advance(150)
    states = [
        (from_ms(o.scheduled_ms).minute, o.state, o.reason)
        for o in reversed(h.store.history("slow"))
    ]
    assert states == [
        (0, "succeeded", None),
        (1, "skipped", "previous run still running (concurrency forbid)"),
        (2, "running", None),
    ]
    await h.stop()


async def test_allow_overlaps_runs(tmp_path: Path, clock: FakeClock) -> None:
    ex = FakeExecutor(clock, duration_s=150)
    h = await Harness(tmp_path, clock, ex).start(
        jobs_from(
            tmp_path, "name: slow\nkind: quota\ntag: t\nconcurrency: allow\nschedule: {every: 1m}\n"
        )
    )
    await clock.advance(130)
    assert (len(ex.calls), ex.peak) == (3, 3)
    await h.stop()


async def test_replace_cancels_the_running_occurrence(tmp_path: Path, clock: FakeClock) -> None:
    ex = FakeExecutor(clock, duration_s=90)
    h = await Harness(tmp_path, clock, ex).start(
        jobs_from(
            tmp_path,
            "name: slow\nkind: quota\ntag: t\nconcurrency: replace\nschedule: {every: 1m}\n",
        )
    )
    await clock.advance(70)
    first, second = reversed(h.store.history("slow"))
    assert (first.state, first.reason) == (
        "cancelled",
        "replaced by a newer occurrence (concurrency replace)",
    )
    assert second.state == "running"
    await h.stop()


async def test_global_limit_caps_concurrent_runs(tmp_path: Path, clock: FakeClock) -> None:
    ex = FakeExecutor(clock, duration_s=5)
    text = "\n---\n".join(
        f"name: j{i}\nkind: quota\ntag: t\nschedule: {{every: 1h}}" for i in range(5)
    )
    h = await Harness(tmp_path, clock, ex, max_concurrent=2).start(jobs_from(tmp_path, text))
    statuses = sorted(r.status for r in h.scheduler.records.values())
    assert statuses == ["queued", "queued", "queued", "running", "running"]
    await clock.advance(20)
    assert (ex.peak, len(ex.calls)) == (2, 5)
    await h.stop()


@pytest.mark.parametrize(
    ("policy", "expected_runs", "expected_skipped"),
    [
        ("skip", [], 18),
        ("latest", ["2026-03-01T03:00:00+00:00"], 17),
        ("all", [f"2026-03-01T{h:02d}:{m:02d}:00+00:00" for h in (0, 1, 2) for m in (10, 20, 30, 40, 50)]
         + ["2026-03-01T01:00:00+00:00", "2026-03-01T02:00:00+00:00", "2026-03-01T03:00:00+00:00"], 0),
    ],
)  # fmt: skip
async def test_missed_occurrences_follow_the_catchup_policy_after_a_crash(
    tmp_path: Path, clock: FakeClock, policy: str, expected_runs: list[str], expected_skipped: int
) -> None:
    text = (
        f"name: ten\nkind: quota\ntag: t\nschedule: {{every: 10m}}\ncatchup: {{policy: {policy}}}\n"
    )
    ex = FakeExecutor(clock)
    h = await Harness(tmp_path, clock, ex).start(jobs_from(tmp_path, text))
    await h.crash()  # down from 00:00:00 (after the first run) until 03:05
    clock.jump_wall(timedelta(hours=3, minutes=5))
    ex2 = FakeExecutor(clock)
    h2 = await Harness(tmp_path, clock, ex2).start(jobs_from(tmp_path, text))
    assert sorted(ex2.times("ten")) == sorted(expected_runs)
    skipped = [o for o in h2.store.history("ten", 100) if o.state == "skipped"]
    assert len(skipped) == expected_skipped
    assert h2.scheduler.entries["ten"].due == datetime(2026, 3, 1, 3, 10, tzinfo=UTC)
    await h2.stop()


async def test_latest_catchup_ignores_an_occurrence_older_than_the_window(
    tmp_path: Path, clock: FakeClock
) -> None:
    text = "name: d\nkind: quota\ntag: t\nschedule: {cron: '0 1 * * *'}\ncatchup: {policy: latest, window: 30m}\n"
    ex = FakeExecutor(clock)
    h = await Harness(tmp_path, clock, ex).start(jobs_from(tmp_path, text))
    await h.crash()
    clock.jump_wall(timedelta(hours=2))  # 01:00 was missed an hour ago, beyond the 30 m window
    ex2 = FakeExecutor(clock)
    h2 = await Harness(tmp_path, clock, ex2).start(jobs_from(tmp_path, text))
    assert ex2.calls == []
    [skipped] = h2.store.history("d")
    assert skipped.reason == "missed: catchup policy latest: older than window"
    await h2.stop()


async def test_execution_count_survives_a_crash_and_limit_holds(
    tmp_path: Path, clock: FakeClock
) -> None:
    text = (
        "name: five\nkind: quota\ntag: t\nschedule: {every: 1m, limit: 5}\ncatchup: {policy: all}\n"
    )
    ex = FakeExecutor(clock)
    h = await Harness(tmp_path, clock, ex).start(jobs_from(tmp_path, text))
    await clock.advance(150)  # runs at 0, 1, 2 minutes
    await h.crash()
    clock.jump_wall(timedelta(minutes=30))
    ex2 = FakeExecutor(clock)
    h2 = await Harness(tmp_path, clock, ex2).start(jobs_from(tmp_path, text))
    await clock.advance(600)
    assert (len(ex.calls), len(ex2.calls)) == (3, 2)
    assert h2.store.load_jobs()["five"].execution_count == 5
    await h2.stop()


async def test_a_succeeded_one_shot_never_runs_again_unless_its_definition_changes(
    tmp_path: Path, clock: FakeClock
) -> None:
    text = "name: once\nkind: quota\ntag: t\nschedule: {start_at: '2026-03-01T00:05:00Z'}\n"
    ex = FakeExecutor(clock)
    h = await Harness(tmp_path, clock, ex).start(jobs_from(tmp_path, text))
    await clock.advance(3600)
    await h.stop()
    for _ in range(2):  # restarts do not rerun it
        h = await Harness(tmp_path, clock, ex).start(jobs_from(tmp_path, text))
        await clock.advance(3600)
        assert h.store.load_jobs()["once"].status == "completed"
        await h.stop()
    assert ex.times("once") == iso("2026-03-01T00:05:00Z")
    changed = text.replace("tag: t", "tag: t2").replace("'2026-03-01T00:05:00Z'", "0")
    h = await Harness(tmp_path, clock, ex).start(jobs_from(tmp_path, changed))
    await clock.advance(1)
    assert len(ex.times("once")) == 2
    await h.stop()


async def test_a_changed_schedule_counts_from_now_and_keeps_the_execution_count(
    tmp_path: Path, clock: FakeClock
) -> None:
    ex = FakeExecutor(clock)
    h = await Harness(tmp_path, clock, ex).start(
        jobs_from(tmp_path, "name: j\nkind: quota\ntag: t\nschedule: {every: 10m}\n")
    )
    await clock.advance(25 * 60)  # ran at 0, 10, 20
    h.scheduler.upsert(
        jobs_from(tmp_path, "name: j\nkind: quota\ntag: t\nschedule: {every: 1h}\n")["j"]
    )
    # The phase stays at the first sighting (00:00): the next run is 01:00, not 01:25.
    assert h.scheduler.entries["j"].due == datetime(2026, 3, 1, 1, tzinfo=UTC)
    await clock.advance(60 * 60)
    assert ex.times("j")[-2:] == iso("2026-03-01T00:20:00Z", "2026-03-01T01:00:00Z")
    assert h.store.load_jobs()["j"].execution_count == 4
    await h.stop()


async def test_a_job_moved_to_another_file_keeps_its_state(
    tmp_path: Path, clock: FakeClock
) -> None:
    ex = FakeExecutor(clock)
    text = "name: j\nkind: quota\ntag: t\nschedule: {every: 10m}\n"
    h = await Harness(tmp_path, clock, ex).start(jobs_from(tmp_path, text, "a.yaml"))
    await clock.advance(15 * 60)
    moved = jobs_from(tmp_path, text, "b.yaml")["j"]
    assert h.scheduler.upsert(moved) == "unchanged"
    await clock.advance(10 * 60)
    assert len(ex.calls) == 3
    assert h.store.load_jobs()["j"].path.endswith("b.yaml")
    await h.stop()


async def test_a_removed_job_leaves_the_schedule_but_keeps_its_history(
    tmp_path: Path, clock: FakeClock
) -> None:
    ex = FakeExecutor(clock, duration_s=30)
    h = await Harness(tmp_path, clock, ex).start(
        jobs_from(tmp_path, "name: j\nkind: quota\ntag: t\nschedule: {every: 1m}\n")
    )
    await clock.advance(10)
    assert h.scheduler.remove("j")
    await clock.advance(600)
    assert len(ex.calls) == 1
    [occ] = h.store.history("j")
    assert occ.state == "succeeded"  # the running attempt finished
    assert h.store.load_jobs()["j"].removed_ms is not None
    await h.stop()


async def test_pause_and_resume(tmp_path: Path, clock: FakeClock) -> None:
    ex = FakeExecutor(clock)
    h = await Harness(tmp_path, clock, ex).start(
        jobs_from(tmp_path, "name: j\nkind: quota\ntag: t\nschedule: {every: 10m}\n")
    )
    h.scheduler.pause("j")
    await clock.advance(3600)
    assert len(ex.calls) == 1 and h.store.load_jobs()["j"].status == "paused"
    h.scheduler.resume("j")
    await clock.advance(600)
    assert ex.times("j")[-1] == iso("2026-03-01T01:10:00Z")[0]
    await h.stop()


async def test_suspended_jobs_are_not_scheduled(tmp_path: Path, clock: FakeClock) -> None:
    ex = FakeExecutor(clock)
    h = await Harness(tmp_path, clock, ex).start(
        jobs_from(tmp_path, "name: j\nkind: quota\ntag: t\nsuspend: true\nschedule: {every: 1m}\n")
    )
    await clock.advance(600)
    assert ex.calls == [] and h.store.load_jobs()["j"].status == "suspended"
    await h.stop()


async def test_manual_trigger_runs_now_with_its_own_key(tmp_path: Path, clock: FakeClock) -> None:
    ex = FakeExecutor(clock)
    h = await Harness(tmp_path, clock, ex).start(
        jobs_from(tmp_path, "name: j\nkind: quota\ntag: t\nschedule: {cron: '0 9 * * *'}\n")
    )
    await clock.advance(60)
    occ = h.scheduler.trigger("j")
    await clock.settle()
    assert occ.trigger == "manual"
    assert [c.key for c in ex.calls] == [f"ductape-runner:j:{to_ms(T0) + 60_000}"]
    assert h.scheduler.entries["j"].due == datetime(2026, 3, 1, 9, tzinfo=UTC)
    await h.stop()


async def test_jitter_delays_but_never_past_the_next_occurrence(
    tmp_path: Path, clock: FakeClock
) -> None:
    ex = FakeExecutor(clock)
    h = await Harness(tmp_path, clock, ex).start(
        jobs_from(tmp_path, "name: j\nkind: quota\ntag: t\njitter: 1h\nschedule: {every: 1m}\n")
    )
    await clock.advance(30 * 60)
    for call in ex.calls:
        assert timedelta(0) <= call.at - call.scheduled < timedelta(seconds=30)
    assert len(ex.calls) == 30
    await h.stop()


async def test_a_bug_in_a_run_fails_that_occurrence_instead_of_stranding_it(
    tmp_path: Path, clock: FakeClock
) -> None:
    class Broken(FakeExecutor):
        async def __call__(self, job, occ, deadline, control):  # type: ignore[no-untyped-def]
            raise KeyError("boom")

    ex = Broken(clock)
    h = await Harness(tmp_path, clock, ex).start(
        jobs_from(tmp_path, "name: j\nkind: quota\ntag: t\nschedule: {every: 1m}\n")
    )
    await clock.advance(61)
    states = [(o.state, o.last_error) for o in h.store.history("j")]
    assert states == [("failed", "internal error: KeyError (see the daemon's log)")] * 2
    assert h.store.load_jobs()["j"].execution_count == 2
    await h.stop()


async def test_closing_the_store_commits_and_a_late_tick_commit_is_harmless(tmp_path: Path) -> None:
    from runner.store import Occurrence
    from runner.store.sqlite import SqliteStore

    store = SqliteStore(tmp_path / "s.sqlite3")
    store.update_occurrence(Occurrence("j", 1, "k", created_ms=1))  # opens this tick's transaction
    store.close()  # commits it
    await asyncio.sleep(0)  # the queued tick commit runs on a closed store: no error
    reopened = SqliteStore(tmp_path / "s.sqlite3")
    assert reopened.get_occurrence("j", 1) is not None
    reopened.close()


ONCE_AT_5S = "name: once\nkind: quota\ntag: t\nschedule: {start_at: '2026-03-01T00:00:05Z'}\n"


@pytest.mark.parametrize("offset_us", [0, 1, 400, 999])
async def test_the_loop_sleeps_to_the_exact_deadline_not_the_truncated_millisecond(
    tmp_path: Path, offset_us: int
) -> None:
    # The loop used to count from `now` truncated to its millisecond, which slept up to
    # 1 ms past each deadline.
    clock = FakeClock(T0 + timedelta(microseconds=offset_us))
    h = await Harness(tmp_path, clock, FakeExecutor(clock)).start(jobs_from(tmp_path, ONCE_AT_5S))
    slept = h.scheduler._sleep_for(clock.now())
    assert slept == pytest.approx(5 - offset_us / 1e6, abs=1e-6)
    await h.stop()


async def test_the_daemon_loop_wakes_early_and_lands_on_the_instant(tmp_path: Path) -> None:
    # The loop's timers count whole milliseconds: the daemon's scheduler asks to wake
    # EARLY_S before a deadline and holds the thread for the rest (FakeClock.land moves
    # the fake clock by exactly what a real blocking wait would take).
    from runner.daemon.scheduler import EARLY_S, LANDING_S

    clock = FakeClock(T0 + timedelta(microseconds=400))
    ex = FakeExecutor(clock)
    h = await Harness(tmp_path, clock, ex, landing_s=LANDING_S).start(
        jobs_from(tmp_path, ONCE_AT_5S)
    )
    assert h.scheduler._sleep_for(clock.now()) == pytest.approx(5 - 0.0004 - EARLY_S, abs=1e-6)
    await clock.advance(5 - 0.0004 - EARLY_S)  # the early wake-up
    assert [c.at for c in ex.calls] == [T0 + timedelta(seconds=5)]  # not a microsecond off
    await h.stop()


@pytest.mark.parametrize("left_s", [0.010, 0.0016, 0.0])
async def test_landing_waits_only_for_a_deadline_under_the_landing_time(
    tmp_path: Path, left_s: float
) -> None:
    from runner.daemon.scheduler import LANDING_S

    clock = FakeClock(T0 + timedelta(seconds=5) - timedelta(seconds=left_s))
    h = Harness(tmp_path, clock, FakeExecutor(clock), landing_s=LANDING_S)
    h.scheduler.start(jobs_from(tmp_path, ONCE_AT_5S))
    assert h.scheduler.next_deadline_ms() == to_ms(T0 + timedelta(seconds=5))
    before = clock.now()
    assert h.scheduler._land(before) == before  # too far ahead, or due now: no hold
    assert clock.now() == before
    h.store.close()


async def test_landing_holds_for_what_is_left_of_a_close_deadline(tmp_path: Path) -> None:
    from runner.daemon.scheduler import LANDING_S

    clock = FakeClock(T0 + timedelta(seconds=5) - timedelta(microseconds=1_200))
    h = Harness(tmp_path, clock, FakeExecutor(clock), landing_s=LANDING_S)
    h.scheduler.start(jobs_from(tmp_path, ONCE_AT_5S))
    assert h.scheduler._land(clock.now()) == T0 + timedelta(seconds=5)
    h.store.close()


async def test_a_failing_hold_turns_landing_off_and_the_job_still_fires(tmp_path: Path) -> None:
    # libfaketime's clock_nanosleep refuses the absolute deadline time.sleep passes
    # (EINVAL): that once stopped the scheduler.
    from runner.daemon.scheduler import EARLY_S, LANDING_S

    class RefusingClock(FakeClock):
        def land(self, seconds: float) -> None:
            raise OSError(22, "Invalid argument")

    clock = RefusingClock(T0)
    ex = FakeExecutor(clock)
    h = await Harness(tmp_path, clock, ex, landing_s=LANDING_S).start(
        jobs_from(tmp_path, ONCE_AT_5S)
    )
    await clock.advance(5 - EARLY_S)  # woken early: the hold fails
    assert h.scheduler.landing_s == 0.0
    assert h.task is not None and not h.task.done()
    await clock.advance(EARLY_S)
    assert [c.at for c in ex.calls] == [T0 + timedelta(seconds=5)]
    await h.stop()


def test_runs_in_flight_are_added_and_dropped_without_touching_the_shared_empty_one() -> None:
    # Issue 12, memory per job: a job with nothing running holds the one shared,
    # read-only empty mapping; adding a run gives it its own.
    from runner.daemon.runs import JobRuns, Run, RunControl

    idle, busy = JobRuns(), JobRuns()
    assert idle.active is busy.active and not idle.active
    one, two = Run(1, RunControl()), Run(2, RunControl())
    busy.add(one)
    busy.add(two)
    assert dict(busy.active) == {1: one, 2: two} and not idle.active
    with pytest.raises(TypeError):
        idle.active[3] = one  # type: ignore[index]
    busy.drop(1)
    busy.drop(1)  # twice: no error
    assert dict(busy.active) == {2: two}
    busy.drop(2)
    assert busy.active is idle.active


async def test_a_job_holds_the_shared_idle_runs_except_while_it_counts_or_runs_something(
    tmp_path: Path, clock: FakeClock
) -> None:
    # Issue 12, memory per job: a job with nothing in flight holds the one shared
    # JobRuns; it gets its own to run, hold or count, and gives it back when idle again.
    from runner.daemon.runs import IDLE

    ex = FakeExecutor(clock, duration_s=30)
    jobs = "name: j\nkind: quota\ntag: t\nschedule: {every: 10m}\n"
    jobs += "---\nname: k\nkind: quota\ntag: t\nschedule: {start_at: '2026-03-01T05:00:00Z'}\n"
    h = await Harness(tmp_path, clock, ex).start(jobs_from(tmp_path, jobs))
    entries = h.scheduler.entries
    assert ex.times("j") == iso("2026-03-01T00:00:00Z")  # running now: its own runs
    assert entries["j"].runs is not IDLE and entries["j"].runs.pending == 1
    assert entries["k"].runs is IDLE and set(h.scheduler.runs) == {"j"}
    await clock.advance(31)  # j's run finished: back to the shared one
    assert entries["j"].runs is IDLE and h.scheduler.runs == {}
    h.scheduler.pause("k")  # held: its own, with held set
    assert entries["k"].runs is not IDLE and entries["k"].runs.held
    h.scheduler.resume("k")
    assert entries["k"].runs is IDLE and h.scheduler.runs == {}
    h.scheduler.trigger("k")  # a trigger remembers its instant: the job keeps its own
    await clock.advance(31)
    assert entries["k"].runs is not IDLE and entries["k"].runs.last_manual_ms > 0
    await clock.advance(600 - 62)
    assert ex.times("j")[-1] == iso("2026-03-01T00:10:00Z")[0]  # still on schedule
    with pytest.raises(AttributeError):
        IDLE.pending += 1
    with pytest.raises(AttributeError):
        IDLE.hold(True)
    assert IDLE.idle()
    await h.stop()


def test_equal_instants_give_one_int_object() -> None:
    # Issue 12, memory per job: 100,000 jobs' next fire times are a few thousand instants.
    from zoneinfo import ZoneInfo

    from runner.daemon.decisions import shared_ms

    utc = datetime(2026, 3, 29, 1, 30, tzinfo=UTC)
    there = utc.astimezone(ZoneInfo("Europe/Amsterdam"))
    assert shared_ms(utc) == to_ms(utc) and shared_ms(there) is shared_ms(utc)
    assert shared_ms(utc + timedelta(milliseconds=1)) == to_ms(utc) + 1
