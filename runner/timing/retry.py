"""Retry math: backoff delays and whether another attempt fits, as pure functions over data."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the model's types only: timing sits below jobs at run time
    from runner.jobs.model import RetryPolicy


# Limits on what a server (or a policy) can make the runner wait (issue 18, bug 8):
# a Retry-After above an hour (or `inf`, or junk that parses as a huge number) is
# obeyed as one hour, and no retry of an occurrence starts more than a day after its
# scheduled instant, whether or not the job has a next occurrence.
MAX_RETRY_AFTER = timedelta(hours=1)
MAX_RETRY_WINDOW = timedelta(days=1)


@dataclass(frozen=True)
class RetryDecision:
    """Whether to try again, when (seconds from `now`) and why, for the logs."""

    retry: bool
    delay_s: float
    next_attempt: int
    reason: str
    start_at: datetime | None = None


def backoff_delay(policy: RetryPolicy, attempt: int, rand: Callable[[], float]) -> float:
    """Seconds to wait after failed attempt `attempt` (1-based), jittered, never above max.

    initial * multiplier**(attempt-1), capped at policy.max, then moved by up to
    ±jitter of itself using `rand()` in [0, 1); the result is capped again so the
    documented maximum really is the maximum.
    """
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    try:
        base = policy.initial * policy.multiplier ** (attempt - 1)
    except OverflowError:
        base = float(policy.max)
    capped = min(base, float(policy.max))
    jittered = capped * (1.0 + policy.jitter * (2.0 * rand() - 1.0))
    return max(0.0, min(jittered, float(policy.max))) / 1000.0


def plan_retry(
    policy: RetryPolicy,
    *,
    attempt: int,
    retries: int,
    now: datetime,
    rand: Callable[[], float],
    retryable: bool = True,
    retry_after_s: float | None = None,
    deadline: datetime | None = None,
    scheduled: datetime | None = None,
) -> RetryDecision:
    """Decide about the attempt after failed attempt `attempt`; a job has 1 + retries attempts.

    The delay is max(backoff, retry_after_s), retry_after_s clamped to MAX_RETRY_AFTER.
    No retry is planned whose start would fall at or after `deadline` (the job's next
    occurrence), so runs never pile up, nor later than MAX_RETRY_WINDOW after
    `scheduled` (the occurrence's instant).
    """
    nxt = attempt + 1
    if not retryable:
        return RetryDecision(False, 0.0, nxt, "error is not retryable")
    if attempt >= 1 + retries:
        return RetryDecision(False, 0.0, nxt, f"attempts exhausted ({attempt} of {1 + retries})")
    delay = backoff_delay(policy, attempt, rand)
    reason = f"backoff {delay:.3f}s"
    if retry_after_s is not None and not retry_after_s <= delay:  # NaN too
        asked, cap = retry_after_s, MAX_RETRY_AFTER.total_seconds()
        if not asked <= cap:  # inf, NaN, or just too long
            delay, reason = cap, f"server asked to retry after {asked:g}s, capped at {cap:g}s"
        else:
            delay, reason = asked, f"server asked to retry after {asked:g}s"
    start = now + timedelta(seconds=delay)
    if deadline is not None and start >= deadline:
        why = f"attempt {nxt} would start at {start.isoformat()}, not before {deadline.isoformat()}"
        return RetryDecision(False, delay, nxt, f"no time before next occurrence: {why}")
    if scheduled is not None and start > scheduled + MAX_RETRY_WINDOW:
        why = f"attempt {nxt} would start at {start.isoformat()}, over a day after its instant"
        return RetryDecision(False, delay, nxt, f"retry window exhausted: {why}")
    return RetryDecision(True, delay, nxt, f"attempt {nxt} of {1 + retries} after {reason}", start)
