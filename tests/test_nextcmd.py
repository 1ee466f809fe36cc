"""`ductape-runner next` prints fire times exactly as the daemon computes them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def run_next(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runner", "next", "--state", str(cwd / "none.sqlite3"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


# (schedule, after, n, expected JSON with offsets in the job's zone)
TABLE = [
    (
        "{cron: '30 2 * * *', tz: America/New_York}",
        "2026-03-07T00:00:00Z",
        3,
        ["2026-03-07T02:30:00-05:00", "2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"],
    ),
    (
        "{cron: '30 1 * * *', tz: America/New_York}",
        "2026-10-31T12:00:00Z",
        3,
        ["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00", "2026-11-03T01:30:00-05:00"],
    ),
    (
        "{cron: '30 1 * * *', tz: America/New_York}",
        "2026-10-31T12:00:00Z",
        1,
        ["2026-11-01T01:30:00-04:00"],
    ),
    (
        "{cron: '0 9 * * *', tz: Asia/Kolkata, limit: 2}",
        "2026-01-01T00:00:00Z",
        5,
        ["2026-01-01T09:00:00+05:30", "2026-01-02T09:00:00+05:30"],
    ),
    (
        "{cron: '0 0 * * *', endDate: '2026-01-03T00:00:00Z'}",
        "2026-01-01T00:00:00Z",
        5,
        ["2026-01-02T00:00:00+00:00", "2026-01-03T00:00:00+00:00"],
    ),
    (
        "{every: 90m, start_at: '2026-01-01T00:00:00Z', tz: Europe/Amsterdam}",
        "2026-01-01T01:00:00Z",
        2,
        ["2026-01-01T02:30:00+01:00", "2026-01-01T04:00:00+01:00"],
    ),
    (
        "{start_at: '2030-01-15T10:00:00Z'}",
        "2026-01-01T00:00:00Z",
        3,
        ["2030-01-15T10:00:00+00:00"],
    ),
]


@pytest.mark.parametrize(("schedule", "after", "n", "expected"), TABLE)
def test_next_json(tmp_path: Path, schedule: str, after: str, n: int, expected: list[str]) -> None:
    (tmp_path / "job.yaml").write_text(f"kind: quota\ntag: t\nschedule: {schedule}\n")
    proc = run_next("job.yaml", "-n", str(n), "--after", after, "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == expected


def test_next_by_name_shows_zone_and_utc(tmp_path: Path) -> None:
    (tmp_path / "jobs.d").mkdir()
    (tmp_path / "jobs.d" / "report.yaml").write_text(
        "kind: quota\ntag: t\nschedule: {cron: '0 9 * * *', tz: America/New_York}\n"
    )
    proc = run_next(
        "--jobs-dir", "jobs.d", "report", "-n", "1", "--after", "2026-07-01T00:00:00Z", cwd=tmp_path
    )
    assert proc.stdout.splitlines() == ["2026-07-01 09:00:00 EDT (-0400)  2026-07-01T13:00:00Z"]


def test_next_for_an_unknown_job_fails_cleanly(tmp_path: Path) -> None:
    (tmp_path / "jobs.d").mkdir()
    proc = run_next("--jobs-dir", "jobs.d", "ghost", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr == "ductape-runner next: no valid job named 'ghost' in jobs.d\n"
