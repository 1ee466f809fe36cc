"""The emulator's configuration, demo identity, armed faults and recorded calls."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from dataclasses import dataclass
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, Field

DEMO_WORKSPACE_ID = "demo-workspace"
DEMO_USER_ID = "demo-user"
DEMO_PUBLIC_KEY = "demo-public-key"
DEMO_ACCESS_TOKEN = "demo-access-token"  # a demo value, not a secret: never use it for real
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4311
HANG_S = 3600.0  # "far past any timeout"; a hung call still ends when its client leaves

# One logger for the whole emulator, under the name it had as a single module.
log = structlog.get_logger("runner.ductape.emulator")


@dataclass(frozen=True)
class EmulatorConfig:
    """Who the emulator accepts and where it listens."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    workspace_id: str = DEMO_WORKSPACE_ID
    user_id: str = DEMO_USER_ID
    public_key: str = DEMO_PUBLIC_KEY
    access_token: str = DEMO_ACCESS_TOKEN
    hang_s: float = HANG_S
    access_log: bool = True
    uvicorn_logging: bool = True  # False leaves logging configuration to the host process


class Fault(BaseModel):
    """One armed misbehaviour; `count` is how many more matching calls it applies to."""

    model_config = ConfigDict(extra="forbid")

    target: str = "*"
    count: int = Field(default=1, ge=1)
    status: int | None = Field(default=None, ge=200, le=599)
    code: str | None = None
    message: str = "injected fault"
    retry_after: float | str | None = None
    delay_ms: int = Field(default=0, ge=0)
    hang: bool = False
    reset: bool = False
    raw: bool = False  # answer a plain-text body, as a gateway in front of the proxy would

    @property
    def delay_only(self) -> bool:
        """A pure delay: the call is answered normally afterwards."""
        return not (self.reset or self.hang or self.status or self.code)

    def matches(self, operation: str) -> bool:
        return self.target in ("*", operation)

    def describe(self) -> str:
        if self.reset:
            return "fault:reset"
        if self.hang:
            return "fault:hang"
        parts = [f"status={self.status}"] if self.status else []
        parts += [f"code={self.code}"] if self.code else []
        parts += [f"delay_ms={self.delay_ms}"] if self.delay_ms else []
        return "fault:" + ",".join(parts)


class ConnectionIndex:
    """Open transports by peer (host, port), so a reset fault can abort the caller's socket."""

    def __init__(self) -> None:
        self._by_peer: dict[tuple[str, int], asyncio.Transport] = {}

    def add(self, peer: tuple[str, int] | None, transport: asyncio.Transport) -> None:
        if peer is not None:
            self._by_peer[peer] = transport

    def discard(self, peer: tuple[str, int] | None) -> None:
        if peer is not None:
            self._by_peer.pop(peer, None)

    def reset(self, peer: tuple[str, int] | None) -> bool:
        """Abort with SO_LINGER 0 so the kernel sends RST; False if the peer is unknown."""
        transport = self._by_peer.get(peer) if peer is not None else None
        if transport is None:
            return False
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
        return True


class EmulatorState:
    """Recorded calls, armed faults and open connections; lives on one event loop."""

    def __init__(self, config: EmulatorConfig, connections: ConnectionIndex | None = None) -> None:
        self.config = config
        self.connections = connections or ConnectionIndex()
        # Each call as its JSON text: a string is not tracked by the cyclic GC, where a
        # call's dicts and lists were. With tens of thousands recorded, each full
        # collection walked them all and stalled the emulator, 150-350 ms at 40,000-90,000
        # calls (bench/harness.py, 100,000 calls a minute), which both sides of a benchmark
        # then measured as their own lateness (issue 12).
        self.calls: list[bytes] = []
        self.keys: set[str | None] = set()  # distinct idempotency keys recorded
        self.faults: list[Fault] = []

    def take_fault(self, operation: str) -> Fault | None:
        """The first armed fault matching `operation`, counting this use."""
        for fault in self.faults:
            if fault.matches(operation):
                fault.count -= 1
                if fault.count == 0:
                    self.faults.remove(fault)
                return fault
        return None

    def calls_json(self) -> bytes:
        """Every recorded call, in order, as one JSON array."""
        return b"[" + b",".join(self.calls) + b"]"

    def clear_calls(self) -> None:
        self.calls.clear()
        self.keys.clear()

    def record(self, call: dict[str, Any], outcome: str) -> None:
        self.calls.append(json.dumps({**call, "outcome": outcome}, separators=(",", ":")).encode())
        self.keys.add(call.get("idempotency_key"))
        log.info(
            "emulator.call",
            module=call.get("module"),
            method=call.get("method"),
            idempotency_key=call.get("idempotency_key"),
            outcome=outcome,
        )
