"""Pure scheduling decisions: catch-up of missed occurrences, jitter, and job status."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the model's types only: timing sits below jobs at run time
    from runner.jobs.model import Catchup


CATCHUP_ALL_CAP = 100
# How late an occurrence may start and still count as on time; later ones count as
# missed (downtime, a stall, a forward clock step) and follow the catchup policy.
# Half the job's period, clamped to [1 s, 10 s]: a burst of 10,000 due at once is
# on time, while an every-2s job does not fire a backlog after a 5 s stall.
LATE_GRACE = timedelta(seconds=10)
MIN_GRACE = timedelta(seconds=1)


def lateness_grace(gap: timedelta | None) -> timedelta:
    """Tolerated lateness for an occurrence whose next one comes `gap` later."""
    if gap is None:
        return LATE_GRACE
    return min(LATE_GRACE, max(gap / 2, MIN_GRACE))


@dataclass(frozen=True)
class CatchupDecision:
    """Which missed instants run, which are recorded as skipped, and why."""

    run: list[datetime]
    skip: list[datetime]
    reason: str


def decide_catchup(missed: list[datetime], policy: Catchup, now: datetime) -> CatchupDecision:
    """Apply the job's catch-up policy to instants that are already in the past."""
    if not missed:
        return CatchupDecision([], [], "nothing missed")
    if policy.policy == "skip":
        return CatchupDecision([], missed, "catchup policy skip")
    if policy.policy == "all":
        run = missed[-CATCHUP_ALL_CAP:]
        return CatchupDecision(
            run, missed[: -len(run)], f"catchup policy all (cap {CATCHUP_ALL_CAP})"
        )
    latest = missed[-1]
    if now - latest <= timedelta(milliseconds=policy.window):
        return CatchupDecision([latest], missed[:-1], "catchup policy latest")
    return CatchupDecision([], missed, "catchup policy latest: older than window")


def jitter_delay_ms(job: str, scheduled: datetime, jitter_ms: int, gap_ms: int | None) -> int:
    """A stable delay in [0, jitter) for (job, instant) that never reaches the next occurrence.

    Derived from a hash rather than a random source so that a restart (or another
    replica) computes the same delay for the same occurrence.
    """
    if jitter_ms <= 0:
        return 0
    bound = jitter_ms if gap_ms is None else min(jitter_ms, max(gap_ms // 2, 0))
    if bound <= 0:
        return 0
    seed = zlib.crc32(f"{job}@{scheduled.isoformat()}".encode())
    return seed % bound


def idempotency_key(job: str, scheduled_ms: int) -> str:
    """The key every attempt of one occurrence carries: stable across restarts and replicas."""
    return f"ductape-runner:{job}:{scheduled_ms}"
