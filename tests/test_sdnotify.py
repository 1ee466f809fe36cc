"""sd_notify datagrams, received on a real AF_UNIX SOCK_DGRAM socket."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from runner.daemon.sdnotify import Notifier, watchdog_interval_s


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A stand-in for systemd's notify socket."""
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(2.0)
        yield sock, path


def received(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_each_notification_is_one_datagram(systemd: tuple[socket.socket, str]) -> None:
    sock, path = systemd
    notifier = Notifier(path)
    notifier.ready()
    notifier.status("watching 12 jobs\nnext: report")
    notifier.watchdog()
    notifier.stopping()
    assert [received(sock) for _ in range(4)] == [
        ["READY=1"],
        ["STATUS=watching 12 jobs next: report"],
        ["WATCHDOG=1"],
        ["STOPPING=1"],
    ]


def test_reloading_carries_the_monotonic_clock(systemd: tuple[socket.socket, str]) -> None:
    sock, path = systemd
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    Notifier(path).reloading()
    reloading, stamp = received(sock)
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert reloading == "RELOADING=1"
    key, _, usec = stamp.partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(usec) <= after


def test_abstract_sockets_are_supported() -> None:
    name = f"ductape-runner-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2.0)
        Notifier("@" + name).ready()
        assert received(sock) == ["READY=1"]


def test_without_a_socket_every_call_is_a_no_op() -> None:
    notifier = Notifier(None)
    assert not notifier.enabled
    notifier.ready()
    notifier.watchdog()
    assert notifier.notify("READY=1") is False


def test_a_send_failure_is_logged_once_and_never_raised(tmp_path: Path) -> None:
    notifier = Notifier(str(tmp_path / "gone.sock"))
    with capture_logs() as logs:
        assert notifier.notify("READY=1") is False
        notifier.watchdog()
        notifier.stopping()
    assert [entry["event"] for entry in logs] == ["sdnotify.failed"]


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("30000000", None, 15.0),
        ("30000000", "self", 15.0),
        ("30000000", "1", None),  # meant for another process
        (None, None, None),
        ("", None, None),
        ("0", None, None),
        ("soon", None, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec_when_meant_for_us(
    usec: str | None, pid: str | None, expected: float | None
) -> None:
    pid = str(os.getpid()) if pid == "self" else pid
    assert watchdog_interval_s(usec, pid) == expected
