"""Logging: structlog for everything (stdlib records too), redacted, JSON off a TTY."""

from __future__ import annotations

import logging
import sys
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
    structlog.configure(
        processors=[*shared, renderer],
        logger_factory=_NamedWriterFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_own_events_or_warnings)
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
