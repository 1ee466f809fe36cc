"""Pytest fixtures that run the real Ductape emulator (uvicorn) on a free loopback port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from runner.ductape.client import Credentials
from runner.ductape.emulator import EmulatorConfig, make_server

START_TIMEOUT_S = 5.0


class RunningEmulator:
    """A handle on a live emulator: where it is, who it accepts, and its control API."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.base_url = f"http://{config.host}:{config.port}"
        self.credentials = Credentials(
            base_url=self.base_url,
            workspace_id=config.workspace_id,
            user_id=config.user_id,
            public_key=config.public_key,
            access_token=SecretStr(config.access_token),
        )
        self._http = httpx.Client(base_url=self.base_url, timeout=5.0, trust_env=False)

    def calls(self) -> list[dict[str, Any]]:
        """Every call the emulator received since the last reset, oldest first."""
        response = self._http.get("/_emulator/calls")
        response.raise_for_status()
        calls: list[dict[str, Any]] = response.json()
        return calls

    def fault(self, **spec: Any) -> dict[str, Any]:
        """Arm a fault: fault(status=503, count=2), fault(target="actions.run", reset=True)."""
        response = self._http.post("/_emulator/faults", json=spec)
        response.raise_for_status()
        armed: dict[str, Any] = response.json()
        return armed

    def reset(self) -> None:
        """Forget recorded calls and disarm all faults."""
        self._http.delete("/_emulator/calls").raise_for_status()
        self._http.delete("/_emulator/faults").raise_for_status()

    def close(self) -> None:
        self._http.close()


def _free_socket() -> socket.socket:
    # proto must be IPPROTO_TCP, not 0: asyncio only sets TCP_NODELAY on accepted sockets
    # whose proto says TCP, and without it Nagle + delayed ACK add 40 ms to every call.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture(scope="session")
def emulator_server() -> Iterator[RunningEmulator]:
    """One emulator for the session, served by uvicorn in a background thread."""
    sock = _free_socket()
    config = EmulatorConfig(
        host="127.0.0.1",
        port=sock.getsockname()[1],
        access_log=False,
        uvicorn_logging=False,
        hang_s=30.0,
    )
    server = make_server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="ductape-emulator", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError("the Ductape emulator did not start")
        time.sleep(0.01)
    handle = RunningEmulator(config)
    try:
        yield handle
    finally:
        handle.close()
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture
def emulator(emulator_server: RunningEmulator) -> Iterator[RunningEmulator]:
    """The session's emulator with no recorded calls and no armed faults."""
    emulator_server.reset()
    yield emulator_server
    emulator_server.reset()
