"""The daemon's SQLite checkpoints run on a thread of their own, never in a commit."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from runner.store import JobRecord, Occurrence
from runner.store.sqlite import SqliteStore


def _wal_pages(path: Path) -> int:
    wal = Path(f"{path}-wal")
    return wal.stat().st_size // 4096 if wal.exists() else 0


def _write(store: SqliteStore, jobs: int, at_ms: int = 1_800_000_000_000) -> None:
    """Plans in a running loop, one commit a pass: many WAL frames, as a daemon makes."""

    async def plans() -> None:
        for i in range(jobs):
            record = JobRecord(f"job-{i:05d}", "h" * 64, "s" * 64, 1)
            store.plan(Occurrence(record.name, at_ms, f"key-{i}"), record)
            await asyncio.sleep(0)
        await asyncio.sleep(0)

    asyncio.run(plans())


def test_commits_leave_the_wal_to_the_checkpoint_thread(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    store = SqliteStore(path)
    store.checkpoint_in_background(every_s=3600)  # the thread waits: only commits write
    assert store.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    _write(store, 3000)
    # Past SQLite's 1,000-page threshold, and no commit copied the WAL back.
    assert _wal_pages(path) > 1000
    store.close()
    again = SqliteStore(path)  # the last connection's close copied it back
    assert again.db.execute("SELECT count(*) FROM occurrences").fetchone()[0] == 3000
    again.close()


def test_the_thread_copies_the_wal_back_and_a_commit_then_restarts_it(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    store = SqliteStore(path)
    size_before = path.stat().st_size
    store.checkpoint_in_background(every_s=0.2)
    _write(store, 3000)
    checkpointer = store._checkpointer
    assert checkpointer is not None
    seen = checkpointer.checkpoints
    deadline = time.monotonic() + 10
    while checkpointer.checkpoints < seen + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert checkpointer.checkpoints >= seen + 2
    assert path.stat().st_size > size_before + 500 * 1024  # the rows reached the file
    _write(store, 1, at_ms=1_900_000_000_000)  # the first commit after it truncates the WAL
    assert _wal_pages(path) <= 8
    store.close()
    assert not checkpointer._thread.is_alive()


def test_without_the_thread_sqlite_checkpoints_as_always(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    store = SqliteStore(path)  # the CLI's and the fake-clock tests' store
    assert store.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
    _write(store, 3000)
    assert _wal_pages(path) <= 1100  # reset by a commit's own checkpoint
    store.close()


def test_a_state_file_that_went_away_is_not_created_again(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    store = SqliteStore(path)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    store.checkpoint_in_background()  # its first connection comes after the deletion
    time.sleep(1.5)
    assert not path.exists()
    store.close()
