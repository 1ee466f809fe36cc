"""Crash suite: SIGKILL the daemon at random points of a burst, restart, count what happened.

CI size: 4 cycles of a 300-occurrence burst. Full size (the issue's 20 cycles of 2,000):

    RUNNER_SUITE_FULL=1 .venv/bin/pytest -s tests/test_suite_crash.py

Each cycle writes a fresh burst (one-shot jobs all due at one instant, plus `every` jobs
with a `limit`), starts the daemon, SIGKILLs it at a random point of the burst (seeded by
RUNNER_SUITE_SEED), restarts it and waits until everything finished. Then: no occurrence
is lost (each has a successful call), every call carries an idempotency key, a key is
called twice only for attempts in flight at the kill (at most max_concurrent_runs), and
each `limit` job ran exactly `limit` distinct occurrences. `pytest -s` prints the table.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

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
    size,
    succeeded,
    table,
)

CYCLES = size(4, 20)
BURST = size(300, 2000)
LIMIT_JOBS, LIMIT, EVERY_MS = 10, 4, 500
MAX_CONCURRENT = 64  # the daemon's default max_concurrent_runs: at most this many in flight
LEAD_S = 2.5  # from writing the burst to its instant: the daemon starts in between
CALLS_PER_S = 300  # a conservative dispatch rate on a small machine, to aim the kills


def write_cycle(d: SuiteDaemon, cycle: int, instant_ms: int) -> list[str]:
    """The cycle's job files; returns the keys of the burst's one-shots."""
    for old in d.jobs.glob("*.yaml"):
        old.unlink()
    names = [f"c{cycle:02d}-{i:05d}" for i in range(BURST)]
    lines = ["jobs:"] + [
        f"  - {{name: {n}, kind: quota, product: p, env: dev, tag: t,"
        f" schedule: {{start_at: {instant_ms}}}}}"
        for n in names
    ]
    d.write_job(f"burst-{cycle:02d}.yaml", "\n".join(lines) + "\n")
    for k in range(LIMIT_JOBS):
        d.write_job(
            f"limit-{cycle:02d}-{k}.yaml",
            QUOTA + f"schedule: {{every: {EVERY_MS}ms, limit: {LIMIT}, start_at: {instant_ms}}}\n"
            "catchup: {policy: all}\n",
        )
    return [f"ductape-runner:{n}:{instant_ms}" for n in names]


def finished(d: SuiteDaemon, emulator: RunningEmulator, keys: list[str], cycle: int) -> bool:
    calls = by_key(emulator.calls())
    if any(not any(succeeded(c) for c in calls.get(k, [])) for k in keys):
        return False
    done = d.query(
        "SELECT count(*) FROM jobs WHERE name LIKE ? AND execution_count = ?",
        f"limit-{cycle:02d}-%",
        LIMIT,
    )[0][0]
    return done == LIMIT_JOBS and d.open_occurrences() == 0


def run_cycle(
    d: SuiteDaemon, emulator: RunningEmulator, cycle: int, rng: random.Random
) -> dict[str, Any]:
    instant_ms = round((time.time() + LEAD_S) * 1000)
    keys = write_cycle(d, cycle, instant_ms)
    d.start()
    kill_at = instant_ms / 1000 + rng.uniform(-0.2, 0.9 * BURST / CALLS_PER_S)
    time.sleep(max(kill_at - time.time(), 0))
    d.kill()
    before = len(emulator.calls())
    d.start(timeout=30)
    wait_for(lambda: finished(d, emulator, keys, cycle), timeout=120, every=0.25)
    d.stop()
    calls = emulator.calls()
    emulator.reset()
    return tally(d, calls, keys, cycle) | {
        "cycle": cycle,
        "kill_ms": round(kill_at * 1000 - instant_ms),
        "before_kill": before,
    }


def tally(
    d: SuiteDaemon, calls: list[dict[str, Any]], keys: list[str], cycle: int
) -> dict[str, Any]:
    grouped = by_key(calls)
    limit_keys = {k for k in grouped if k and k.startswith(f"ductape-runner:limit-{cycle:02d}-")}
    counts = d.query("SELECT execution_count FROM jobs WHERE name LIKE ?", f"limit-{cycle:02d}-%")
    return {
        "calls": len(calls),
        "lost": sum(1 for k in keys if not any(succeeded(c) for c in grouped.get(k, []))),
        "duplicates": sum(1 for k, cs in grouped.items() if k is not None and len(cs) > 1),
        "keyless": len(grouped.get(None, [])),
        "limit_keys": len(limit_keys),
        "limit_counts": sorted({row[0] for row in counts}),
        "states": dict(d.states(f"c{cycle:02d}-%")),
    }


@pytest.mark.slow
def test_sigkill_during_a_burst_loses_nothing_and_repeats_only_keys_in_flight(
    tmp_path: Path, emulator: RunningEmulator
) -> None:
    rng = random.Random(SEED)
    d = SuiteDaemon(tmp_path, emulator)
    results = []
    try:
        for cycle in range(CYCLES):
            results.append(run_cycle(d, emulator, cycle, rng))
    finally:
        d.stop()
    print(report(results))
    for r in results:
        assert r["lost"] == 0, r
        assert r["keyless"] == 0, r  # no duplicate (indeed no call) without a key
        assert r["duplicates"] <= MAX_CONCURRENT, r
        assert r["limit_keys"] == LIMIT_JOBS * LIMIT, r  # exactly `limit` distinct runs each
        assert r["limit_counts"] == [LIMIT], r
        assert r["states"] == {"succeeded": BURST}, r


def report(results: list[dict[str, Any]]) -> str:
    rows = [
        [
            r["cycle"],
            r["kill_ms"],
            r["before_kill"],
            r["calls"],
            r["lost"],
            r["duplicates"],
            r["keyless"],
            f"{r['limit_keys']} (limit {LIMIT} x {LIMIT_JOBS})",
        ]
        for r in results
    ]
    head = ["cycle", "kill at ms", "calls before kill", "calls", "lost", "dup keys", "keyless"]
    totals = (
        f"\ncrash suite ({'full' if FULL else 'CI'} size, seed {SEED}): {len(results)} cycles "
        f"of {BURST} + {LIMIT_JOBS}x{LIMIT}: lost {sum(r['lost'] for r in results)}, "
        f"duplicate keys {sum(r['duplicates'] for r in results)}, "
        f"keyless {sum(r['keyless'] for r in results)}\n"
    )
    return totals + table([*head, "limit runs"], rows)
