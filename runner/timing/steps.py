"""Wall-clock steps: which schedules follow elapsed time through one, which the calendar.

A step is the wall clock moving apart from the monotonic one (an NTP step, `date -s`,
a VM resumed from suspend). The rules, after cronie's (`cron.c`, "time change"):

- `every` schedules measure elapsed time: their phase moves with the step, so the next
  run comes when the interval has elapsed, whichever way the wall clock went.
- cron schedules keep the calendar. After a step forward, missed instants follow the
  job's catch-up policy. After a step back of up to three hours, a fixed-time job (minute
  and hour both fixed) does not repeat an instant it already ran and waits for the clock
  to come back; a wildcard job (minute or hour starting with `*`) goes on at the new
  time. After a step back of more than three hours the new time is taken as the truth
  and every cron job goes on at it.
- one-shots fire at their instant, as written.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from runner.timing.cronspec import parse
from runner.timing.firetimes import Recurrence

__all__ = ["NEW_TIME_AFTER", "elapsed_shift_ms", "replays_at_new_time", "shifted"]

NEW_TIME_AFTER = timedelta(hours=3)  # cronie: a larger step back is a new time


def elapsed_shift_ms(rec: Recurrence, step_ms: int, before: datetime) -> int:
    """How far an `every` schedule's phase moves for a wall step of `step_ms`; 0 for others.

    The shift is never a whole number of intervals, so the new instants never coincide
    with ones the job already ran (they would share a run's idempotency key). A schedule
    whose `start_at` had not come yet (`before`: the wall time just before the step)
    keeps it: it is a date the operator wrote.
    """
    if rec.cron is not None or rec.every_ms is None or step_ms == 0:
        return 0
    if rec.start_at is not None and rec.start_at > before:
        return 0
    return step_ms - 1 if step_ms % rec.every_ms == 0 else step_ms


def shifted(rec: Recurrence, shift_ms: int) -> Recurrence:
    """The same schedule with its phase (start_at, or the first sighting) moved."""
    if shift_ms == 0:
        return rec
    delta = timedelta(milliseconds=shift_ms)
    return replace(
        rec,
        start_at=None if rec.start_at is None else rec.start_at + delta,
        anchor=None if rec.anchor is None else rec.anchor + delta,
    )


def replays_at_new_time(rec: Recurrence, step: timedelta) -> bool:
    """After a step back, does this cron schedule go on at the new time (cronie's rule)?"""
    if rec.cron is None or step >= timedelta(0):
        return False
    return -step > NEW_TIME_AFTER or not parse(rec.cron).fixed_time
