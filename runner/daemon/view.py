"""The daemon as the control API sees it: read-only views plus trigger, pause and resume."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from runner.daemon.control import job_dict, occurrence_dict, summary_dict
from runner.daemon.scheduler import Scheduler, to_ms
from runner.store.postgres import StoreUnavailable


@dataclass
class Conditions:
    """What monitoring must see beyond the job table; the first two keep it not ready."""

    folder_missing: str | None = None  # the jobs folder does not exist (yet)
    auth_failing: str | None = None  # Ductape refused the credentials several times in a row
    guard: str | None = None  # the mass-deletion guard is holding jobs
    last_good: dict[str, str] = field(default_factory=dict)  # job -> its invalid file

    def notes(self) -> str:
        """What /readyz adds to its detail while ready."""
        notes = [f"folder guard: {self.guard}"] if self.guard else []
        if self.last_good:
            names = ", ".join(sorted(self.last_good))
            notes.append(f"{len(self.last_good)} jobs run their last good version ({names})")
        return "".join(f"; {note}" for note in notes)


class DaemonView:
    """Implements runner.daemon.control.ControlView over a running scheduler; never blocks."""

    def __init__(
        self,
        scheduler: Scheduler,
        *,
        stale_after_s: float,
        loaded: Callable[[], bool],
        invalid: Callable[[], dict[str, str]],
        state: Callable[[], tuple[bool, str]] | None = None,
        conditions: Callable[[], Conditions] = Conditions,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.scheduler = scheduler
        self._state = state
        self.stale_after_s = stale_after_s
        self._loaded = loaded
        self._invalid = invalid
        self._conditions = conditions
        self._on_change = on_change  # a pause or resume: open dashboards refresh

    def healthy(self) -> tuple[bool, str]:
        age = self.scheduler.clock.monotonic() - self.scheduler.heartbeat
        if age > self.stale_after_s:
            return False, f"scheduler loop silent for {age:.1f} s"
        store_ok, store_detail = self._store()
        if not store_ok:
            return False, store_detail
        return True, f"scheduler loop ran {age:.1f} s ago" + (
            f"; {store_detail}" if store_detail else ""
        )

    def _store(self) -> tuple[bool, str]:
        """PostgreSQL replicas: is the shared database reachable? SQLite: can it be written?"""
        claims = self.scheduler.claims
        if claims is not None:
            return claims.status()
        return (True, "") if self._state is None else self._state()

    def ready(self) -> tuple[bool, str]:
        if not self._loaded():
            return False, "state and jobs folder not loaded yet"
        now = self._conditions()
        for reason in (now.folder_missing, now.auth_failing):
            if reason:
                return False, reason
        return True, f"{len(self.scheduler.entries)} jobs loaded" + now.notes()

    def jobs(self) -> list[dict[str, Any]]:
        # One C-level copy of the table (the GIL is held throughout): safe from a worker
        # thread while the loop adds and removes jobs (runner.daemon.rendered).
        entries = sorted(self.scheduler.entries.items(), key=_first)
        return [job_dict(e.record, e.job, e.due) for _, e in entries]

    def job(self, name: str) -> dict[str, Any] | None:
        return self._dict(name) if name in self.scheduler.entries else None

    def _dict(self, name: str) -> dict[str, Any]:
        entry = self.scheduler.entries[name]
        return job_dict(entry.record, entry.job, entry.due)

    async def history(self, name: str, limit: int) -> list[dict[str, Any]] | None:
        if name not in self.scheduler.records:
            return None
        try:
            occurrences = await self.scheduler.store.read_history(name, limit)
        except StoreUnavailable as exc:
            raise ValueError(str(exc)) from exc  # 409 with the reason, not a 500
        return [occurrence_dict(o) for o in occurrences]

    def trigger(self, name: str) -> dict[str, Any]:
        entry = self.scheduler.entries[name]  # KeyError: 404
        if entry.job.suspend:
            raise ValueError(f"job '{name}' is suspended in its file (suspend: true)")
        ok, detail = self._store()
        if not ok:
            raise ValueError(f"not triggered: {detail}")
        return occurrence_dict(self.scheduler.trigger(name))

    def pause(self, name: str) -> dict[str, Any]:
        self.scheduler.pause(name)
        self._on_change()
        return self._dict(name)

    def resume(self, name: str) -> dict[str, Any]:
        self.scheduler.resume(name)
        self._on_change()
        return self._dict(name)

    def summary(self) -> dict[str, Any]:
        summary = summary_dict(self.jobs(), self._invalid())
        now = self._conditions()
        summary["folder_guard"] = now.guard
        summary["last_good"] = [
            {"job_id": name, "path": path} for name, path in sorted(now.last_good.items())
        ]
        if self.scheduler.claims is not None:
            ok, detail = self.scheduler.claims.status()
            summary["store"] = {"ok": ok, "detail": detail}
        return summary

    def status_line(self) -> str:
        """For systemd's STATUS=: '312 jobs, 2 invalid files, next run in 4 s'."""
        deadline = self.scheduler.next_deadline_ms()
        now_ms = to_ms(self.scheduler.clock.now())
        invalid = len(self._invalid())
        text = f"{len(self.scheduler.entries)} jobs, {invalid} invalid files"
        if not self._store()[0]:
            return text + ", state database unreachable or not writable: starting nothing"
        if deadline is None:
            return text + ", nothing scheduled"
        return text + f", next run in {max(deadline - now_ms, 0) / 1000:.0f} s"


def _first(item: tuple[str, Any]) -> str:
    return item[0]
