"""A real `ductape-runner run` process for end-to-end tests: start, wait, signal, read logs."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.emulator_fixture import RunningEmulator

WAIT_S = 10.0
ROOT = Path(__file__).resolve().parent.parent


def wait_for(predicate: Callable[[], Any], timeout: float = WAIT_S, every: float = 0.02) -> Any:
    """Poll until `predicate` returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(every)


class DaemonProcess:
    """One daemon process on a jobs folder and a state file, talking to the emulator."""

    def __init__(
        self,
        tmp_path: Path,
        emulator: RunningEmulator,
        *args: str,
        env: dict[str, str] | None = None,
    ) -> None:
        self.tmp_path = tmp_path
        self.jobs = tmp_path / "jobs.d"
        self.jobs.mkdir(exist_ok=True)
        self.state = tmp_path / "state.sqlite3"
        self.log_path = tmp_path / f"daemon-{time.monotonic_ns()}.log"
        creds = emulator.credentials
        self.env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(tmp_path),
            "DUCTAPE_RUNNER_JOBS_DIR": str(self.jobs),
            "DUCTAPE_RUNNER_STATE": str(self.state),
            "DUCTAPE_RUNNER_BASE_URL": creds.base_url,
            "DUCTAPE_RUNNER_WORKSPACE_ID": creds.workspace_id,
            "DUCTAPE_RUNNER_USER_ID": creds.user_id,
            "DUCTAPE_RUNNER_PUBLIC_KEY": creds.public_key,
            "DUCTAPE_RUNNER_ACCESS_TOKEN": creds.access_token.get_secret_value(),
            "DUCTAPE_RUNNER_CONTROL_SOCKET": str(tmp_path / "control.sock"),
            "DUCTAPE_RUNNER_LOG_JSON": "true",
            **(env or {}),
        }
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    def write_job(self, name: str, text: str) -> Path:
        path = self.jobs / name
        path.write_text(text)
        return path

    def start(self) -> DaemonProcess:
        started = len(self.events("daemon.started"))  # a restart waits for its own
        self.log_path = self.tmp_path / f"daemon-{time.monotonic_ns()}.log"
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "runner", "run", *self.args],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.tmp_path,
            )
        wait_for(lambda: len(self.events("daemon.started")) > started or self._died())
        return self

    def _died(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.output()}")
        return False

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.wait()

    def wait(self, timeout: float = WAIT_S) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.signal(signal.SIGTERM)
        return self.wait()

    def output(self) -> str:
        return "".join(
            p.read_text(errors="replace") for p in sorted(self.tmp_path.glob("daemon-*.log"))
        )

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        found = []
        for line in self.output().splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if name is None or event.get("event") == name:
                found.append(event)
        return found

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        db = sqlite3.connect(self.state, timeout=5)
        try:
            return db.execute(sql, params).fetchall()
        finally:
            db.close()


def cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    """The real CLI, with `env` added to this process's environment."""
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )


def ctl(d: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI against this daemon's control socket."""
    return subprocess.run(
        [sys.executable, "-m", "runner", *args, "--socket", str(d.tmp_path / "control.sock")],
        capture_output=True,
        text=True,
        timeout=30,
        env=d.env,
    )


def control_request(d: DaemonProcess, method: str, path: str) -> httpx.Response:
    """One HTTP request to the daemon's control API over its unix socket."""
    transport = httpx.HTTPTransport(uds=str(d.tmp_path / "control.sock"))
    with httpx.Client(transport=transport, base_url="http://daemon") as client:
        return client.request(method, path)


def control_get(d: DaemonProcess, path: str) -> httpx.Response:
    return control_request(d, "GET", path)
