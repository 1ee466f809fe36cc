"""Replica processes sharing one PostgreSQL database, one emulator, one (synced) job folder.

Each replica has its own folder copy (as GitOps on several hosts), control socket and
log; they share the state database. Lease 3 s so that takeovers happen within the test.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests import pg_helpers
from tests.daemon_helpers import DaemonProcess, wait_for
from tests.emulator_fixture import RunningEmulator
from tests.pg_helpers import CuttableProxy, dsn_for

# The fixtures, by name (a function argument shadowing an import would read as a mistake).
pg_database, pg_dsn, pg_proxy = pg_helpers.pg_database, pg_helpers.pg_dsn, pg_helpers.pg_proxy

LEASE_S = 3.0
pytestmark = pytest.mark.slow


def job_files(count: int, every_s: int, start_ms: int, per_file: int = 50) -> dict[str, str]:
    """`count` quota jobs every `every_s` from `start_ms` (a fixed phase shared by all)."""
    files = {}
    for first in range(0, count, per_file):
        docs = [
            f"name: job-{i:03d}\nkind: quota\nproduct: p\nenv: dev\ntag: t\n"
            f"schedule: {{every: {every_s}s, start_at: {start_ms}}}\n"
            "catchup: {policy: all}\nconcurrency: allow\nretries: 5\nretry: {initial: 200ms}\n"
            for i in range(first, min(first + per_file, count))
        ]
        files[f"batch-{first:03d}.yaml"] = "---\n".join(docs)
    return files


def replica(
    tmp_path: Path, emulator: RunningEmulator, dsn: str, name: str, files: dict[str, str]
) -> DaemonProcess:
    home = tmp_path / name
    home.mkdir()
    env = {
        "DUCTAPE_RUNNER_STATE": dsn,
        "DUCTAPE_RUNNER_REPLICA_ID": name,
        "DUCTAPE_RUNNER_LEASE_S": str(LEASE_S),
        "DUCTAPE_RUNNER_MAX_CONCURRENT_RUNS": "200",
    }
    process = DaemonProcess(home, emulator, env=env)
    for file, text in files.items():
        process.write_job(file, text)
    return process


def keys_called(emulator: RunningEmulator) -> Counter[str]:
    return Counter(c["idempotency_key"] for c in emulator.calls())


def expected_keys(count: int, every_s: int, start_ms: int, until_ms: int) -> set[str]:
    instants = range(start_ms, until_ms + 1, every_s * 1000)
    return {f"ductape-runner:job-{i:03d}:{ms}" for i in range(count) for ms in instants}


def taken_over(replicas: list[DaemonProcess]) -> set[str]:
    return {e["idempotency_key"] for r in replicas for e in r.events("run.taken_over")}


def busiest(alive: list[DaemonProcess], dsn: str) -> DaemonProcess:
    """The live replica holding the most open occurrences (taken out of `alive`)."""
    held = dict(
        query(
            dsn,
            "SELECT owner, count(*) FROM occurrences WHERE state IN ('planned', 'running') GROUP BY owner",
        )
    )
    victim = max(alive, key=lambda r: held.get(r.tmp_path.name, 0))
    alive.remove(victim)
    return victim


def query(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql).fetchall()


def test_three_replicas_run_each_occurrence_once_through_two_sigkills(
    tmp_path: Path, emulator: RunningEmulator, pg_dsn: str
) -> None:
    jobs, every_s = 500, 10
    start_ms = (int(time.time()) + 8) * 1000
    files = job_files(jobs, every_s, start_ms)
    replicas = [replica(tmp_path, emulator, pg_dsn, f"r{i}", files) for i in range(3)]
    # Calls take 200 ms: a SIGKILL lands while attempts are in flight.
    emulator.fault(delay_ms=200, count=1_000_000)
    try:
        for r in replicas:
            r.start()
        alive = list(replicas)
        _sleep_until(start_ms + 10_300)  # mid-way through the second occurrence of each job
        busiest(alive, pg_dsn).kill()  # the replica holding the most open occurrences
        _sleep_until(start_ms + 20_300)  # and through the third
        busiest(alive, pg_dsn).kill()
        until_ms = start_ms + 20_000
        want = expected_keys(jobs, every_s, start_ms, until_ms)
        wait_for(lambda: want <= set(keys_called(emulator)), timeout=25)
    finally:
        for r in replicas:
            r.stop()
    called = keys_called(emulator)
    assert want <= set(called), sorted(want - set(called))[:10]
    twice = {key for key, n in called.items() if n > 1}
    # A key reaches Ductape twice only when a lease was taken over (the first holder
    # died mid-call): never because two live replicas both claimed it.
    assert twice <= taken_over(replicas), sorted(twice - taken_over(replicas))[:10]
    assert taken_over(replicas), "no lease was taken over: the kills hit no open occurrence"
    # Every planned occurrence of the window finished once, and the shared count adds up.
    open_or_lost = query(
        pg_dsn,
        f"SELECT count(*) FROM occurrences WHERE scheduled_ms <= {until_ms} "
        "AND state <> 'succeeded'",
    )
    assert open_or_lost == [(0,)]
    [(ran, counted)] = query(
        pg_dsn,
        "SELECT (SELECT count(*) FROM occurrences WHERE state = 'succeeded'), "
        "(SELECT sum(execution_count) FROM jobs)",
    )
    assert ran == counted


def test_a_replica_cut_off_from_the_database_stops_within_its_lease_and_resumes(
    tmp_path: Path, emulator: RunningEmulator, pg_database: str, pg_proxy: CuttableProxy
) -> None:
    jobs, every_s = 20, 1
    start_ms = (int(time.time()) + 5) * 1000
    files = job_files(jobs, every_s, start_ms)
    direct = replica(tmp_path, emulator, dsn_for(pg_database), "direct", files)
    cut = replica(tmp_path, emulator, dsn_for(pg_database, pg_proxy.port), "cut", files)
    try:
        direct.start()
        cut.start()
        wait_for(lambda: len(cut.events("run.finished")) >= 5, timeout=15)
        pg_proxy.cut()
        cut_at = time.time()
        [down] = wait_for(lambda: cut.events("store.unavailable"), timeout=LEASE_S)
        assert _probe(cut, "/healthz").status_code == 503
        assert "unreachable" in _probe(cut, "/healthz").json()["detail"]
        assert _probe(cut, "/status").json()["store"]["ok"] is False
        time.sleep(LEASE_S + 1.5)
        started_after = [e for e in cut.events("run.finished") if _started(e) > cut_at + LEASE_S]
        assert started_after == []  # nothing started once its lease could have run out
        pg_proxy.restore()
        wait_for(lambda: cut.events("store.recovered"), timeout=10)
        restored_at = time.time()
        wait_for(
            lambda: any(_started(e) > restored_at for e in cut.events("run.finished")),
            timeout=15,
        )
        assert _probe(cut, "/healthz").status_code == 200
        until_ms = int(restored_at * 1000)
        want = expected_keys(jobs, every_s, start_ms, until_ms)
        wait_for(lambda: want <= set(keys_called(emulator)), timeout=10)
    finally:
        pg_proxy.restore()
        cut.stop()
        direct.stop()
    assert down["replica"] == "cut"
    called = keys_called(emulator)
    twice = {key for key, n in called.items() if n > 1}
    assert twice <= taken_over([direct, cut])


def _started(event: dict[str, Any]) -> float:
    scheduled = datetime.fromisoformat(event["scheduled_at"]).timestamp()
    return scheduled + (event["lateness_ms"] or 0) / 1000


def _probe(d: DaemonProcess, path: str) -> httpx.Response:
    transport = httpx.HTTPTransport(uds=str(d.tmp_path / "control.sock"))
    with httpx.Client(transport=transport, base_url="http://runner", timeout=5) as client:
        return client.get(path)


def _sleep_until(ms: int) -> None:
    time.sleep(max(ms / 1000 - time.time(), 0))
