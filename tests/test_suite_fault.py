"""Fault suite: 30% of calls fail (5xx, 429, timeouts, resets) under steady load.

CI size: 24 jobs every 2 s, 6 occurrences each (~12 s). Full size (60 jobs, 60 each, 2 min):

    RUNNER_SUITE_FULL=1 .venv/bin/pytest -s tests/test_suite_fault.py

The emulator has no probabilistic fault, so a background thread keeps its fault queue
topped up from a seeded sequence (RUNNER_SUITE_SEED) in which every block of ten slots
holds three faults (503, 502, 429 with Retry-After 1 s, rate-limit code, hang past the
job's timeout, TCP reset) and seven pass-throughs (a 1-15 ms delay, then a normal
answer): exactly 30% of calls misbehave, whoever makes them. Afterwards every
occurrence is succeeded, failed or skipped (none planned or running), each job ran
exactly its `limit`, attempts never exceed 1 + retries, and the gaps between attempts
honour the backoff and Retry-After. `pytest -s` prints the tally.
"""

from __future__ import annotations

import itertools
import random
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.daemon_helpers import wait_for
from tests.emulator_fixture import RunningEmulator
from tests.suite_helpers import (  # noqa: F401 (quiet_emulator_log: an autouse fixture)
    FULL,
    QUOTA,
    SEED,
    SuiteDaemon,
    by_key,
    quiet_emulator_log,
    received_s,
    size,
    succeeded,
    table,
)

JOBS = size(24, 60)
LIMIT = size(6, 60)
EVERY_S = 2
TIMEOUT_S = 0.4
INITIAL_S, MAX_S, MULTIPLIER, JITTER = 0.1, 0.3, 2, 0.2
RETRY_AFTER_S = 1
SLACK_S = 0.35  # scheduling and loopback noise on a busy 2-core machine
FAULTS: list[dict[str, Any]] = [
    {"status": 503},
    {"status": 502, "raw": True},
    {"status": 429, "retry_after": RETRY_AFTER_S},
    {"code": "RATE_LIMITED", "status": 200},
    {"hang": True},
    {"reset": True},
]


def job_text(retries: int) -> str:
    return QUOTA + (
        f"schedule: {{every: {EVERY_S}s, limit: {LIMIT}}}\n"
        f"timeout: {round(TIMEOUT_S * 1000)}ms\nretries: {retries}\n"
        f"retry: {{initial: {round(INITIAL_S * 1000)}ms, max: {round(MAX_S * 1000)}ms,"
        f" multiplier: {MULTIPLIER}, jitter: {JITTER}}}\n"
    )


def retries_of(job: str) -> int:
    """Two groups: most jobs retry 3 times, every fourth job only once."""
    return 1 if int(job.rsplit("-", 1)[1]) % 4 == 0 else 3


class FaultFeeder:
    """Keeps the emulator's fault queue topped up: 3 faults in every 10 slots, shuffled."""

    def __init__(self, emulator: RunningEmulator, rng: random.Random) -> None:
        self.http = httpx.Client(base_url=emulator.base_url, timeout=5.0, trust_env=False)
        self.rng = rng
        self.stopping = threading.Event()
        self.armed: Counter[str] = Counter()
        self.thread = threading.Thread(target=self._run, name="fault-feeder", daemon=True)

    def block(self) -> list[dict[str, Any]]:
        slots = [dict(self.rng.choice(FAULTS)) for _ in range(3)]
        slots += [{"delay_ms": self.rng.randint(1, 15)} for _ in range(7)]
        self.rng.shuffle(slots)
        return slots

    def _run(self) -> None:
        while not self.stopping.wait(0.1):
            queued = len(self.http.get("/_emulator/faults").json())
            for _ in range(max(0, 40 - queued) // 10):
                for spec in self.block():
                    self.http.post("/_emulator/faults", json=spec).raise_for_status()
                    self.armed[next(iter(k for k in spec if k != "retry_after"))] += 1

    def __enter__(self) -> FaultFeeder:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)
        self.http.delete("/_emulator/faults").raise_for_status()
        self.http.close()


def min_gap_s(attempt: int, call: dict[str, Any]) -> float:
    """The least time between attempt `attempt`'s arrival and the next one's."""
    backoff = min(INITIAL_S * MULTIPLIER ** (attempt - 1), MAX_S) * (1 - JITTER)
    asked = RETRY_AFTER_S if call["outcome"] == "fault:status=429" else 0
    return float(max(backoff, asked))


def max_gap_s(call: dict[str, Any]) -> float:
    """The most: a full timeout, then the largest backoff (or Retry-After)."""
    asked = RETRY_AFTER_S if call["outcome"] == "fault:status=429" else 0
    return TIMEOUT_S + max(MAX_S, asked) + SLACK_S


def attempts_made(calls: list[dict[str, Any]], resends: int) -> list[dict[str, Any]]:
    """The calls that were attempts. The client logs each resend (`ductape.resend`, a call
    that a reused connection lost before any answer, sent again within the same attempt);
    of the calls reset, those that many with the shortest gap to the next were not."""
    reset = [
        (received_s(nxt) - received_s(call), i)
        for i, (call, nxt) in enumerate(itertools.pairwise(calls))
        if call["outcome"] == "fault:reset"
    ]
    resent = {i for _, i in sorted(reset)[:resends]}
    return [call for i, call in enumerate(calls) if i not in resent]


def check_gaps(key: str, calls: list[dict[str, Any]]) -> list[str]:
    problems = []
    for attempt, (call, nxt) in enumerate(itertools.pairwise(calls), start=1):
        gap = received_s(nxt) - received_s(call)
        if not min_gap_s(attempt, call) - 0.02 <= gap <= max_gap_s(call):
            problems.append(f"{key}: attempt {attempt} ({call['outcome']}) then {gap:.3f} s")
    return problems


@pytest.mark.slow
def test_every_occurrence_ends_by_its_policy_under_thirty_percent_faults(
    tmp_path: Path, emulator: RunningEmulator
) -> None:
    d = SuiteDaemon(tmp_path, emulator, "--log-level", "debug")  # ductape.resend is debug
    names = [f"steady-{i:03d}" for i in range(JOBS)]
    for name in names:
        d.write_job(f"{name}.yaml", job_text(retries_of(name)))
    with FaultFeeder(emulator, random.Random(SEED)) as feeder:
        d.start()
        try:
            wait_for(lambda: ran_all(d), timeout=EVERY_S * (LIMIT + 4) + 30, every=0.5)
            wait_for(lambda: d.open_occurrences() == 0, timeout=10)
            assert d.alive()
        finally:
            d.stop()
    calls = by_key(emulator.calls())
    rows = d.query("SELECT job, idempotency_key, state, attempts, last_error FROM occurrences")
    print(report(rows, calls, feeder.armed))
    assert {state for _, _, state, _, _ in rows} <= {"succeeded", "failed", "skipped"}
    problems: list[str] = []
    resends = Counter(e["idempotency_key"] for e in d.events("ductape.resend"))
    for job, key, state, attempts, error in rows:
        made = attempts_made(calls.get(key, []), resends[key])
        if state == "skipped":
            problems += [f"{key}: skipped but called"] if made else []
            continue
        problems += [f"{key}: {attempts} attempts, {len(made)} calls"] * (attempts != len(made))
        problems += [f"{key}: {attempts} > 1 + {retries_of(job)}"] * (
            attempts > 1 + retries_of(job)
        )
        problems += [f"{key}: succeeded without a good call"] * (
            state == "succeeded" and not succeeded(made[-1])
        )
        problems += [f"{key}: failed without a reason: {error}"] * (
            state == "failed" and not failed_by_policy(error, attempts, retries_of(job))
        )
        problems += check_gaps(key, made)
    assert not problems, "\n".join(problems[:20])
    counts = d.query("SELECT DISTINCT execution_count FROM jobs")
    assert counts == [(LIMIT,)]
    assert None not in calls


def ran_all(d: SuiteDaemon) -> bool:
    done = d.query("SELECT count(*) FROM jobs WHERE execution_count = ?", LIMIT)[0][0]
    return bool(done == JOBS)


def failed_by_policy(error: str | None, attempts: int, retries: int) -> bool:
    """A failure names its reason: attempts exhausted, or no time before the next occurrence."""
    text = error or ""
    exhausted = "attempts exhausted" in text and attempts == 1 + retries
    return exhausted or "no time before next occurrence" in text


def report(
    rows: list[tuple[Any, ...]], calls: dict[str | None, list[Any]], armed: Counter[str]
) -> str:
    states = Counter(row[2] for row in rows)
    outcomes = Counter(
        "ok" if succeeded(c) else str(c["outcome"]) for cs in calls.values() for c in cs
    )
    total = sum(outcomes.values())
    bad = total - outcomes["ok"]
    attempts = Counter(row[3] for row in rows if row[2] != "skipped")
    return (
        f"\nfault suite ({'full' if FULL else 'CI'} size, seed {SEED}): {len(rows)} occurrences, "
        f"{total} calls, {bad} faulted ({bad / max(total, 1):.0%})\n"
        + table(["occurrence state", "count"], [[s, n] for s, n in sorted(states.items())])
        + "\n"
        + table(["call outcome", "count"], [[o, n] for o, n in outcomes.most_common()])
        + "\n"
        + table(["attempts", "occurrences"], [[a, n] for a, n in sorted(attempts.items())])
    )
