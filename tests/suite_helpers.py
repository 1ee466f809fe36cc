"""Shared parts of the crash, fault and hostile suites: sizes, a patient daemon, call tallies.

The suites run in CI at a reduced size; `RUNNER_SUITE_FULL=1` selects the sizes the
issue asks for (see bench/RESULTS.md for the command and the last figures).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog

from tests.daemon_helpers import DaemonProcess, wait_for

FULL = os.environ.get("RUNNER_SUITE_FULL") == "1"
SEED = int(os.environ.get("RUNNER_SUITE_SEED", "20241123"))
QUOTA = "kind: quota\nproduct: p\nenv: dev\ntag: t\n"


@pytest.fixture(autouse=True)
def quiet_emulator_log() -> Iterator[None]:
    """The in-process emulator logs every call at info: keep `pytest -s` to the reports."""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    yield
    structlog.configure(**saved)


def size(ci: int, full: int) -> int:
    """The CI size, or the issue's size under RUNNER_SUITE_FULL=1."""
    return full if FULL else ci


class SuiteDaemon(DaemonProcess):
    """A DaemonProcess whose start-up may take longer (large folders) and that reports memory."""

    prefix: tuple[str, ...] = ()  # runs the daemon under a wrapper (see drop_root_reads)

    def start(self, timeout: float = 10.0) -> SuiteDaemon:
        self.log_path = self.tmp_path / f"daemon-{time.monotonic_ns()}.log"
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [*self.prefix, sys.executable, "-m", "runner", "run", *self.args],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.tmp_path,
            )
        wait_for(lambda: self.started() or self._died(), timeout=timeout, every=0.05)
        return self

    def started(self) -> bool:
        """`daemon.started` in the current log (cheaper than parsing every event)."""
        return '"daemon.started"' in self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_mib(self) -> float:
        return status_kib(self.pid, "VmRSS") / 1024

    def peak_rss_mib(self) -> float:
        return status_kib(self.pid, "VmHWM") / 1024

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def control(self, path: str) -> Any:
        """GET on the control API's Unix socket, as `ductape-runner status` does."""
        transport = httpx.HTTPTransport(uds=str(self.tmp_path / "control.sock"))
        with httpx.Client(transport=transport, base_url="http://daemon", timeout=30) as client:
            response = client.get(path)
            response.raise_for_status()
            return response.json()

    def open_occurrences(self) -> int:
        rows = self.query("SELECT count(*) FROM occurrences WHERE state IN ('planned', 'running')")
        return int(rows[0][0])

    def states(self, like: str = "%") -> Counter[str]:
        rows = self.query(
            "SELECT state, count(*) FROM occurrences WHERE job LIKE ? GROUP BY 1", like
        )
        return Counter(dict(rows))


def drop_root_reads() -> tuple[str, ...] | None:
    """A command prefix under which root cannot read a mode-000 file (no DAC override).

    () when not root; None when root and util-linux's setpriv is missing.
    """
    if os.geteuid() != 0:
        return ()
    if shutil.which("setpriv") is None:
        return None
    return ("setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--")


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for process {pid}")


def by_key(calls: Iterable[dict[str, Any]]) -> dict[str | None, list[dict[str, Any]]]:
    """Calls grouped by idempotency key (None for calls without one), oldest first."""
    grouped: dict[str | None, list[dict[str, Any]]] = {}
    for call in calls:
        grouped.setdefault(call["idempotency_key"], []).append(call)
    return grouped


def received_s(call: dict[str, Any]) -> float:
    return datetime.fromisoformat(call["received_at"]).timestamp()


def succeeded(call: dict[str, Any]) -> bool:
    """Answered normally: "ok", or a pure-delay fault ("fault:delay_ms=N") that then answered."""
    outcome = str(call["outcome"])
    return outcome == "ok" or (outcome.startswith("fault:delay_ms=") and "," not in outcome)


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table for the suite reports printed with `pytest -s`."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
