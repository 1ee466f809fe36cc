"""Repeated warnings are rate-limited; info lines never are (issue 13, item 8)."""

from __future__ import annotations

import pytest
import structlog

from runner.daemon.logs import Repeats


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def line(event: str, level: str = "warning", error: str = "Too many open files") -> dict[str, str]:
    return {"logger": "runner.x", "event": event, "level": level, "error": error}


def passed(repeats: Repeats, event_dict: dict[str, str]) -> bool:
    try:
        repeats.processor(None, "warning", event_dict)
    except structlog.DropEvent:
        return False
    return True


def test_a_repeated_warning_passes_a_burst_per_window_then_says_how_many_were_dropped() -> None:
    clock = Clock()
    repeats = Repeats(clock)
    results = [passed(repeats, line("run.failed")) for _ in range(250)]
    assert results.count(True) == Repeats.BURST
    clock.now += Repeats.WINDOW_S
    first = line("run.failed")
    assert passed(repeats, first)
    assert first["suppressed"] == 250 - Repeats.BURST  # type: ignore[comparison-overlap]


@pytest.mark.parametrize(
    "other",
    [line("run.failed", error="timed out"), line("client.error"), line("run.failed", "error")],
)
def test_other_kinds_have_their_own_budget(other: dict[str, str]) -> None:
    repeats = Repeats(Clock())
    for _ in range(Repeats.BURST + 5):
        passed(repeats, line("run.failed"))
    assert passed(repeats, other)


def test_info_lines_are_never_dropped() -> None:
    repeats = Repeats(Clock())
    assert all(passed(repeats, line("run.finished", level="info")) for _ in range(1_000))


def test_the_kinds_remembered_are_bounded() -> None:
    repeats = Repeats(Clock())
    for i in range(Repeats.MAX_KINDS * 3):
        passed(repeats, line(f"event.{i}"))
    assert len(repeats.kinds) == Repeats.MAX_KINDS
