"""Logging: structlog for everything (stdlib records too), redacted, JSON off a TTY,
repeated warnings rate-limited."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import structlog

from runner.jobs.secrets import SecretRegistry, redact_processor


def configure(registry: SecretRegistry, *, json: bool | None = None, level: str = "info") -> None:
    """Route structlog and stdlib logging through one redacting pipeline to stderr."""
    as_json = (not sys.stderr.isatty()) if json is None else json
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact_processor(registry),  # after format_exc_info, so tracebacks are redacted too
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    # The runner's own events are rendered by structlog and written in one call, without
    # the stdlib bridge (a LogRecord, a handler, a formatter per event): at one
    # `run.finished` line per occurrence that bridge was about a third of the executor's
    # time in a 4,000-call burst (issue 12). Libraries' stdlib records still go through
    # the handler below, with the same processors and renderer.
    repeats = Repeats()
    structlog.configure(
        processors=[*shared[:3], repeats.processor, *shared[3:], renderer],
        logger_factory=_NamedWriterFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_own_events_or_warnings)
    handler.addFilter(repeats.record_filter)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The filter below drops these anyway; their level spares building the records
    # (httpx and aiohttp log requests at INFO, watchfiles every batch of changes).
    for noisy in ("httpx", "httpcore", "aiohttp", "uvicorn", "watchfiles", "asyncio"):
        logging.getLogger(noisy).setLevel("WARNING")


def _own_events_or_warnings(record: logging.LogRecord) -> bool:
    """The stream holds the runner's events (README, "Log events"); other libraries' INFO
    and DEBUG lines ("3 changes detected", "Started server process") are not events, at
    any level. Their warnings and errors still pass."""
    return record.levelno >= logging.WARNING or record.name.split(".")[0] == "runner"


def _add_logger_name(logger: Any, method_name: str, event_dict: Any) -> Any:
    """`logger`: the stdlib record's name, or the name the runner's logger was made with."""
    record = event_dict.get("_record")
    event_dict["logger"] = record.name if record is not None else getattr(logger, "name", "")
    return event_dict


class _NamedWriter(structlog.WriteLogger):
    """structlog's line writer, carrying the name it was created with (`get_logger(name)`)."""

    def __init__(self, name: str) -> None:
        super().__init__(sys.stderr)
        self.name = name


class _NamedWriterFactory:
    def __call__(self, *args: Any) -> _NamedWriter:
        return _NamedWriter(str(args[0]) if args else "")


class Repeats:
    """Rate-limits repeated warnings and errors (issue 13, item 8: 103 MB of `Too many open
    files` in 25 s). Lines that share a logger, a level, an event and an error text pass `BURST`
    times per `WINDOW_S`; the rest of that window is dropped, and the next line of the
    kind says how many were (`suppressed`). Info and debug lines are never dropped: one
    per unit of work is the contract (README, "Log events")."""

    BURST = 100
    WINDOW_S = 10.0
    MAX_KINDS = 1024

    def __init__(self, clock: Any = time.monotonic) -> None:
        self.clock = clock
        self.kinds: dict[tuple[str, ...], list[float]] = {}  # kind -> [start, passed, dropped]

    def allow(self, kind: tuple[str, ...]) -> tuple[bool, int]:
        """Whether a line of this kind passes, and how many were dropped before it."""
        now = self.clock()
        slot = self.kinds.get(kind)
        if slot is None or now - slot[0] >= self.WINDOW_S:
            if slot is None and len(self.kinds) >= self.MAX_KINDS:
                self.kinds.pop(next(iter(self.kinds)))  # the oldest kind
            self.kinds[kind] = [now, 1, 0]
            return True, 0 if slot is None else int(slot[2])
        if slot[1] < self.BURST:
            slot[1] += 1
            return True, 0
        slot[2] += 1
        return False, 0

    def processor(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        if event_dict.get("level") in ("debug", "info"):
            return event_dict
        kind = (
            str(event_dict.get("logger")),
            str(event_dict.get("level")),
            str(event_dict.get("event")),
            str(event_dict.get("error", ""))[:200],
        )
        passed, dropped = self.allow(kind)
        if not passed:
            raise structlog.DropEvent
        if dropped:
            event_dict["suppressed"] = dropped
        return event_dict

    def record_filter(self, record: logging.LogRecord) -> bool:
        """The same limit for other libraries' records (asyncio's accept errors)."""
        if record.levelno < logging.WARNING:
            return True
        return self.allow((record.name, record.levelname, str(record.msg)[:200]))[0]
