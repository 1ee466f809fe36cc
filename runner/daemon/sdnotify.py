"""A tiny sd_notify client: READY, RELOADING, STOPPING, STATUS and WATCHDOG datagrams.

The protocol is one AF_UNIX SOCK_DGRAM datagram of newline-separated KEY=VALUE lines
sent to $NOTIFY_SOCKET; a leading '@' names a Linux abstract socket
(https://www.freedesktop.org/software/systemd/man/latest/sd_notify.html).
The socket path and the WATCHDOG_* values are passed in: settings are read only in
the entry point.
"""

from __future__ import annotations

import os
import socket
import time

import structlog

log = structlog.get_logger("runner.sdnotify")


class Notifier:
    """Talks to systemd's notify socket; every method is a no-op without one."""

    def __init__(self, socket_path: str | None) -> None:
        self.address = _address(socket_path) if socket_path else None
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def ready(self) -> None:
        self.notify("READY=1")

    def reloading(self) -> None:
        # Type=notify-reload (systemd 253+) wants the monotonic time with RELOADING=1.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def status(self, text: str) -> None:
        # One line: a newline would start another KEY=VALUE assignment.
        self.notify("STATUS=" + " ".join(text.splitlines()))

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def notify(self, *lines: str) -> bool:
        """Send one datagram; False (and one `sdnotify.failed` log line) when it fails."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.warning("sdnotify.failed", socket=str(self.address), error=str(exc))
            return False
        return True


def _address(path: str) -> str | bytes:
    if path.startswith("@"):
        return b"\0" + path[1:].encode()  # abstract namespace: leading NUL, no file
    return path


def watchdog_interval_s(watchdog_usec: str | None, watchdog_pid: str | None) -> float | None:
    """How often to send WATCHDOG=1: half of WATCHDOG_USEC, if the watchdog is meant for us."""
    if not watchdog_usec:
        return None
    if watchdog_pid and watchdog_pid.strip() != str(os.getpid()):
        return None  # the variables were inherited from a parent the watchdog belongs to
    try:
        usec = int(watchdog_usec)
    except ValueError:
        return None
    return usec / 2 / 1_000_000 if usec > 0 else None
