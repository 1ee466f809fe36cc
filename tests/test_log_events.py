"""A real daemon's log holds the runner's documented events only, not its libraries' chatter."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.daemon_helpers import DaemonProcess, wait_for
from tests.emulator_fixture import RunningEmulator

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
JOB = "kind: quota\ntag: q{n}\nschedule: {{cron: '0 0 1 1 *'}}\n"


def documented_events() -> set[str]:
    """The names in the first column of README's "Log events" table."""
    section = README.split("## Log events", 1)[1].split("\n## ", 1)[0]
    first_cells = re.findall(r"^\| ([^|]+) \|", section, flags=re.MULTILINE)
    return {name for cell in first_cells for name in re.findall(r"`([a-z_.]+)`", cell)}


def total(daemon: DaemonProcess, field: str) -> int:
    return sum(int(e.get(field) or 0) for e in daemon.events("reload.finished"))


def churn(daemon: DaemonProcess) -> None:
    """Edits of every kind the watcher sees: create, modify, delete, editor litter."""
    wait_for(lambda: daemon.events("watch.rearmed") and daemon.events("reload.finished"))
    for n in range(6):
        daemon.write_job(f"j{n}.yaml", JOB.format(n=n))
    wait_for(lambda: total(daemon, "added") >= 6)
    for n in range(3):
        daemon.write_job(f"j{n}.yaml", JOB.format(n=n + 10))
    (daemon.jobs / "j5.yaml").unlink()
    (daemon.jobs / ".j4.yaml.swp").write_text("litter")
    (daemon.jobs / "notes.txt").write_text("ignored")
    wait_for(lambda: total(daemon, "updated") >= 3 and total(daemon, "removed") >= 1)
    assert any(e["reason"] == "change" for e in daemon.events("reload.finished"))


def lines_of(daemon: DaemonProcess) -> list[dict[str, object]]:
    lines = [line for line in daemon.output().splitlines() if line.strip()]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not an event: {line!r}")
    return records


def test_documented_events_parse_from_the_readme() -> None:
    assert {"daemon.started", "reload.finished", "run.finished", "watch.rearmed"} <= (
        documented_events()
    )


def test_editing_files_logs_documented_events_only(
    tmp_path: Path, emulator: RunningEmulator
) -> None:
    daemon = DaemonProcess(tmp_path, emulator)
    daemon.start()
    try:
        churn(daemon)
    finally:
        assert daemon.stop() == 0
    events = [str(r.get("event")) for r in lines_of(daemon)]
    assert "reload.finished" in events
    assert sorted(set(events) - documented_events()) == []


def test_at_debug_level_libraries_still_log_warnings_only(
    tmp_path: Path, emulator: RunningEmulator
) -> None:
    daemon = DaemonProcess(tmp_path, emulator, "--log-level", "debug")
    daemon.start()
    try:
        churn(daemon)
    finally:
        assert daemon.stop() == 0
    foreign = [
        r
        for r in lines_of(daemon)
        if not str(r.get("logger", "")).startswith("runner")
        and r.get("level") not in ("warning", "error", "critical")
    ]
    assert foreign == []
