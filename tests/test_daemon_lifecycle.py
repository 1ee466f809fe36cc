"""The daemon as operators run it: watch and reconcile, signals, sd_notify, status and metrics."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_helpers import DaemonProcess, control_get, ctl, wait_for
from tests.emulator_fixture import RunningEmulator

JOB = "kind: quota\nproduct: p\nenv: dev\ntag: t\n"
HOURLY = JOB + "schedule: {cron: '0 * * * *'}\n"


class NotifySocket:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET; records every message."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._stop = False
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def texts(self) -> list[str]:
        return [m for _, m in self.messages]

    def close(self) -> None:
        self._stop = True
        self.thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


def job_names(d: DaemonProcess) -> set[str]:
    return {j["job_id"] for j in json.loads(ctl(d, "status", "--json").stdout)["jobs"]}


@pytest.fixture
def daemon(tmp_path: Path, emulator: RunningEmulator) -> Iterator[DaemonProcess]:
    process = DaemonProcess(
        tmp_path,
        emulator,
        env={"DUCTAPE_RUNNER_QUIET_PERIOD_S": "0.1", "DUCTAPE_RUNNER_EMPTY_FOLDER_CONFIRM_S": "2"},
    )
    yield process
    process.stop()


def test_files_created_edited_and_deleted_change_the_schedule_within_a_second(
    daemon: DaemonProcess,
) -> None:
    daemon.write_job("a.yaml", HOURLY)
    daemon.start()
    assert job_names(daemon) == {"a"}
    started = time.monotonic()
    daemon.write_job("b.yaml", HOURLY)
    wait_for(lambda: job_names(daemon) == {"a", "b"}, timeout=1.5)
    daemon.write_job("b.yaml", JOB + "schedule: {cron: '30 * * * *'}\n")
    wait_for(
        lambda: json.loads(ctl(daemon, "status", "b", "--json").stdout)["next_run_at"].endswith(
            ":30:00.000Z"
        ),
        timeout=1.5,
    )
    (daemon.jobs / "a.yaml").unlink()
    wait_for(lambda: job_names(daemon) == {"b"}, timeout=1.5)
    assert time.monotonic() - started < 4.5


def test_an_invalid_edit_keeps_the_last_good_version_and_shows_the_error(
    daemon: DaemonProcess,
) -> None:
    daemon.write_job("a.yaml", HOURLY)
    daemon.start()
    daemon.write_job("a.yaml", HOURLY.replace("0 * * * *", "61 * * * *"))
    summary = wait_for(
        lambda: (
            (s := json.loads(ctl(daemon, "status", "--json").stdout)["summary"])["invalid_files"]
            and s
        )
    )
    assert summary["jobs"] == 1  # still scheduled
    [problem] = summary["invalid_files"]
    assert problem["error"].endswith(
        "a.yaml:5:18: schedule.cron: bad minute field '61' (allowed 0-59)"
    )
    metrics = control_get(daemon, "/metrics").text
    assert "ductape_runner_invalid_files 1.0" in metrics
    assert json.loads(ctl(daemon, "status", "a", "--json").stdout)["status"] == "scheduled"
    assert daemon.events("file.invalid")


def test_a_configmap_style_swap_is_picked_up(daemon: DaemonProcess) -> None:
    v1 = daemon.jobs / "..2026_01"
    v1.mkdir()
    (v1 / "a.yaml").write_text(HOURLY)
    (daemon.jobs / "..data").symlink_to(v1.name)
    (daemon.jobs / "a.yaml").symlink_to("..data/a.yaml")
    daemon.start()
    v2 = daemon.jobs / "..2026_02"
    v2.mkdir()
    (v2 / "a.yaml").write_text(JOB + "schedule: {cron: '45 * * * *'}\n")
    tmp = daemon.jobs / "..data_tmp"
    tmp.symlink_to(v2.name)
    tmp.rename(daemon.jobs / "..data")  # atomic, as kubelet does
    shutil.rmtree(v1)
    wait_for(
        lambda: json.loads(ctl(daemon, "status", "a", "--json").stdout)["next_run_at"].endswith(
            ":45:00.000Z"
        ),
        timeout=2,
    )


def test_a_deleted_folder_keeps_its_jobs_until_confirmed_and_is_watched_again(
    daemon: DaemonProcess,
) -> None:
    daemon.write_job("a.yaml", HOURLY)
    daemon.start()
    shutil.rmtree(daemon.jobs)
    wait_for(lambda: daemon.events("folder.guard"))
    assert job_names(daemon) == {"a"}  # held, not deleted
    daemon.jobs.mkdir()
    daemon.write_job("c.yaml", HOURLY)
    wait_for(lambda: job_names(daemon) == {"c"}, timeout=5)


def test_sighup_reloads_with_reloading_and_ready_notifications(
    tmp_path: Path, emulator: RunningEmulator, notify: NotifySocket
) -> None:
    d = DaemonProcess(tmp_path, emulator, env={"NOTIFY_SOCKET": str(notify.path)})
    d.write_job("a.yaml", HOURLY)
    d.start()
    try:
        wait_for(lambda: "READY=1" in notify.texts())
        d.signal(signal.SIGHUP)
        wait_for(lambda: any(e.get("reason") == "sighup" for e in d.events("reload.finished")))
        # The datagrams may land a moment after the log line: wait for them, then check order.
        wait_for(lambda: _ready_after_reloading(notify.texts()))
        texts = notify.texts()
        reloading = next(i for i, t in enumerate(texts) if t.startswith("RELOADING=1"))
        assert "MONOTONIC_USEC=" in texts[reloading]
        assert "READY=1" in texts[reloading + 1 :]
        assert any(t.startswith("STATUS=1 jobs, 0 invalid files, next run in") for t in texts)
    finally:
        assert d.stop() == 0
    assert "STOPPING=1" in notify.texts()


def _ready_after_reloading(texts: list[str]) -> bool:
    starts = [i for i, t in enumerate(texts) if t.startswith("RELOADING=1")]
    return bool(starts) and "READY=1" in texts[starts[0] + 1 :]


def test_the_watchdog_is_fed_by_the_loop_and_stops_when_the_loop_is_wedged(
    tmp_path: Path, emulator: RunningEmulator, notify: NotifySocket
) -> None:
    d = DaemonProcess(
        tmp_path, emulator, env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000"}
    )
    d.write_job("a.yaml", JOB + "schedule: {every: 1s}\n")
    d.start()
    try:
        wait_for(lambda: notify.texts().count("WATCHDOG=1") >= 3)
        # Wedge the loop: hold an exclusive lock on the state file so its next write blocks.
        db = sqlite3.connect(d.state, timeout=5, isolation_level=None)
        db.execute("BEGIN EXCLUSIVE")
        time.sleep(1.5)  # let the loop reach its next write and block there
        wedged_at = time.monotonic()
        time.sleep(2.0)
        during = [t for at, t in notify.messages if at > wedged_at and t == "WATCHDOG=1"]
        db.execute("ROLLBACK")
        db.close()
        released = time.monotonic()
        wait_for(lambda: any(at > released and t == "WATCHDOG=1" for at, t in notify.messages))
    finally:
        d.stop()
    assert during == []


def test_sigterm_drains_a_slow_call_then_exits_zero(
    daemon: DaemonProcess, emulator: RunningEmulator
) -> None:
    emulator.fault(target="quotas.run", delay_ms=1500)
    daemon.write_job("a.yaml", JOB + "schedule: {start_at: 0}\n")
    daemon.start()
    wait_for(lambda: daemon.query("SELECT state FROM occurrences") == [("running",)])
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    assert daemon.query("SELECT state FROM occurrences") == [("succeeded",)]
    [stopped] = daemon.events("daemon.stopped")
    assert stopped["cancelled_attempts"] == 0


def test_sigterm_past_the_grace_cancels_and_the_occurrence_resumes_later(
    tmp_path: Path, emulator: RunningEmulator
) -> None:
    emulator.fault(target="quotas.run", hang=True, count=1)  # recorded at once, not 5 s later
    d = DaemonProcess(tmp_path, emulator, env={"DUCTAPE_RUNNER_SHUTDOWN_GRACE_S": "0.3"})
    d.write_job("a.yaml", JOB + "schedule: {start_at: 0}\n")
    d.start()
    wait_for(lambda: d.query("SELECT state FROM occurrences") == [("running",)])
    began = time.monotonic()
    d.signal(signal.SIGTERM)
    assert d.wait() == 0
    assert time.monotonic() - began < 3
    assert d.query("SELECT state FROM occurrences") == [("running",)]  # left open on purpose
    d.start()
    try:
        wait_for(lambda: d.query("SELECT state FROM occurrences") == [("succeeded",)])
    finally:
        d.stop()


def test_a_second_sigint_exits_at_once(daemon: DaemonProcess, emulator: RunningEmulator) -> None:
    emulator.fault(target="quotas.run", hang=True)  # ends when the daemon goes, recorded at once
    daemon.write_job("a.yaml", JOB + "schedule: {start_at: 0}\n")
    daemon.start()
    wait_for(lambda: daemon.query("SELECT state FROM occurrences") == [("running",)])
    began = time.monotonic()
    daemon.signal(signal.SIGINT)
    time.sleep(0.3)
    daemon.signal(signal.SIGINT)
    assert daemon.wait() == 130  # runs were left open: say so (issue 11, item 8)
    assert time.monotonic() - began < 5


def test_status_history_trigger_pause_resume_from_the_cli(
    daemon: DaemonProcess, emulator: RunningEmulator
) -> None:
    daemon.write_job("a.yaml", HOURLY)
    daemon.start()
    triggered = json.loads(ctl(daemon, "trigger", "a", "--json").stdout)
    assert triggered["trigger"] == "manual"
    key = triggered["idempotency_key"]
    wait_for(
        lambda: any(
            o["idempotency_key"] == key and o["state"] == "succeeded"
            for o in json.loads(ctl(daemon, "history", "a", "--json").stdout)
        )
    )
    # The manual run's own key reached Ductape (an earlier test's late call may be there too).
    assert key in {c["idempotency_key"] for c in emulator.calls()}
    assert json.loads(ctl(daemon, "pause", "a", "--json").stdout)["status"] == "paused"
    assert json.loads(ctl(daemon, "resume", "a", "--json").stdout)["status"] == "scheduled"
    missing = ctl(daemon, "trigger", "ghost")
    assert missing.returncode == 1 and "ghost" in missing.stderr
    assert control_get(daemon, "/healthz").status_code == 200
    assert control_get(daemon, "/readyz").json()["ok"] is True
