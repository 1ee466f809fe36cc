"""Arguments and settings that used to be accepted and then ignored or misreported."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.daemon_helpers import DaemonProcess, cli, wait_for
from tests.emulator_fixture import RunningEmulator

JOB = "kind: quota\ntag: q\nschedule: {cron: '0 0 1 1 *'}\n"


@pytest.mark.parametrize("n", ["0", "-3"])
def test_next_refuses_a_count_below_one_as_a_usage_error(n: str, tmp_path: Path) -> None:
    proc = cli("next", "--state", str(tmp_path / "none"), "jobs.d/heartbeat.yaml", "-n", n)
    assert proc.returncode == 2
    assert proc.stderr.startswith("usage: ductape-runner next")
    assert f"argument -n: must be at least 1, not {int(n)}" in proc.stderr
    assert proc.stdout == ""


def test_history_refuses_a_limit_below_one() -> None:
    proc = cli("history", "some-job", "--limit", "0")
    assert proc.returncode == 2
    assert "argument --limit: must be at least 1" in proc.stderr


def test_an_empty_control_tcp_means_no_tcp_listener_even_over_the_config_file(
    tmp_path: Path, emulator: RunningEmulator
) -> None:
    config = tmp_path / "config.toml"
    config.write_text('control_tcp = "127.0.0.1:0"\n')
    daemon = DaemonProcess(
        tmp_path, emulator, "--config", str(config), env={"DUCTAPE_RUNNER_CONTROL_TCP": ""}
    )
    daemon.write_job("later.yaml", JOB)
    daemon.start()
    try:
        assert daemon.events("control.listening")[0]["tcp"] is None
    finally:
        assert daemon.stop() == 0


def test_a_bad_control_tcp_is_reported_under_its_own_name(tmp_path: Path) -> None:
    proc = cli("run", "--jobs-dir", str(tmp_path), env={"DUCTAPE_RUNNER_CONTROL_TCP": "loopback"})
    assert proc.returncode == 2
    assert "control_tcp" in proc.stderr
    assert "'loopback': expected [HOST:]PORT" in proc.stderr


def test_demo_refuses_base_url_it_would_ignore() -> None:
    proc = cli("demo", "--base-url", "http://127.0.0.1:1")
    assert proc.returncode == 2
    assert "unrecognized arguments: --base-url" in proc.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_demo_serves_its_emulator_on_the_port_given(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.d"
    jobs.mkdir()
    (jobs / "later.yaml").write_text(JOB)
    port = _free_port()
    log = tmp_path / "demo.log"
    args = ["--jobs-dir", str(jobs), "--state", str(tmp_path / "s.sqlite3")]
    args += ["--socket", str(tmp_path / "c.sock"), "--emulator-port", str(port)]
    env = {**os.environ, "DUCTAPE_RUNNER_LOG_JSON": "true"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "runner", "demo", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
        )
    try:

        def started() -> list[dict[str, str]]:
            assert proc.poll() is None, log.read_text()
            events = [json.loads(line) for line in log.read_text().splitlines() if line]
            return [e for e in events if e.get("event") == "emulator.started"]

        event = wait_for(started)[0]
        assert event["base_url"] == f"http://127.0.0.1:{port}"
        wait_for(lambda: _accepts(port))  # the event is logged as the server starts
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
