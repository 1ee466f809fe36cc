"""Retry math: pinned jitter, caps, Retry-After and the next-occurrence deadline."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from runner.jobs.model import RetryPolicy
from runner.timing.retry import MAX_RETRY_AFTER, MAX_RETRY_WINDOW, backoff_delay, plan_retry

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
DUCTAPE_DEFAULT = RetryPolicy()  # 1 s, x2, at most 300 s, jitter 0.1
NO_JITTER = RetryPolicy(jitter=0.0)


def middle() -> float:
    return 0.5  # no jitter: 1 + j * (2 * 0.5 - 1) == 1


def lowest() -> float:
    return 0.0


def highest() -> float:
    return 0.999999


# (policy, attempt, rand, seconds)
DELAYS = [
    (DUCTAPE_DEFAULT, 1, middle, 1.0),
    (DUCTAPE_DEFAULT, 2, middle, 2.0),
    (DUCTAPE_DEFAULT, 3, middle, 4.0),
    (DUCTAPE_DEFAULT, 9, middle, 256.0),
    (DUCTAPE_DEFAULT, 10, middle, 300.0),  # 512 s capped at max
    (DUCTAPE_DEFAULT, 100, middle, 300.0),
    (DUCTAPE_DEFAULT, 1, lowest, 0.9),  # -10 %
    (DUCTAPE_DEFAULT, 3, lowest, 3.6),
    (DUCTAPE_DEFAULT, 3, highest, 4.4),  # +10 % (just under)
    (DUCTAPE_DEFAULT, 10, highest, 300.0),  # jitter never lifts a delay above max
    (DUCTAPE_DEFAULT, 10, lowest, 270.0),
    (RetryPolicy(initial=250, multiplier=3, max=5_000, jitter=0), 3, lowest, 2.25),
    (RetryPolicy(initial=250, multiplier=1, jitter=0), 50, lowest, 0.25),
    (RetryPolicy(multiplier=100, jitter=0), 10_000, lowest, 300.0),  # no float overflow
    (RetryPolicy(initial=1_000, jitter=1.0), 1, lowest, 0.0),
]


@pytest.mark.parametrize(("policy", "attempt", "rand", "seconds"), DELAYS)
def test_backoff_delay_table(
    policy: RetryPolicy, attempt: int, rand: Callable[[], float], seconds: float
) -> None:
    assert backoff_delay(policy, attempt, rand) == pytest.approx(seconds, abs=1e-4)


def test_attempt_numbers_start_at_one() -> None:
    with pytest.raises(ValueError, match="attempt must be >= 1"):
        backoff_delay(DUCTAPE_DEFAULT, 0, middle)


def test_a_job_gets_one_plus_retries_attempts() -> None:
    plans = [plan_retry(NO_JITTER, attempt=n, retries=2, now=NOW, rand=middle) for n in (1, 2, 3)]
    assert [p.retry for p in plans] == [True, True, False]
    assert [p.delay_s for p in plans[:2]] == [1.0, 2.0]
    assert plans[0].start_at == NOW + timedelta(seconds=1)
    assert plans[0].reason == "attempt 2 of 3 after backoff 1.000s"
    assert plans[2].reason == "attempts exhausted (3 of 3)"


def test_no_retries_means_one_attempt() -> None:
    plan = plan_retry(NO_JITTER, attempt=1, retries=0, now=NOW, rand=middle)
    assert not plan.retry
    assert plan.reason == "attempts exhausted (1 of 1)"


def test_a_permanent_error_is_never_retried() -> None:
    plan = plan_retry(NO_JITTER, attempt=1, retries=5, now=NOW, rand=middle, retryable=False)
    assert not plan.retry
    assert plan.reason == "error is not retryable"


@pytest.mark.parametrize(
    ("retry_after_s", "delay_s", "reason"),
    [
        (None, 2.0, "attempt 3 of 6 after backoff 2.000s"),
        (0.5, 2.0, "attempt 3 of 6 after backoff 2.000s"),  # shorter than backoff: ignored
        (30.0, 30.0, "attempt 3 of 6 after server asked to retry after 30s"),
    ],
)
def test_retry_after_wins_when_longer_than_the_backoff(
    retry_after_s: float | None, delay_s: float, reason: str
) -> None:
    plan = plan_retry(
        NO_JITTER, attempt=2, retries=5, now=NOW, rand=middle, retry_after_s=retry_after_s
    )
    assert plan.retry
    assert plan.delay_s == delay_s
    assert plan.reason == reason


@pytest.mark.parametrize(
    ("deadline_in_s", "retry"),
    [
        (4.001, True),  # attempt 3 starts 4 s from now: just fits
        (4.0, False),  # starting at the next occurrence is too late
        (3.0, False),
    ],
)
def test_no_retry_starts_at_or_after_the_next_occurrence(deadline_in_s: float, retry: bool) -> None:
    deadline = NOW + timedelta(seconds=deadline_in_s)
    plan = plan_retry(NO_JITTER, attempt=3, retries=5, now=NOW, rand=middle, deadline=deadline)
    assert plan.retry is retry
    if not retry:
        assert plan.reason.startswith("no time before next occurrence: attempt 4 would start at")


def test_retry_after_counts_against_the_deadline() -> None:
    deadline = NOW + timedelta(seconds=60)
    plan = plan_retry(
        NO_JITTER, attempt=1, retries=3, now=NOW, rand=middle, retry_after_s=90, deadline=deadline
    )
    assert not plan.retry
    assert plan.delay_s == 90


@pytest.mark.parametrize(
    "asked",
    [float("inf"), 1e12, 1e9, float("nan"), 3_601.0],
    ids=["inf", "1e12", "1e9", "nan", "just-over"],
)
def test_a_huge_or_broken_retry_after_is_capped_not_a_crash(asked: float) -> None:
    # Issue 18, bug 8: `Retry-After: inf` raised OverflowError inside retry planning, and a
    # one-shot (no next occurrence) obeyed a Retry-After of 1e9 s.
    plan = plan_retry(NO_JITTER, attempt=1, retries=3, now=NOW, rand=middle, retry_after_s=asked)
    assert plan.retry
    assert plan.delay_s == MAX_RETRY_AFTER.total_seconds()
    assert plan.start_at == NOW + MAX_RETRY_AFTER
    assert "capped at 3600s" in plan.reason


def test_no_retry_starts_more_than_a_day_after_its_occurrence() -> None:
    scheduled = NOW - MAX_RETRY_WINDOW + timedelta(minutes=30)
    plan = plan_retry(
        NO_JITTER, attempt=1, retries=3, now=NOW, rand=middle, retry_after_s=3_600,
        scheduled=scheduled,
    )  # fmt: skip
    assert not plan.retry
    assert plan.reason.startswith("retry window exhausted")
    ok = plan_retry(
        NO_JITTER, attempt=1, retries=3, now=NOW, rand=middle, retry_after_s=60,
        scheduled=scheduled,
    )  # fmt: skip
    assert ok.retry
