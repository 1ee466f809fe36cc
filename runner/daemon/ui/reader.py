"""History for the pages, read off the event loop: a read-only SQLite connection per read,
in a worker thread, so a slow disk or a wide 24 h query never delays a due occurrence.

The daemon's own connection stays the scheduler's. PostgreSQL (replicas) reads go
through the store's own async `read_history`; the 24 h pictures need the SQLite file.
"""

from __future__ import annotations

import asyncio
import sqlite3
import urllib.parse
from dataclasses import dataclass, fields
from typing import Any

from runner.store import Occurrence, Store
from runner.store.sqlite import SqliteStore

_OCC = ", ".join(f.name for f in fields(Occurrence))
SAMPLE = 50_000  # finished runs read for the distributions, newest first


@dataclass(frozen=True, slots=True)
class Activity:
    """The last 24 h: per job and hour, the count of each outcome; and a sample of
    (lateness, duration) in milliseconds of finished runs."""

    cells: dict[str, dict[int, dict[str, int]]]
    timings: list[tuple[int | None, int | None]]


class HistoryReader:
    """Reads history without blocking the loop; `available` is False without a SQLite file."""

    def __init__(self, store: Store) -> None:
        self.store = store
        path = store.path if isinstance(store, SqliteStore) else None
        self.path = path if path and path != ":memory:" else None

    @property
    def available(self) -> bool:
        return self.path is not None

    async def history(self, job: str, limit: int) -> list[Occurrence]:
        if self.path is None:
            return await self.store.read_history(job, limit)
        sql = f"SELECT {_OCC} FROM occurrences WHERE job = ? ORDER BY scheduled_ms DESC LIMIT ?"
        rows = await asyncio.to_thread(self._query, sql, (job, limit))
        return [Occurrence(*row) for row in rows]

    async def activity(self, jobs: list[str], since_ms: int) -> Activity:
        """Outcomes by hour for `jobs` (a page of them) and timings of every job's runs."""
        if self.path is None:
            return Activity({}, [])
        return await asyncio.to_thread(self._activity, jobs, since_ms)

    def _activity(self, jobs: list[str], since_ms: int) -> Activity:
        cells: dict[str, dict[int, dict[str, int]]] = {name: {} for name in jobs}
        marks = ", ".join("?" for _ in jobs)
        sql = (
            "SELECT job, (scheduled_ms - ?) / 3600000 AS hour, state, count(*) FROM occurrences"
            f" WHERE job IN ({marks}) AND scheduled_ms >= ? GROUP BY job, hour, state"
        )
        for job, hour, state, count in self._query(sql, (since_ms, *jobs, since_ms)):
            cells[job].setdefault(int(hour), {})[state] = count
        timings = self._query(
            "SELECT started_ms - scheduled_ms, duration_ms FROM occurrences"
            " WHERE finished_ms >= ? AND started_ms IS NOT NULL AND trigger != 'manual'"
            " ORDER BY finished_ms DESC LIMIT ?",
            (since_ms, SAMPLE),
        )
        return Activity(cells, [(late, took) for late, took in timings])

    def _query(self, sql: str, params: tuple[object, ...]) -> list[tuple[Any, ...]]:
        assert self.path is not None
        uri = f"file:{urllib.parse.quote(self.path)}?mode=ro"
        db = sqlite3.connect(uri, uri=True, timeout=5)
        try:
            return db.execute(sql, params).fetchall()
        finally:
            db.close()
