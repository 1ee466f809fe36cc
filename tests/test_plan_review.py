"""`plan` is the review of the daemon's state against its folder, as `diff` reviews two sides."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.daemon_helpers import DaemonProcess
from tests.emulator_fixture import RunningEmulator

JOB = "kind: quota\nproduct: p\nenv: dev\ntag: t\n"


def test_plan_shows_each_touched_jobs_fields_fire_times_and_consequences(
    tmp_path: Path, emulator: RunningEmulator
) -> None:
    daemon = DaemonProcess(tmp_path, emulator)
    daemon.write_job("report.yaml", JOB + "schedule: {cron: '0 * * * *', tz: Europe/Paris}\n")
    daemon.write_job("keep.yaml", JOB + "schedule: {cron: '0 0 * * *'}\n")
    daemon.start()
    assert daemon.stop() == 0
    daemon.write_job("report.yaml", JOB + "schedule: {cron: '* * * * *', tz: Europe/Paris}\n")
    daemon.write_job("once.yaml", JOB + "schedule: {start_at: 0}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "runner", "plan"], capture_output=True, text=True, env=daemon.env
    )
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr
    assert "1 to add, 1 to update, 0 to remove, 1 unchanged" in out  # the summary as before
    assert f"~ changed  report  {daemon.jobs}/report.yaml:1" in out
    assert 'schedule.cron: "0 * * * *" -> "* * * * *"' in out  # from the state's copy
    assert "new (Europe/Paris)" in out and "| old (Europe/Paris)" in out
    assert "! frequency-up-10x: report: fires 60x as often" in out
    assert "! one-shot-past: once: a one-shot without start_at: it runs at once on deploy" in out
    assert "keep" not in out.split("unchanged", 1)[1]


def test_plan_escapes_control_and_bidi_characters_in_file_names(
    tmp_path: Path, emulator: RunningEmulator
) -> None:
    daemon = DaemonProcess(tmp_path, emulator)
    daemon.write_job("keep.yaml", JOB + "schedule: {cron: '0 0 * * *'}\n")
    daemon.start()
    assert daemon.stop() == 0
    evil = "evil\x1b]0;owned\x07\u202e.yaml"
    daemon.write_job(evil, "name: evil\n" + JOB + "schedule: {cron: '0 1 * * *'}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "runner", "plan"], capture_output=True, text=True, env=daemon.env
    )
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stdout and "\u202e" not in proc.stdout and "\x07" not in proc.stdout
    assert "evil\\x1b]0;owned\\x07\\u202e.yaml" in proc.stdout
