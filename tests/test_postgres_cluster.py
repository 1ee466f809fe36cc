"""Operator actions across replicas (issue 14): a trigger runs once in the cluster, and a
pause or resume on one replica reaches the others within a second (LISTEN/NOTIFY)."""

from __future__ import annotations

import itertools
import json
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests import pg_helpers
from tests.daemon_helpers import DaemonProcess, cli, control_request, ctl, wait_for
from tests.emulator_fixture import RunningEmulator

# The fixtures, by name (a function argument shadowing an import would read as a mistake).
pg_database, pg_dsn = pg_helpers.pg_database, pg_helpers.pg_dsn

pytestmark = pytest.mark.slow

JOB = "kind: quota\nproduct: p\nenv: dev\ntag: t\nconcurrency: allow\n"


def start_replicas(
    tmp_path: Path,
    emulator: RunningEmulator,
    dsn: str,
    jobs: str,
    env: dict[str, str] | None = None,
) -> list[DaemonProcess]:
    replicas = []
    for i in range(3):
        home = tmp_path / f"r{i}"
        home.mkdir()
        own = {"DUCTAPE_RUNNER_STATE": dsn, "DUCTAPE_RUNNER_REPLICA_ID": f"r{i}", **(env or {})}
        process = DaemonProcess(home, emulator, env=own)
        process.write_job("jobs.yaml", jobs)
        replicas.append(process)
    for process in replicas:
        process.start()
    for process in replicas:
        wait_for(lambda p=process: p.events("daemon.started"), timeout=20)
    return replicas


def pg_query(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql).fetchall()


def _held_mid_burst(dsn: str) -> dict[str, int] | None:
    """Open occurrences per owner, once some replica holds 16 (its connections: calls
    are in flight)."""
    held: dict[str, int] = dict(
        pg_query(
            dsn,
            "SELECT owner, count(*) FROM occurrences WHERE owner <> '' "
            "AND state IN ('planned', 'running') GROUP BY owner",
        )
    )
    return held if max(held.values(), default=0) >= 16 else None


def calls_of(emulator: RunningEmulator, job: str | None = None) -> Counter[str]:
    """Calls per idempotency key, of one job or of all."""
    prefix = "ductape-runner:" if job is None else f"ductape-runner:{job}:"
    return Counter(
        c["idempotency_key"] for c in emulator.calls() if c["idempotency_key"].startswith(prefix)
    )


def test_triggers_on_any_replica_each_run_exactly_once_in_the_cluster(
    tmp_path: Path, emulator: RunningEmulator, pg_dsn: str
) -> None:
    jobs = f"name: yearly\n{JOB}schedule: {{cron: '0 0 1 1 *'}}\n"
    replicas = start_replicas(tmp_path, emulator, pg_dsn, jobs)
    try:
        for i in range(12):
            assert ctl(replicas[i % 3], "trigger", "yearly").returncode == 0
        wait_for(lambda: len(calls_of(emulator, "yearly")) >= 12, timeout=15)
        time.sleep(1.0)  # a second run of any of them would have arrived by now
    finally:
        for r in replicas:
            r.stop()
    called = calls_of(emulator, "yearly")
    assert len(called) == 12 and set(called.values()) == {1}, called
    finished = [e for r in replicas for e in r.events("run.finished")]
    assert len(finished) == 12 and {e["trigger"] for e in finished} == {"manual"}


def test_a_pause_on_one_replica_stops_the_job_on_all_within_a_second_and_resume_restarts_it(
    tmp_path: Path, emulator: RunningEmulator, pg_dsn: str
) -> None:
    start_ms = (int(time.time()) + 2) * 1000
    jobs = f"name: ticker\n{JOB}schedule: {{every: 1s, start_at: {start_ms}}}\n"
    replicas = start_replicas(tmp_path, emulator, pg_dsn, jobs)
    try:
        wait_for(lambda: len(calls_of(emulator, "ticker")) >= 3, timeout=20)
        assert ctl(replicas[0], "pause", "ticker").returncode == 0
        paused_at = time.time()
        for other in replicas[1:]:  # told, not polled: well within the keeper's 10 s
            wait_for(lambda o=other: o.events("job.paused"), timeout=1.0)
        time.sleep(2.5)
        late = [k for k in calls_of(emulator, "ticker") if _instant(k) > paused_at + 1.0]
        assert late == []  # nothing scheduled a second after the pause ran anywhere
        assert ctl(replicas[1], "resume", "ticker").returncode == 0
        resumed_at = time.time()
        wait_for(lambda: any(_instant(k) > resumed_at for k in calls_of(emulator, "ticker")), 5)
    finally:
        for r in replicas:
            r.stop()
    called = calls_of(emulator, "ticker")
    assert set(called.values()) == {1}, called  # each instant once in the cluster
    resumed = [e for e in replicas[0].events("job.resumed") if e.get("by") == "replica"]
    assert resumed, "the resume on r1 did not reach r0"


def _instant(key: str) -> float:
    return int(key.rsplit(":", 1)[1]) / 1000


def test_a_burst_of_2000_survives_a_replica_killed_mid_burst(
    tmp_path: Path, emulator: RunningEmulator, pg_dsn: str
) -> None:
    count = 2000
    start_ms = (int(time.time()) + 12) * 1000
    docs = [f"name: b{i:04d}\n{JOB}schedule: {{start_at: {start_ms}}}\n" for i in range(count)]
    replicas = start_replicas(
        tmp_path, emulator, pg_dsn, "---\n".join(docs), env={"DUCTAPE_RUNNER_LEASE_S": "3"}
    )
    emulator.fault(delay_ms=100, count=1_000_000)  # calls in flight when the kill lands
    try:
        time.sleep(max(start_ms / 1000 - time.time(), 0))
        held = wait_for(lambda: _held_mid_burst(pg_dsn), timeout=10)
        victim = max(replicas, key=lambda r: held.get(r.tmp_path.name, 0))
        victim.kill()
        wait_for(lambda: len(calls_of(emulator)) >= count, timeout=30)
    finally:
        for r in replicas:
            r.stop()
    called = calls_of(emulator)
    assert len(called) == count
    twice = {key for key, n in called.items() if n > 1}
    survivors = [r for r in replicas if r is not victim]
    taken = {e["idempotency_key"] for r in survivors for e in r.events("run.taken_over")}
    # Only keys the killed replica held (and may have called) were called again.
    assert twice <= taken, sorted(twice - taken)[:10]
    [(succeeded, counted)] = pg_query(
        pg_dsn,
        "SELECT (SELECT count(*) FROM occurrences WHERE state = 'succeeded'), "
        "(SELECT sum(execution_count) FROM jobs)",
    )
    assert succeeded == counted == count


def test_a_forbid_job_never_overlaps_across_replicas(
    tmp_path: Path, emulator: RunningEmulator, pg_dsn: str
) -> None:
    start_ms = (int(time.time()) + 3) * 1000
    jobs = (
        "name: slow\nkind: quota\nproduct: p\nenv: dev\ntag: t\nconcurrency: forbid\n"
        f"schedule: {{every: 1s, start_at: {start_ms}}}\n"
    )
    emulator.fault(delay_ms=2500, count=1_000_000)  # each run outlasts two fire times
    replicas = start_replicas(tmp_path, emulator, pg_dsn, jobs)
    try:
        wait_for(lambda: len([e for r in replicas for e in r.events("run.finished")]) >= 3, 30)
        metrics = {r.tmp_path.name: control_request(r, "GET", "/metrics").text for r in replicas}
    finally:
        for r in replicas:
            r.stop()
    runs = sorted(
        (_started(e), _started(e) + e["duration_ms"] / 1000, r.tmp_path.name)
        for r in replicas
        for e in r.events("run.finished")
        if e["outcome"] == "succeeded"
    )
    for (_, end, who), (start, _, next_who) in itertools.pairwise(runs):
        assert start >= end - 0.05, (who, next_who, runs)  # 50 ms: log timestamps' slack
    skipped = [e for r in replicas for e in r.events("run.skipped")]
    assert any("on a replica" in e["reason"] for e in skipped), skipped
    # Counted by the replica that decided, under its name.
    deciders = {r.tmp_path.name for r in replicas if r.events("run.skipped")}
    for name in deciders:
        assert f'job="slow",outcome="skipped",replica="{name}"' in metrics[name]


def _started(event: dict[str, Any]) -> float:
    scheduled = datetime.fromisoformat(event["scheduled_at"]).timestamp()
    return scheduled + (event["lateness_ms"] or 0) / 1000


def test_a_replace_job_triggered_on_another_replica_halts_the_run_in_progress(
    tmp_path: Path, emulator: RunningEmulator, pg_dsn: str
) -> None:
    """`concurrency: replace` holds across replicas: the replica running the older
    occurrence is told to stop it as soon as a newer one is planned elsewhere."""
    jobs = (
        "name: latest\nkind: quota\nproduct: p\nenv: dev\ntag: t\nconcurrency: replace\n"
        "schedule: {cron: '0 0 1 1 *'}\n"
    )
    emulator.fault(delay_ms=15_000, count=1)  # the first call hangs
    replicas = start_replicas(tmp_path, emulator, pg_dsn, jobs)
    by_id = {r.tmp_path.name: r for r in replicas}
    running = "SELECT owner, scheduled_ms FROM occurrences WHERE state = 'running'"
    try:
        assert ctl(replicas[0], "trigger", "latest").returncode == 0
        wait_for(lambda: pg_query(pg_dsn, running), timeout=10)
        [(owner, first_ms)] = pg_query(pg_dsn, running)
        other = next(r for name, r in by_id.items() if name != owner)
        assert ctl(other, "trigger", "latest").returncode == 0
        replaced_at = time.time()
        wait_for(lambda: by_id[owner].events("run.replaced"), timeout=5)
        [halted] = by_id[owner].events("run.replaced")
        halted_after = datetime.fromisoformat(halted["timestamp"]).timestamp() - replaced_at
        wait_for(
            lambda: (
                len(pg_query(pg_dsn, "SELECT 1 FROM occurrences WHERE finished_ms IS NOT NULL"))
                == 2
            ),
            10,
        )
        states = pg_query(pg_dsn, "SELECT scheduled_ms, state, reason FROM occurrences ORDER BY 1")
    finally:
        for r in replicas:
            r.stop()
    assert halted_after < 1.5, halted_after  # told at once (NOTIFY), not at the next renewal
    assert states[0] == (
        first_ms,
        "cancelled",
        "replaced by a newer occurrence (concurrency replace)",
    )
    assert states[1][1] == "succeeded"


def test_the_leaders_death_hands_its_duties_over_within_its_lease(
    tmp_path: Path, emulator: RunningEmulator, pg_dsn: str
) -> None:
    jobs = f"name: yearly\n{JOB}schedule: {{cron: '0 0 1 1 *'}}\n"
    replicas = start_replicas(tmp_path, emulator, pg_dsn, jobs, env={"DUCTAPE_RUNNER_LEASE_S": "3"})
    try:
        [(leader,)] = pg_query(pg_dsn, "SELECT holder FROM leaders")
        by_id = {r.tmp_path.name: r for r in replicas}
        assert by_id[leader].events("leader.elected")
        by_id[leader].kill()
        [(lease_ends,)] = pg_query(pg_dsn, "SELECT extract(epoch FROM lease_until) FROM leaders")
        others = [r for name, r in by_id.items() if name != leader]
        wait_for(lambda: any(r.events("leader.elected") for r in others), timeout=8)
        [elected] = [e for r in others for e in r.events("leader.elected")]
        handed_late = datetime.fromisoformat(elected["timestamp"]).timestamp() - float(lease_ends)
        [(holder, term)] = pg_query(pg_dsn, "SELECT holder, term FROM leaders")
        wait_for(lambda: _cluster(others[0], pg_dsn)[leader]["state"] == "lost", timeout=3)
        cluster = _cluster(others[0], pg_dsn)  # what an operator sees, read from the database
    finally:
        for r in replicas:
            r.stop()
    assert holder != leader and term == 2
    assert {name: (r["state"], r["leader"]) for name, r in cluster.items()} == {
        name: ("lost", False) if name == leader else ("alive", name == holder) for name in by_id
    }
    # Taken when the dead leader's lease ran out (renewed at most 1 s before the kill):
    # the others look again 50 ms after the expiry they read; 1 s of slack for a busy CI.
    assert handed_late < 1.0, handed_late


def _cluster(replica: DaemonProcess, dsn: str) -> dict[str, dict[str, Any]]:
    """The replicas, as `status --state DSN --json` prints them."""
    proc = cli("status", "--state", dsn, "--json", env=replica.env)
    assert proc.returncode == 0, proc.stderr
    return {r["replica_id"]: r for r in json.loads(proc.stdout)["replicas"]}
