"""`status --state DSN` and `history --state DSN`: the cluster's truth, read from the database
the replicas share, with no daemon asked (issue 14, item 3)."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from runner.cli.shared_state import owned_dict, render_history, render_status, status_dict
from runner.store import JobRecord, Occurrence
from runner.store.postgres import MIGRATIONS, PostgresStore
from runner.store.postgres.readonly import Cluster, Owned, ReplicaRow
from runner.timing.clock import SystemClock
from tests import pg_helpers
from tests.daemon_helpers import cli
from tests.test_postgres_store import T0, FakeReplica, flush, occurrence, replica

# The fixtures, by name (a function argument shadowing an import would read as a mistake).
pg_database, pg_dsn = pg_helpers.pg_database, pg_helpers.pg_dsn

NEXT_MS = T0 + 3_600_000
SECRET_DSN = "postgresql://u:s3cret@127.0.0.1:1/x"  # nothing listens on port 1


async def cli_async(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI while a replica's tasks keep running on this loop."""
    return await asyncio.to_thread(cli, *args)


def job(name: str, **changes: Any) -> JobRecord:
    return replace(JobRecord(name, "def1", "sched1", first_seen_ms=T0, anchor_ms=T0), **changes)


def sql(dsn: str, statement: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(statement.encode())


@dataclass
class Shared:
    dsn: str
    finished: list[Occurrence]
    held: Occurrence


def succeeded(occ: Occurrence) -> Occurrence:
    occ.state, occ.attempts, occ.duration_ms = "succeeded", 1, 5
    occ.finished_ms = occ.scheduled_ms + 5
    return occ


@pytest.fixture
async def shared(pg_dsn: str) -> AsyncIterator[Shared]:
    """Replica `a` alive and holding one occurrence of `j`, `b` stopped cleanly, `c` lost
    (killed: its row not renewed for longer than its lease); job `p` paused."""
    a = await replica(pg_dsn, "a")
    for name in ("b", "c"):
        # Opened (its row written) but not started: no heartbeat still in flight when it
        # stops could write its row again after its stop or the UPDATE below.
        gone = PostgresStore(pg_dsn, SystemClock(), replica_id=name)
        gone.attach(FakeReplica())
        await gone.open({"j"})
        await gone.aclose()
    sql(
        pg_dsn,
        "UPDATE replicas SET stopped_at = NULL, seen_at = now() - interval '5 min' WHERE id = 'c'",
    )
    try:
        a.save_job(job("j", next_fire_ms=NEXT_MS))
        a.save_job(job("p", next_fire_ms=T0 + 60_000))
        await flush(a)
        a.set_paused("p", True)
        finished = [occurrence(T0 + i * 60_000) for i in range(3)]
        for occ in finished:
            a.plan(occ, job("j"))
            assert await a.claimed(occ)
            a.finish(succeeded(occ), job("j", next_fire_ms=NEXT_MS, last_finished_ms=T0))
        held = occurrence(T0 + 3 * 60_000)
        a.plan(held, job("j", next_fire_ms=NEXT_MS))
        assert await a.claimed(held)
        await flush(a)
        yield Shared(pg_dsn, finished, held)
    finally:
        await a.aclose()


async def test_status_lists_every_replica_with_its_state_and_where_each_job_runs(
    shared: Shared,
) -> None:
    proc = await cli_async("status", "--state", shared.dsn, "--json")
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout)
    assert status["state"] == pg_helpers.dsn_for(shared.dsn.rsplit("/", 1)[1])
    replicas = {r["replica_id"]: r for r in status["replicas"]}
    assert {name: r["state"] for name, r in replicas.items()} == {
        "a": "alive",
        "b": "stopped",
        "c": "lost",
    }
    assert replicas["a"]["pid"] > 0 and replicas["a"]["host"] and replicas["a"]["version"]
    assert [name for name, r in replicas.items() if r["leader"]] == ["a"]  # b resigned
    assert replicas["b"]["stopped_at"].endswith("Z") and replicas["a"]["stopped_at"] is None
    jobs = {j["job_id"]: j for j in status["jobs"]}
    assert jobs["j"]["running_on"] == ["a"] and jobs["p"]["running_on"] == []
    assert (jobs["j"]["paused"], jobs["p"]["paused"]) == (False, True)
    assert jobs["j"]["execution_count"] == 3 and jobs["j"]["last_outcome"] == "succeeded"
    assert status["summary"]["jobs"] == 2 and status["summary"]["paused"] == 1
    # The paused job's fire time comes first but starts nothing: the next run is j's.
    assert status["summary"]["next_run"] == {"job_id": "j", "at": "2027-01-15T09:00:00.000Z"}


async def test_status_of_one_job_shows_its_open_occurrences_and_their_owner(
    shared: Shared,
) -> None:
    proc = await cli_async("status", "j", "--state", shared.dsn, "--json")
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout)
    assert status["job_id"] == "j" and status["running_on"] == ["a"]
    [held] = status["open_occurrences"]
    assert (held["state"], held["owner"]) == ("planned", "a")
    assert held["idempotency_key"] == shared.held.idempotency_key


async def test_history_shows_each_occurrence_with_its_owner_newest_first(
    shared: Shared,
) -> None:
    proc = await cli_async("history", "j", "--state", shared.dsn, "--limit", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    history = json.loads(proc.stdout)
    newest_done = shared.finished[-1]
    assert [(o["state"], o["owner"]) for o in history] == [("planned", "a"), ("succeeded", "a")]
    assert history[1]["idempotency_key"] == newest_done.idempotency_key
    assert history[1]["duration_ms"] == 5 and history[1]["scheduled_at"].endswith("Z")


@pytest.mark.parametrize("command", ["status", "history"])
async def test_an_unknown_job_is_refused_with_exit_1(shared: Shared, command: str) -> None:
    proc = await cli_async(command, "nope", "--state", shared.dsn)
    assert proc.returncode == 1
    assert proc.stderr == "error: no job named 'nope'\n" and proc.stdout == ""


@pytest.mark.parametrize(
    "dsn",
    [SECRET_DSN, "postgresql://u:s3cret@[::1/x", "postgresql://u:s3%zzcret@127.0.0.1:1/x"],
    ids=["closed-port", "bad-host", "bad-escape"],
)
@pytest.mark.parametrize("command", [("status",), ("history", "j")])
def test_an_unreadable_database_exits_2_and_never_shows_the_password(
    dsn: str, command: tuple[str, ...]
) -> None:
    proc = cli(*command, "--state", dsn, "--json")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: cannot read the state database postgresql://u@")
    assert "s3" not in proc.stdout + proc.stderr and "cret" not in proc.stdout + proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize("command", [("next", "jobs.d/heartbeat.yaml"), ("plan",)])
def test_next_and_plan_never_show_the_password_of_a_dsn_libpq_cannot_parse(
    command: tuple[str, ...],
) -> None:
    # libpq's parse error quotes the whole URL; it used to escape as a traceback.
    proc = cli(*command, "--state", "postgresql://u:s3cret@[::1/x")
    assert proc.returncode == 2
    assert "state database unavailable: postgresql://u@[::1/x: not a valid DSN" in proc.stderr
    assert "s3cret" not in proc.stdout + proc.stderr


def test_a_database_no_replica_ever_used_gives_an_empty_status(pg_dsn: str) -> None:
    proc = cli("status", "--state", pg_dsn, "--json")
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout)
    assert (status["replicas"], status["jobs"], status["summary"]["jobs"]) == ([], [], 0)
    assert status["summary"]["next_run"] is None
    assert cli("history", "j", "--state", pg_dsn).returncode == 1


def test_a_schema_from_before_the_replicas_table_still_shows_the_jobs(pg_dsn: str) -> None:
    for migration in MIGRATIONS[:2]:  # version 2: no `replicas` yet
        sql(pg_dsn, migration)
    sql(
        pg_dsn,
        "INSERT INTO jobs (name, definition_hash, schedule_hash, first_seen_ms, anchor_ms, status) VALUES ('old', 'd', 's', 0, 0, 'scheduled')",
    )
    proc = cli("status", "--state", pg_dsn, "--json")
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout)
    assert status["replicas"] == [] and [j["job_id"] for j in status["jobs"]] == ["old"]


def test_a_sqlite_state_is_refused_with_where_to_ask_instead(tmp_path: Path) -> None:
    proc = cli("status", "--state", str(tmp_path / "state.sqlite3"))
    assert proc.returncode == 1
    assert proc.stderr == (
        "error: --state here takes a postgresql:// DSN; for a SQLite state ask the daemon"
        " (without --state)\n"
    )


def test_state_and_a_daemon_address_together_are_refused() -> None:
    proc = cli("status", "--state", SECRET_DSN, "--url", "http://127.0.0.1:1")
    assert proc.returncode == 2 and "give one or the other" in proc.stderr


# ---- the terminal tables -----------------------------------------------------------------

AT = datetime(2027, 1, 15, 8, 0, tzinfo=UTC)


def test_the_terminal_status_shows_replicas_a_summary_and_jobs_with_their_replicas() -> None:
    replicas = [
        ReplicaRow("a", "host-a", 11, "1.2.0", 2, AT, AT, 30.0, None, "alive", leader=True),
        ReplicaRow("b", "host-b", 12, "1.2.0", 2, AT, AT, 30.0, AT, "stopped"),
    ]
    held = Occurrence("evil\x1b[2Jjob", T0, "k", created_ms=T0)
    cluster = Cluster(
        replicas,
        {
            "evil\x1b[2Jjob": job("evil\x1b[2Jjob", next_fire_ms=NEXT_MS, status="running"),
            "p": job("p", paused=True, status="paused"),
            "gone": job("gone", removed_ms=T0),  # its file is gone: not listed, as the daemon
        },
        [Owned(held, "a")],
    )
    text = render_status(status_dict(cluster, "postgresql://runner@db:5432/runner"))
    assert text == EXPECTED_STATUS
    assert "\x1b" not in text  # the job name's ESC is shown, not obeyed


EXPECTED_STATUS = r"""state: postgresql://runner@db:5432/runner

REPLICA  HOST    PID  VERSION  JOBS  STARTED               LAST SEEN             STATE    LEADER
a        host-a  11   1.2.0    2     2027-01-15 08:00:00Z  2027-01-15 08:00:00Z  alive    yes
b        host-b  12   1.2.0    2     2027-01-15 08:00:00Z  2027-01-15 08:00:00Z  stopped  no

jobs: 2 (1 paused, 1 running), paused: 1
next run: evil\x1b[2Jjob at 2027-01-15 09:00:00Z

JOB             STATUS   PAUSED  NEXT RUN              LAST OUTCOME  LAST FINISHED  RUNS  RUNNING ON
evil\x1b[2Jjob  running  no      2027-01-15 09:00:00Z  -             -              0     a
p               paused   yes     -                     -             -              0     -"""


def test_the_terminal_history_adds_the_owner_before_the_detail() -> None:
    occ = Occurrence(
        "j", T0, "k", state="failed", attempts=2, last_error="HTTP 500", duration_ms=1500
    )
    unclaimed = Occurrence("j", T0 + 60_000, "k2")
    text = render_history([owned_dict(Owned(unclaimed, "")), owned_dict(Owned(occ, "a"))])
    assert text == EXPECTED_HISTORY  # unclaimed: no owner yet


EXPECTED_HISTORY = """\
SCHEDULED             TRIGGER   STATE    ATTEMPTS  DURATION  OWNER  DETAIL
2027-01-15 08:01:00Z  schedule  planned  0         -         -      -
2027-01-15 08:00:00Z  schedule  failed   2         1.500s    a      HTTP 500"""
