"""What the scheduler does when the wall clock steps: notice it, and move each schedule.

The rules themselves are pure and live in runner.timing.steps; this half of `Scheduler`
applies them to the jobs it holds.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import structlog

from runner.daemon.decisions import to_ms
from runner.daemon.runs import Entry, JobRuns
from runner.timing.steps import elapsed_shift_ms, replays_at_new_time, shifted

log = structlog.get_logger("runner.scheduler")

CLOCK_JUMP = timedelta(seconds=2)


class ClockSteps:
    """The half of `Scheduler` that keeps schedules right through wall-clock steps."""

    entries: dict[str, Entry]

    def _reschedule(self, entry: Entry, now: datetime, *, catch_up: bool) -> None:
        raise NotImplementedError

    if TYPE_CHECKING:  # Dispatch's (a stub here would come first in Scheduler's MRO)

        def _runs_of(self, name: str) -> JobRuns: ...

    def _check_clock(
        self, last_wall: datetime, last_mono: float, now: datetime, mono: float
    ) -> None:
        step = (now - last_wall) - timedelta(seconds=mono - last_mono)
        if abs(step) < CLOCK_JUMP:
            return
        shifted_jobs, new_time = self._after_step(step, now)
        log.warning(
            "clock.jump",
            direction="forward" if step > timedelta(0) else "backward",
            seconds=round(step.total_seconds(), 3),
            elapsed_jobs=shifted_jobs,
            new_time_jobs=new_time,
            decision=(
                "every-jobs follow elapsed time; overdue cron occurrences follow each "
                "job's catchup policy"
                if step > timedelta(0)
                else "every-jobs follow elapsed time; wildcard cron jobs go on at the new "
                "time; fixed-time cron jobs do not repeat an instant they ran"
            ),
        )

    def _after_step(self, step: timedelta, now: datetime) -> tuple[int, int]:
        """Move each schedule as runner.timing.steps says; returns how many of each kind."""
        step_ms, now_ms = round(step.total_seconds() * 1000), to_ms(now)
        elapsed = new_time = 0
        for entry in self.entries.values():
            record, runs = entry.record, entry.runs
            if step_ms > 0 and runs.replay_until_ms != -1:
                runs.replay_until_ms = -1  # instants ahead were never run; behind, they were
            shift = elapsed_shift_ms(entry.rec, step_ms, now - step)
            if shift:
                runs = self._runs_of(entry.job.name)
                runs.shift_ms += shift
                entry.rec = shifted(entry.rec, shift)
                if record.last_scheduled_ms is not None:
                    record.last_scheduled_ms += shift
                elapsed += 1
            elif replays_at_new_time(entry.rec, step):
                runs = self._runs_of(entry.job.name)
                runs.replay_until_ms = max(runs.replay_until_ms, record.last_scheduled_ms or -1)
                record.last_scheduled_ms = now_ms - 1
                new_time += 1
            else:
                continue
            # A shifted instant already past (the step was seen late) is missed, not gone.
            self._reschedule(entry, now, catch_up=bool(shift))
        return elapsed, new_time
