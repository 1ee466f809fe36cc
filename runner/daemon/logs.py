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
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact_processor(registry),  # after format_exc_info, so tracebacks are redacted too
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        # filter_by_level first: a disabled debug event must cost a level check, not the
        # whole chain (two debug events per call were ~60 µs each in a 10,000 burst).
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
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
