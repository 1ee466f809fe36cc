"""The daemon's group commit: writes that can wait share a commit made a window later;
a planned occurrence commits in the pass it was planned in, taking them along.

A second connection reads the file, as a crash's restart would: what it sees is what a
SIGKILL at that moment keeps.
"""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import replace
from pathlib import Path

from runner.store import JobRecord, Occurrence
from runner.store.sqlite import SqliteStore

AT = 1_800_000_000_000


def _on_disk(path: Path) -> dict[tuple[str, int], str]:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT job, scheduled_ms, state FROM occurrences").fetchall()
    return {(job, ms): state for job, ms, state in rows}


async def _passes(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def _planned(store: SqliteStore, name: str, at_ms: int) -> tuple[Occurrence, JobRecord]:
    record = JobRecord(name, "h" * 64, "s" * 64, 1)
    occurrence = Occurrence(name, at_ms, f"key-{name}-{at_ms}", created_ms=at_ms)
    assert store.plan(occurrence, record)
    return occurrence, record


def test_an_attempt_and_its_outcome_wait_for_the_window_and_share_one_commit(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.sqlite3"
    store = SqliteStore(path, commit_window_s=0.2)
    statements: list[str] = []

    async def scenario() -> None:
        occ, record = _planned(store, "a", AT)
        await asyncio.sleep(0)
        assert _on_disk(path) == {("a", AT): "planned"}  # committed in its own pass
        store.db.set_trace_callback(statements.append)
        running = replace(occ, state="running", attempts=1, started_ms=AT)
        store.update_occurrence(running)
        await _passes(50)  # a dozen idle passes used to be enough for a commit
        assert _on_disk(path) == {("a", AT): "planned"}
        done = replace(running, state="succeeded", finished_ms=AT + 5)
        record.execution_count = 1
        store.finish(done, record)
        written = store.written()
        assert written is not None
        await written  # the window's end
        assert _on_disk(path) == {("a", AT): "succeeded"}

    asyncio.run(scenario())
    store.close()
    writes = [s.split()[0] for s in statements if not s.startswith("SELECT")]
    # One transaction; the attempt's running state was replaced by its outcome before
    # the commit, so it was never written on its own.
    assert writes == ["BEGIN", "UPDATE", "UPDATE", "COMMIT"]


def test_a_plan_commits_in_its_own_pass_and_takes_the_held_outcomes_along(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.sqlite3"
    store = SqliteStore(path, commit_window_s=3600)  # only a plan can commit here

    async def scenario() -> None:
        first, record = _planned(store, "a", AT)
        await asyncio.sleep(0)
        store.finish(replace(first, state="succeeded", attempts=1, finished_ms=AT + 5), record)
        written = store.written()
        assert written is not None
        await _passes(20)
        assert _on_disk(path) == {("a", AT): "planned"}  # the outcome waits
        assert not written.done()  # and its run keeps its concurrency slot meanwhile
        _planned(store, "b", AT + 1000)
        await asyncio.sleep(0)
        assert _on_disk(path) == {("a", AT): "succeeded", ("b", AT + 1000): "planned"}
        assert written.done()

    asyncio.run(scenario())
    store.close()


def test_the_store_reads_its_own_held_attempts(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.sqlite3", commit_window_s=3600)

    async def scenario() -> None:
        occ, _ = _planned(store, "a", AT)
        await asyncio.sleep(0)
        store.update_occurrence(replace(occ, state="running", attempts=1, started_ms=AT))
        assert [o.state for o in store.history("a")] == ["running"]
        assert store.get_occurrence("a", AT).state == "running"  # type: ignore[union-attr]
        assert [o.state for o in store.open_occurrences()] == ["running"]

    asyncio.run(scenario())
    store.close()


def _fill_then_fail(store: SqliteStore) -> None:
    """The file may not grow (as on a full disk): a large write fails and rolls the
    open transaction back, outcomes held in it included."""
    pages = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count = {pages}")
    big = Occurrence("big", AT + 500, "key-big", reason="x" * 200_000, created_ms=AT)
    store.plan(big, JobRecord("big", "h" * 64, "s" * 64, 1))
    assert store.failure is not None and "full" in store.failure


def _room_again(store: SqliteStore) -> None:
    store.db.execute("PRAGMA max_page_count = 1073741823")


def test_an_outcome_whose_transaction_rolled_back_is_written_by_the_next_commit(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.sqlite3"
    store = SqliteStore(path, commit_window_s=3600)

    async def scenario() -> None:
        occ, record = _planned(store, "a", AT)
        await asyncio.sleep(0)
        record.execution_count = 1
        store.finish(replace(occ, state="succeeded", attempts=1, finished_ms=AT + 5), record)
        _fill_then_fail(store)
        await asyncio.sleep(0)
        assert _on_disk(path) == {("a", AT): "planned"}  # the outcome went with the rollback
        _room_again(store)
        _planned(store, "c", AT + 2000)
        await asyncio.sleep(0)
        assert _on_disk(path) == {("a", AT): "succeeded", ("c", AT + 2000): "planned"}
        with sqlite3.connect(path) as db:
            count = db.execute("SELECT execution_count FROM jobs WHERE name = 'a'").fetchone()
        assert count == (1,)  # the job's counters too

    asyncio.run(scenario())
    store.close()


def test_outcomes_lost_to_a_rollback_are_written_at_close(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    store = SqliteStore(path, commit_window_s=3600)

    async def scenario() -> None:
        occ, record = _planned(store, "a", AT)
        await asyncio.sleep(0)
        store.finish(replace(occ, state="failed", attempts=1, finished_ms=AT + 5), record)
        _fill_then_fail(store)
        _room_again(store)

    asyncio.run(scenario())
    store.close()
    assert _on_disk(path) == {("a", AT): "failed"}
