"""Wall-clock steps (issue 13, item 14): `every` follows elapsed time, cron follows cronie.

The scheduler runs on a fake clock whose wall time a test steps alone, as NTP, `date -s`
or a resumed VM does; asyncio's monotonic clock does not move with it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from runner.timing.clock import FakeClock
from runner.timing.firetimes import Recurrence
from runner.timing.steps import elapsed_shift_ms, replays_at_new_time, shifted
from tests.sched_helpers import FakeExecutor, Harness, jobs_from

T0 = datetime(2026, 3, 1, 0, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)

# ------------------------------------------------------------------ the pure rules

EVERY_10S = Recurrence(every_ms=10_000, anchor=T0)


@pytest.mark.parametrize(
    ("rec", "step_ms", "shift"),
    [
        (EVERY_10S, -3_600_000, -3_600_001),  # a whole number of intervals: nudged
        (EVERY_10S, -3_600_250, -3_600_250),
        (EVERY_10S, 5_000, 5_000),
        (Recurrence(cron="* * * * *", anchor=T0), -3_600_000, 0),  # cron keeps the calendar
        (Recurrence(start_at=T0, anchor=T0), -3_600_000, 0),  # a one-shot keeps its instant
        # start_at still to come before the step: the operator's date stands
        (Recurrence(every_ms=10_000, start_at=T0 + HOUR, anchor=T0), -3_600_000, 0),
    ],
)
def test_which_schedules_follow_elapsed_time(rec: Recurrence, step_ms: int, shift: int) -> None:
    assert elapsed_shift_ms(rec, step_ms, before=T0 + timedelta(minutes=5)) == shift


@pytest.mark.parametrize(
    ("cron", "step", "new_time"),
    [
        ("* * * * *", -HOUR, True),  # wildcard minute
        ("0 * * * *", -HOUR, True),  # wildcard hour
        ("*/5 * * * *", -HOUR, True),
        ("@hourly", -HOUR, True),
        ("30 3 * * *", -HOUR, False),  # fixed time: not repeated
        ("@daily", -HOUR, False),
        ("30 3 * * *", -3 * HOUR, False),  # three hours is still a step
        ("30 3 * * *", -3 * HOUR - timedelta(seconds=1), True),  # beyond: a new time
        ("* * * * *", HOUR, False),  # forward: the catch-up policy decides
    ],
)
def test_which_cron_jobs_go_on_at_the_new_time(cron: str, step: timedelta, new_time: bool) -> None:
    assert replays_at_new_time(Recurrence(cron=cron, anchor=T0), step) is new_time


def test_a_shift_moves_the_phase_and_nothing_else() -> None:
    rec = Recurrence(every_ms=10_000, start_at=T0, anchor=T0, end_date=T0 + HOUR)
    moved = shifted(rec, -1_500)
    assert moved.start_at == moved.anchor == T0 - timedelta(milliseconds=1_500)
    assert moved.end_date == rec.end_date
    assert shifted(rec, 0) is rec


# ------------------------------------------------------------------ the scheduler


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


def stamps(ex: FakeExecutor, job: str) -> list[str]:
    return [c.scheduled.strftime("%H:%M:%S.%f")[:-3] for c in ex.calls if c.job == job]


def keys(ex: FakeExecutor) -> list[str]:
    return [c.key for c in ex.calls]


async def test_a_step_back_of_an_hour_does_not_stop_an_every_job(
    tmp_path: Path, clock: FakeClock
) -> None:
    ex = FakeExecutor(clock)
    h = await Harness(tmp_path, clock, ex, max_sleep_s=1.0).start(
        jobs_from(tmp_path, "name: j\nkind: quota\ntag: t\nschedule: {every: 10s}\n")
    )
    await clock.advance(25)  # ran at 00:00:00, :10, :20
    clock.jump_wall(-HOUR)
    await clock.advance(30)  # noticed within a second; goes on each 10 s of elapsed time
    assert stamps(ex, "j") == [
        "00:00:00.000", "00:00:10.000", "00:00:20.000",
        "23:00:29.999", "23:00:39.999", "23:00:49.999",
    ]  # fmt: skip
    assert len(set(keys(ex))) == len(ex.calls)
    await h.stop()


async def test_a_step_forward_moves_an_every_job_without_a_catch_up(
    tmp_path: Path, clock: FakeClock
) -> None:
    ex = FakeExecutor(clock)
    h = await Harness(tmp_path, clock, ex, max_sleep_s=1.0).start(
        jobs_from(tmp_path, "name: j\nkind: quota\ntag: t\nschedule: {every: 1m}\n")
    )
    await clock.advance(30)
    clock.jump_wall(HOUR)  # suspend/resume or an NTP step
    await clock.advance(91)
    assert stamps(ex, "j") == ["00:00:00.000", "01:00:59.999", "01:01:59.999"]
    await h.stop()


async def test_a_step_noticed_late_still_runs_the_occurrence_due_then(
    tmp_path: Path, clock: FakeClock
) -> None:
    # The loop only wakes at the next deadline (no cap): the step is seen at the moment
    # the shifted occurrence is due, and it runs rather than being stepped over.
    ex = FakeExecutor(clock)
    h = await Harness(tmp_path, clock, ex).start(
        jobs_from(tmp_path, "name: j\nkind: quota\ntag: t\nschedule: {every: 1m}\n")
    )
    await clock.advance(150)  # ran 00:00, 00:01, 00:02
    clock.jump_wall(timedelta(minutes=-2))
    await clock.advance(150)
    assert stamps(ex, "j") == [
        "00:00:00.000", "00:01:00.000", "00:02:00.000",
        "00:00:59.999", "00:01:59.999", "00:02:59.999",
    ]  # fmt: skip
    await h.stop()


async def test_a_forward_step_applies_a_cron_jobs_catchup_instead_of_a_burst(
    tmp_path: Path, clock: FakeClock
) -> None:
    ex = FakeExecutor(clock)
    h = await Harness(tmp_path, clock, ex, max_sleep_s=1.0).start(
        jobs_from(tmp_path, "name: j\nkind: quota\ntag: t\nschedule: {cron: '* * * * *'}\n")
    )
    await clock.advance(30)
    clock.jump_wall(HOUR)
    await clock.advance(31)
    # One catch-up run for the latest missed minute, not sixty.
    assert stamps(ex, "j") == ["00:00:00.000", "01:00:00.000", "01:01:00.000"]
    await h.stop()


async def test_a_wildcard_cron_job_goes_on_at_the_new_time_under_new_keys(
    tmp_path: Path, clock: FakeClock
) -> None:
    ex = FakeExecutor(clock)
    h = await Harness(tmp_path, clock, ex, max_sleep_s=1.0).start(
        jobs_from(tmp_path, "name: j\nkind: quota\ntag: t\nschedule: {cron: '* * * * *'}\n")
    )
    await clock.advance(150)  # ran 00:00, 00:01, 00:02
    clock.jump_wall(timedelta(minutes=-30))  # now 23:32:30 the day before
    await clock.advance(120)
    assert stamps(ex, "j")[1:] == ["00:01:00.000", "00:02:00.000", "23:33:00.000", "23:34:00.000"]
    # 00:02:30 again: the minutes stepped over had all run before the step back, so
    # nothing is caught up twice; 00:03 comes next, once.
    clock.jump_wall(timedelta(minutes=28))
    await clock.advance(60)
    assert stamps(ex, "j")[5:] == ["00:03:00.000"]
    assert len(set(keys(ex))) == len(ex.calls)
    await h.stop()


async def test_a_fixed_time_cron_job_does_not_repeat_an_instant_after_a_small_step_back(
    tmp_path: Path, clock: FakeClock
) -> None:
    ex = FakeExecutor(clock)
    h = await Harness(tmp_path, clock, ex, max_sleep_s=1.0).start(
        jobs_from(tmp_path, "name: j\nkind: quota\ntag: t\nschedule: {cron: '5 0 * * *'}\n")
    )
    await clock.advance(6 * 60)  # ran 00:05
    clock.jump_wall(timedelta(minutes=-10))  # 23:56 the day before
    await clock.advance(20 * 60)  # passes 00:05 again
    assert stamps(ex, "j") == ["00:05:00.000"]
    await h.stop()


async def test_a_fixed_time_cron_job_takes_a_step_back_beyond_three_hours_as_a_new_time(
    tmp_path: Path, clock: FakeClock
) -> None:
    ex = FakeExecutor(clock)
    h = await Harness(tmp_path, clock, ex, max_sleep_s=1.0).start(
        jobs_from(tmp_path, "name: j\nkind: quota\ntag: t\nschedule: {cron: '5 0 * * *'}\n")
    )
    await clock.advance(6 * 60)  # ran 2026-03-01 00:05
    clock.jump_wall(timedelta(days=-1))  # the clock had been a day fast
    await clock.advance(24 * 3600)
    # 00:05 on 03-01 comes again on the corrected clock: it runs, under a key of its own.
    assert ex.times("j") == ["2026-03-01T00:05:00+00:00", "2026-03-01T00:05:00.001000+00:00"]
    assert len(set(keys(ex))) == 2
    await h.stop()
