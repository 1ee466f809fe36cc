"""The PostgreSQL backend on its own: versioned migrations, one winner per claim, fencing,
lease takeover, shared counts and pause, and what a replica does when the database goes."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
import structlog.testing

from runner.store import JobRecord, Occurrence, SharedJob
from runner.store.postgres import MIGRATIONS, PostgresStore, StoreUnavailable, migrate
from runner.timing.clock import SystemClock
from tests import pg_helpers
from tests.pg_helpers import CuttableProxy, dsn_for

# The fixtures, by name (a function argument shadowing an import would read as a mistake).
pg_database, pg_dsn, pg_proxy = pg_helpers.pg_database, pg_helpers.pg_dsn, pg_helpers.pg_proxy

T0 = 1_800_000_000_000


@dataclass
class FakeReplica:
    """Records what the store tells the scheduler."""

    jobs: set[str] = field(default_factory=lambda: {"j"})
    adopted: list[Occurrence] = field(default_factory=list)
    lost: list[tuple[str, int]] = field(default_factory=list)
    shared_jobs: list[SharedJob] = field(default_factory=list)
    availability: list[bool] = field(default_factory=list)
    halts: list[tuple[str, int, str]] = field(default_factory=list)

    def adopt(self, occurrences: list[Occurrence], *, taken_over: bool = True) -> None:
        self.adopted.extend(occurrences)

    def lease_lost(self, job: str, scheduled_ms: int) -> None:
        self.lost.append((job, scheduled_ms))

    def shared(self, jobs: list[SharedJob]) -> None:
        self.shared_jobs.extend(jobs)

    def store_available(self, available: bool) -> None:
        self.availability.append(available)

    def halt(self, job: str, scheduled_ms: int, reason: str) -> None:
        self.halts.append((job, scheduled_ms, reason))

    def known_jobs(self) -> set[str]:
        return self.jobs


def record(name: str = "j", anchor_ms: int = T0) -> JobRecord:
    return JobRecord(name, "def1", "sched1", first_seen_ms=anchor_ms, anchor_ms=anchor_ms)


def occurrence(ms: int, job: str = "j", trigger: str = "schedule") -> Occurrence:
    return Occurrence(job, ms, f"ductape-runner:{job}:{ms}", trigger=trigger, created_ms=ms)


async def replica(dsn: str, name: str, lease_s: float = 30.0, **kw: Any) -> PostgresStore:
    store = PostgresStore(dsn, SystemClock(), replica_id=name, lease_s=lease_s, **kw)
    store.attach(FakeReplica())
    await store.open({"j"})
    store.start()
    return store


async def flush(*stores: PostgresStore) -> None:
    await asyncio.wait_for(asyncio.gather(*(s._queue.join() for s in stores)), 10)


def rows(dsn: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, params).fetchall()


async def test_migrations_are_versioned_and_applied_once(pg_dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        assert await migrate(conn) == len(MIGRATIONS)
        assert await migrate(conn) == len(MIGRATIONS)  # nothing left to apply
    assert rows(pg_dsn, "SELECT version FROM runner_schema") == [(len(MIGRATIONS),)]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("UPDATE runner_schema SET version = 99")
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        with pytest.raises(RuntimeError, match="schema version 99, newer than this runner"):
            await migrate(conn)


async def test_each_occurrence_is_claimed_by_exactly_one_of_several_replicas(pg_dsn: str) -> None:
    stores = [await replica(pg_dsn, f"r{i}") for i in range(4)]
    try:
        for store in stores:
            store.save_job(record())
        await flush(*stores)
        occs = {s.replica_id: [occurrence(T0 + i) for i in range(50)] for s in stores}
        for store in stores:  # every replica plans every occurrence
            for occ in occs[store.replica_id]:
                store.plan(occ, record())
        verdicts = {
            s.replica_id: await asyncio.gather(*(s.claimed(o) for o in occs[s.replica_id]))
            for s in stores
        }
        owners = rows(pg_dsn, "SELECT owner, count(*) FROM occurrences GROUP BY owner")
        tokens = rows(pg_dsn, "SELECT count(DISTINCT fencing) FROM occurrences")
    finally:
        for store in stores:
            await store.aclose()
    for i in range(50):
        assert sum(verdicts[s.replica_id][i] for s in stores) == 1, i
    assert sum(n for _, n in owners) == 50 and "" not in dict(owners)
    assert tokens == [(50,)]
    # Stopped (SIGTERM) before any attempt: handed back unowned, for any replica to claim.
    assert rows(pg_dsn, "SELECT DISTINCT owner, fencing FROM occurrences") == [("", 0)]


async def test_an_expired_lease_is_taken_over_with_a_new_token_and_the_same_key(
    pg_dsn: str,
) -> None:
    a = await replica(pg_dsn, "a")
    b = await replica(pg_dsn, "b", lease_s=3.0)
    replica_b: Any = b.replica
    replica_b.jobs = set()  # b has no room for it (yet): a claims what a planned
    try:
        a.save_job(record())
        occ = occurrence(T0)
        a.plan(occ, record())
        assert await a.claimed(occ)
        replica_b.jobs = {"j"}
        [(old_token,)] = rows(pg_dsn, "SELECT fencing FROM occurrences")
        # a dies (no renewals): its lease runs out.
        a._tasks[1].cancel()
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("UPDATE occurrences SET lease_until = now() - interval '1 s'")
        await asyncio.wait_for(_until(lambda: replica_b.adopted), 5)
        [taken] = replica_b.adopted
        assert taken.idempotency_key == occ.idempotency_key
        [(owner, token)] = rows(pg_dsn, "SELECT owner, fencing FROM occurrences")
        assert owner == "b" and token > old_token
        # a comes back and writes its result: fenced out, the row is b's.
        occ.state, occ.attempts, occ.finished_ms = "succeeded", 1, T0 + 5
        a.finish(occ, record())
        await flush(a)
        assert rows(pg_dsn, "SELECT state, owner FROM occurrences") == [("planned", "b")]
        assert rows(pg_dsn, "SELECT execution_count FROM jobs") == [(0,)]
        # b's own result lands.
        taken.state, taken.attempts, taken.finished_ms = "succeeded", 1, T0 + 6
        b.finish(taken, record())
        await flush(b)
        assert rows(pg_dsn, "SELECT state, owner FROM occurrences") == [("succeeded", "b")]
    finally:
        await a.aclose()
        await b.aclose()


async def test_counts_add_up_across_replicas_and_limit_and_pause_are_shared(
    pg_dsn: str,
) -> None:
    a, b = await replica(pg_dsn, "a"), await replica(pg_dsn, "b")
    try:
        a.save_job(record())
        await flush(a)
        for store, ms in ((a, T0), (b, T0 + 1)):
            occ = occurrence(ms)
            store.plan(occ, record(), limit=3)
            assert await store.claimed(occ)
            occ.state, occ.attempts, occ.finished_ms = "succeeded", 1, ms + 1
            store.finish(occ, record())
        await flush(a, b)
        assert rows(pg_dsn, "SELECT execution_count FROM jobs") == [(2,)]
        third, fourth = occurrence(T0 + 2), occurrence(T0 + 3)
        a.plan(third, record(), limit=3)
        assert await a.claimed(third)
        b.plan(fourth, record(), limit=3)
        assert not await b.claimed(fourth)  # 2 ran + 1 open = limit
        b.set_paused("j", True)
        await flush(b)
        fifth = occurrence(T0 + 4)
        a.plan(fifth, record())
        assert not await a.claimed(fifth)  # paused on b: a claims nothing
        manual = occurrence(T0 + 5, trigger="manual")
        a.plan(manual, record())
        assert await a.claimed(manual)  # a manual run is the operator's call
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_second_sighting_with_another_phase_loses_and_adopts_the_first(
    pg_dsn: str,
) -> None:
    a, b = await replica(pg_dsn, "a"), await replica(pg_dsn, "b")
    try:
        a.save_job(record(anchor_ms=T0))
        await flush(a)
        b.save_job(record(anchor_ms=T0 + 700))  # b saw the new file 0.7 s later
        late = occurrence(T0 + 700)
        b.plan(late, record(anchor_ms=T0 + 700))
        assert not await b.claimed(late)
        await flush(b)  # its job row is written after the claim, in the same tick
        replica_b: Any = b.replica
        assert [s.anchor_ms for s in replica_b.shared_jobs][:1] == [T0]
    finally:
        await a.aclose()
        await b.aclose()


async def test_cut_off_replica_stops_claiming_drops_leases_and_recovers(
    pg_database: str, pg_proxy: CuttableProxy
) -> None:
    store = await replica(dsn_for(pg_database, pg_proxy.port), "cut", lease_s=3.0)
    fake: Any = store.replica
    try:
        store.save_job(record())
        occ = occurrence(T0)
        store.plan(occ, record())
        assert await store.claimed(occ)
        assert store.may_start(occ) and store.writable()
        pg_proxy.cut()
        await asyncio.wait_for(_until(lambda: not store.writable()), 3.0)
        assert store.status()[0] is False and "unreachable" in store.status()[1]
        # Before the database's lease (3 s) can run out, the replica gives it up.
        await asyncio.wait_for(_until(lambda: fake.lost), 3.0)
        assert not store.may_start(occ)
        pg_proxy.restore()
        await asyncio.wait_for(_until(lambda: store.writable()), 5.0)
        assert fake.availability == [False, True]
    finally:
        pg_proxy.restore()
        await store.aclose()


async def _until(predicate: Any) -> None:
    for _ in itertools.count():
        if predicate():
            return
        await asyncio.sleep(0.05)


async def test_a_nul_in_an_error_message_is_stored_and_does_not_wedge_the_writer(
    pg_dsn: str,
) -> None:
    # Issue 18, bug 3: psycopg refused the NUL (DataError), the writer took it for a lost
    # connection and retried the same write forever; the replica claimed nothing more.
    store = await replica(pg_dsn, "nul")
    try:
        store.save_job(record())
        occ = occurrence(T0)
        store.plan(occ, record())
        assert await store.claimed(occ)
        occ.state, occ.last_error, occ.finished_ms = "failed", "bad\x00byte", T0 + 5
        store.finish(occ, record())
        nxt = occurrence(T0 + 60_000)
        store.plan(nxt, record())
        assert await asyncio.wait_for(store.claimed(nxt), 5)  # the writer moved on
        await flush(store)
        assert store.writable()
        [(error,)] = rows(pg_dsn, "SELECT last_error FROM occurrences WHERE scheduled_ms = %s", T0)
        assert error == "bad\ufffdbyte"
    finally:
        await store.aclose()


async def test_a_write_the_database_refuses_is_dropped_not_retried_forever(pg_dsn: str) -> None:
    from runner.store.postgres.connection import _Write

    store = await replica(pg_dsn, "refused")
    try:
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        store._queue.put_nowait(_Write(lambda conn: conn.execute("SELECT 1/0"), done))
        assert await asyncio.wait_for(done, 5) is False
        occ = occurrence(T0)
        store.save_job(record())
        store.plan(occ, record())
        assert await asyncio.wait_for(store.claimed(occ), 5)
        assert store.writable()
    finally:
        await store.aclose()


async def test_reading_history_never_blocks_the_event_loop(
    pg_database: str, pg_proxy: CuttableProxy
) -> None:
    # Issue 18, bug 4: `history` read with a blocking call; on a dropped network the loop
    # made no tick for 40 s. The read is awaited now, bounded by the client-side timeout.
    store = await replica(dsn_for(pg_database, pg_proxy.port), "reader", timeout_s=1.0)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.05)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        store.save_job(record())
        await flush(store)
        assert await store.read_history("j") == []
        pg_proxy.cut()
        started, before = asyncio.get_running_loop().time(), ticks
        with pytest.raises(StoreUnavailable):
            await store.read_history("j")
        elapsed = asyncio.get_running_loop().time() - started
        assert elapsed < 3.0
        assert ticks - before >= int(elapsed / 0.05) // 2  # the loop kept ticking meanwhile
    finally:
        task.cancel()
        pg_proxy.restore()
        await store.aclose()


async def test_manual_runs_are_outside_limit_in_the_shared_count(pg_dsn: str) -> None:
    store = await replica(pg_dsn, "manual")
    try:
        store.save_job(record())
        manual = occurrence(T0 + 1, trigger="manual")
        store.plan(manual, record())
        assert await store.claimed(manual)
        manual.state, manual.finished_ms = "succeeded", T0 + 2
        store.finish(manual, record())
        await flush(store)
        scheduled = occurrence(T0 + 60_000)
        store.plan(scheduled, record(), limit=1)  # the manual run took none of the limit
        assert await store.claimed(scheduled)
        assert rows(pg_dsn, "SELECT execution_count FROM jobs WHERE name = 'j'") == [(0,)]
    finally:
        await store.aclose()


async def test_prune_deletes_finished_occurrences_and_says_how_many(pg_dsn: str) -> None:
    store = await replica(pg_dsn, "pruner")
    try:
        store.save_job(record())
        done, still_open = occurrence(T0), occurrence(T0 + 2)
        for occ in (done, still_open):
            store.plan(occ, record())
            assert await store.claimed(occ)
        done.state, done.attempts, done.finished_ms = "succeeded", 1, T0 + 1
        store.finish(done, record())
        await flush(store)
        with structlog.testing.capture_logs() as logs:
            store.prune(T0 + 10)
            await flush(store)
        assert [e["occurrences"] for e in logs if e["event"] == "history.pruned"] == [1]
        assert rows(pg_dsn, "SELECT scheduled_ms FROM occurrences") == [(T0 + 2,)]
    finally:
        await store.aclose()


async def test_next_and_plan_read_the_shared_state_given_a_dsn(pg_dsn: str, tmp_path: Any) -> None:
    anchor = T0 + 17 * 60_000  # first seen at 08:17: an hourly `every` fires at :17
    store = await replica(pg_dsn, "a")
    try:
        store.save_job(JobRecord("hourly", "d", "s", anchor, anchor, path="jobs.d/h.yaml"))
        await flush(store)
    finally:
        await store.aclose()
    jobs = tmp_path / "jobs.d"
    jobs.mkdir()
    (jobs / "h.yaml").write_text("name: hourly\nkind: quota\ntag: t\nschedule: {every: 1h}\n")
    (jobs / "new.yaml").write_text("name: fresh\nkind: quota\ntag: t\nschedule: {every: 1h}\n")
    folder = ("--jobs-dir", str(jobs), "--state", pg_dsn)
    after = ("--after", "2027-01-15T09:00:00Z")
    nxt = await _cli("next", *folder, "hourly", "-n", "2", *after, "--json")
    assert json.loads(nxt.stdout) == ["2027-01-15T09:17:00+00:00", "2027-01-15T10:17:00+00:00"]
    plan = await _cli("plan", *folder)
    # The replicas hold `hourly` (another definition): an update, not an addition.
    assert "1 to add, 1 to update, 0 to remove" in plan.stdout, plan.stdout
    assert "~ update  hourly" in plan.stdout and "+ add     fresh" in plan.stdout


async def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "runner", *args]
    proc = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True)
    assert proc.returncode in (0, 1), proc.stderr
    return proc


async def test_a_replace_plan_halts_the_older_run_on_its_owner_and_cancels_unclaimed_ones(
    pg_dsn: str,
) -> None:
    """`concurrency: replace` across replicas: b plans a newer occurrence; a, which runs the
    older one, is told at once (NOTIFY) to halt it; one nobody claimed yet is cancelled."""
    a = await replica(pg_dsn, "a")
    b = await replica(pg_dsn, "b")
    replica_a: Any = a.replica
    try:
        a.save_job(record())
        first = occurrence(T0)
        a.plan(first, record())
        assert await a.claimed(first)
        b.plan(occurrence(T0 + 500), record())  # a plain plan halts nothing
        await flush(b)
        assert rows(pg_dsn, "SELECT halt FROM occurrences WHERE scheduled_ms = %s", T0) == [(None,)]
        with psycopg.connect(pg_dsn, autocommit=True) as conn:  # planned, nobody claimed it
            conn.execute(
                "INSERT INTO occurrences (job, scheduled_ms, idempotency_key, state, trigger, "
                "created_ms, owner, fencing, planner, lease_until) VALUES "
                "('j', %s, 'k', 'planned', 'schedule', %s, '', 0, 'gone', now() + '1 h')",
                (T0 + 1000, T0 + 1000),
            )
        newest = occurrence(T0 + 2000)
        b.plan(newest, record(), replace=True)
        assert await b.claimed(newest)
        await asyncio.wait_for(_until(lambda: replica_a.halts), 3)  # told, not renewed
        states = rows(pg_dsn, "SELECT scheduled_ms, state, owner, halt FROM occurrences ORDER BY 1")
    finally:
        await a.aclose()
        await b.aclose()
    assert replica_a.halts == [("j", T0, "replaced")]
    assert states[0] == (T0, "planned", "a", "replaced")  # a records it cancelled itself
    assert states[1] == (T0 + 500, "planned", "b", "replaced")  # b's own: b halts it itself
    # The one nobody claimed is cancelled at once: nobody runs what a newer one replaced.
    assert states[2][:3] == (T0 + 1000, "cancelled", "b")
    assert states[3] == (T0 + 2000, "planned", "b", None)


async def test_replicas_say_they_live_and_a_clean_stop_says_so(pg_dsn: str) -> None:
    a = await replica(pg_dsn, "a")
    b = await replica(pg_dsn, "b")
    try:
        live = rows(pg_dsn, "SELECT id, stopped_at IS NULL, jobs FROM replicas ORDER BY id")
    finally:
        await a.aclose()
    stopped = rows(pg_dsn, "SELECT id, stopped_at IS NULL FROM replicas ORDER BY id")
    await b.aclose()
    assert live == [("a", True, 1), ("b", True, 1)]
    assert stopped == [("a", False), ("b", True)]


async def test_one_leader_at_a_time_and_its_death_hands_the_chores_over_within_its_lease(
    pg_dsn: str,
) -> None:
    stores = [await replica(pg_dsn, name, lease_s=3.0) for name in ("a", "b", "c")]
    a, b, c = stores
    try:
        assert a.leading()  # first to start
        await asyncio.sleep(1.5)  # b and c looked again meanwhile
        assert not b.leading() and not c.leading()
        assert b.prune(T0) == 0 and b._queue.empty()  # not the leader: no prune queued
        [(renewed_until,)] = rows(pg_dsn, "SELECT extract(epoch FROM lease_until) FROM leaders")
        a._tasks[1].cancel()  # a's keeper stops: no more renewals, as if a were dead
        await asyncio.wait_for(_until(lambda: b.leading() or c.leading()), 6)
        [(holder, term, since_expiry)] = rows(
            pg_dsn,
            "SELECT holder, term, extract(epoch FROM now()) - %s FROM leaders",
            renewed_until,
        )
        both = b.leading() and c.leading()
    finally:
        for store in stores:
            await store.aclose()
    assert holder in ("b", "c") and term == 2 and not both
    assert float(since_expiry) < 0.5  # taken within half a second of a's lease running out


async def test_a_leader_stopped_cleanly_hands_over_at_once(pg_dsn: str) -> None:
    a = await replica(pg_dsn, "a", lease_s=30.0)
    b = await replica(pg_dsn, "b", lease_s=30.0)
    try:
        assert a.leading() and not b.leading()
        await a.aclose()  # resigns and says so: b need not wait 30 s
        await asyncio.wait_for(_until(b.leading), 2)
    finally:
        await b.aclose()
    assert rows(pg_dsn, "SELECT holder, term FROM leaders") == [("b", 2)]


async def test_a_halted_occurrence_of_a_dead_replica_is_cancelled_not_run_again(
    pg_dsn: str,
) -> None:
    a = await replica(pg_dsn, "a")
    b = await replica(pg_dsn, "b", lease_s=3.0)
    replica_b: Any = b.replica
    try:
        first = occurrence(T0)
        a.plan(first, record())
        assert await a.claimed(first)
        a._tasks[1].cancel()  # a dies before it hears of the halt: no renewal, no news
        a._tasks[2].cancel()
        newest = occurrence(T0 + 1000)
        b.plan(newest, record(), replace=True)
        assert await b.claimed(newest)
        with psycopg.connect(pg_dsn, autocommit=True) as conn:  # a's lease runs out
            conn.execute(
                "UPDATE occurrences SET lease_until = now() - interval '1 s' WHERE owner = 'a'"
            )
        await asyncio.wait_for(
            _until(
                lambda: (
                    rows(pg_dsn, "SELECT state FROM occurrences WHERE scheduled_ms = %s", T0)
                    == [("cancelled",)]
                )
            ),
            5,
        )
    finally:
        await a.aclose()
        await b.aclose()
    assert replica_b.adopted == []  # b did not run it again
    [(owner, reason)] = rows(
        pg_dsn, "SELECT owner, reason FROM occurrences WHERE scheduled_ms = %s", T0
    )
    assert owner == "b" and "replaced" in reason


async def test_a_held_attempt_update_is_written_soon_even_when_nothing_follows(
    pg_dsn: str,
) -> None:
    store = await replica(pg_dsn, "a")
    try:
        occ = occurrence(T0)
        store.plan(occ, record())
        assert await store.claimed(occ)
        occ.state, occ.attempts, occ.started_ms = "running", 1, T0 + 1
        store.update_occurrence(occ)  # held a tick for its outcome, which does not come
        attempt = "SELECT state, attempts FROM occurrences"
        await asyncio.wait_for(_until(lambda: rows(pg_dsn, attempt) == [("running", 1)]), 2)
    finally:
        await store.aclose()


async def test_a_clean_stop_writes_held_attempt_updates_before_handing_back(
    pg_dsn: str,
) -> None:
    """An attempted occurrence must not go back as never attempted: any replica would
    run it at once instead of taking it over after its lease."""
    store = await replica(pg_dsn, "a")
    occ = occurrence(T0)
    store.plan(occ, record())
    assert await store.claimed(occ)
    occ.state, occ.attempts, occ.started_ms = "running", 1, T0 + 1
    store.update_occurrence(occ)
    await store.aclose()  # at once: the update is still held
    assert rows(pg_dsn, "SELECT state, attempts, owner FROM occurrences") == [("running", 1, "a")]
