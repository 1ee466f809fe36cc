"""The daemon's event loop choice (`event_loop`): uvloop by default where it imports."""

from __future__ import annotations

import asyncio
import sys

import pytest

from runner.cli.main import _run_loop


async def _loop_module() -> int:
    return 1 if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else 0


def test_auto_and_uvloop_run_on_uvloop() -> None:
    assert _run_loop(_loop_module(), "auto") == 1
    assert _run_loop(_loop_module(), "uvloop") == 1


def test_asyncio_runs_on_asyncios_own_loop() -> None:
    assert _run_loop(_loop_module(), "asyncio") == 0


def test_without_uvloop_auto_falls_back_and_uvloop_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` raises ImportError
    assert _run_loop(_loop_module(), "auto") == 0
    with pytest.raises(SystemExit, match="uvloop is not installed"):
        _run_loop(_loop_module(), "uvloop")
