"""Retry math: backoff delays and whether another attempt fits, as pure functions over data."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the model's types only: timing sits below jobs at run time
    from runner.jobs.model import RetryPolicy


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
) -> RetryDecision:
    """Decide about the attempt after failed attempt `attempt`; a job has 1 + retries attempts.

    The delay is max(backoff, retry_after_s). No retry is planned whose start would fall
    at or after `deadline` (the job's next occurrence), so runs never pile up.
    """
    nxt = attempt + 1
    if not retryable:
        return RetryDecision(False, 0.0, nxt, "error is not retryable")
    if attempt >= 1 + retries:
        return RetryDecision(False, 0.0, nxt, f"attempts exhausted ({attempt} of {1 + retries})")
    delay = backoff_delay(policy, attempt, rand)
    reason = f"backoff {delay:.3f}s"
    if retry_after_s is not None and retry_after_s > delay:
        delay, reason = retry_after_s, f"server asked to retry after {retry_after_s:g}s"
    start = now + timedelta(seconds=delay)
    if deadline is not None and start >= deadline:
        why = f"attempt {nxt} would start at {start.isoformat()}, not before {deadline.isoformat()}"
        return RetryDecision(False, delay, nxt, f"no time before next occurrence: {why}")
    return RetryDecision(True, delay, nxt, f"attempt {nxt} of {1 + retries} after {reason}", start)
