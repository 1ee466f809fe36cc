"""Consequences of a job-set change that a reviewer must see, each with a stable id.

Pure: `now` is an argument. Ids are what `diff --fail-on` names; a frequency id also
matches the lower thresholds (`--fail-on frequency-up-10x` blocks a 100x increase too).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from runner.errors import Problem
from runner.jobs.loader import LoadedJob

FREQUENCY_STEPS = (100, 10, 2)  # ratios reported, highest first
CONSEQUENCES = {
    **{
        f"frequency-up-{r}x": f"the new schedule fires at least {r}x as often" for r in (2, 10, 100)
    },
    "ends-in-window": "a `limit` or `endDate` ends the job within the fire times shown",
    "zone-change": "the job's time zone changes",
    "one-shot-past": "a one-shot whose `start_at` is past or absent: it runs at once on deploy",
    "duplicate-name": "a job name defined in two files: the later file is refused",
    "invalid-file": "a file of the new version is invalid",
}


@dataclass(frozen=True, slots=True)
class Consequence:
    """What a change does that a reviewer must see: id, the job or file, and why."""

    id: str
    message: str
    job: str | None = None
    path: str | None = None
    ratio: float | None = None  # frequency ids: how many times as often

    def matches(self, wanted: Iterable[str]) -> bool:
        """True when one of `wanted` names this id (or a lower frequency threshold)."""
        return any(w == self.id or self._exceeds(w) for w in wanted)

    def _exceeds(self, wanted: str) -> bool:
        if self.ratio is None or not wanted.startswith("frequency-up-"):
            return False
        threshold = wanted.removeprefix("frequency-up-").removesuffix("x")
        return threshold.isdigit() and self.ratio >= int(threshold)


def job_consequences(
    name: str,
    status: str,
    new: LoadedJob,
    old: LoadedJob | None,
    now: datetime,
    ends: str | None,
) -> list[Consequence]:
    """The consequences of one added, renamed or changed job (`old` None when unknown)."""
    found = []
    if status == "changed" and old is not None:
        found += _frequency(name, new, old, now)
        found += _zone(name, new, old)
    if ends is not None:
        found.append(Consequence("ends-in-window", f"{name}: {ends}", name))
    found += _one_shot(name, status, new, now)
    return found


def _frequency(name: str, new: LoadedJob, old: LoadedJob, now: datetime) -> list[Consequence]:
    # Imported here: fire times load croniter (~60 ms), and every command's parser reads
    # CONSEQUENCES for `diff --fail-on`.
    from runner.daemon.outlook import mean_interval, span

    before, after = mean_interval(old.job, now), mean_interval(new.job, now)
    if before is None or after is None or after <= 0:
        return []
    ratio = before / after
    step = next((s for s in FREQUENCY_STEPS if ratio >= s), None)
    if step is None:
        return []
    message = (
        f"{name}: fires {ratio:.3g}x as often: every {span(after)} instead of every"
        f" {span(before)} (mean over the next fires)"
    )
    return [Consequence(f"frequency-up-{step}x", message, name, ratio=round(ratio, 3))]


def _zone(name: str, new: LoadedJob, old: LoadedJob) -> list[Consequence]:
    was, now_tz = old.job.schedule.tz, new.job.schedule.tz
    if was == now_tz:
        return []
    message = f"{name}: time zone changes from {was} to {now_tz}: its wall-clock times move"
    return [Consequence("zone-change", message, name)]


def _one_shot(name: str, status: str, new: LoadedJob, now: datetime) -> list[Consequence]:
    schedule = new.job.schedule
    if schedule.recurring or new.job.suspend:
        return []
    start = schedule.start_at
    if start is None:
        why = "a one-shot without start_at"
    elif start <= now:
        why = f"a one-shot whose start_at {start.isoformat()} is past"
    else:
        return []
    verb = "runs again" if status == "changed" else "runs"
    return [Consequence("one-shot-past", f"{name}: {why}: it {verb} at once on deploy", name)]


def file_consequences(problems: list[Problem], kept: Mapping[str, list[str]]) -> list[Consequence]:
    """One `invalid-file` per refused file (what it keeps running), and `duplicate-name`s."""
    found = []
    for path in sorted({p.path for p in problems}):
        mine = [p for p in problems if p.path == path]
        more = f" (and {len(mine) - 1} more)" if len(mine) > 1 else ""
        keeps = kept.get(path)
        tail = f"; the daemon keeps running the previous {', '.join(keeps)}" if keeps else ""
        found.append(Consequence("invalid-file", f"{mine[0]}{more}{tail}", path=path))
    for p in problems:
        if p.field == "name" and p.message.startswith("duplicate job name"):
            found.append(Consequence("duplicate-name", str(p), path=p.path))
    return found
