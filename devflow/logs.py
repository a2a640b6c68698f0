"""Logging, configured once: structlog to stderr, console on a terminal, JSON otherwise.

Log lines are named events with fields (``run_id``, ``phase``, ``attempt`` bound where
known), never sentences built with f-strings. Values of secret-looking variables are
replaced with ``[redacted]`` by the redaction processor.

stderr holds one format at a time: what else a command writes there while it works
(the progress of a run) asks ``current_format`` and follows it, so with JSON logs every
line of stderr is a JSON object.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, MutableMapping
from typing import Any

import structlog

_redactor: Callable[[Any], Any] | None = None
_format: str | None = None


def set_redactor(redact: Callable[[Any], Any] | None) -> None:
    global _redactor  # noqa: PLW0603 - the one processor that every logger shares
    _redactor = redact


def _redact(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if _redactor is not None:
        for key, value in list(event.items()):
            event[key] = _redactor(value)
    return event


def configure(fmt: str = "auto", level: str = "warning") -> None:
    """Set up structlog for this process; ``fmt`` is auto, console or json."""
    global _format  # noqa: PLW0603 - one format per process, like structlog's own configuration
    fmt = resolve(fmt)
    _format = fmt
    renderer: Any = (structlog.processors.JSONRenderer() if fmt == "json"
                     else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.WARNING)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def resolve(fmt: str) -> str:
    return ("console" if sys.stderr.isatty() else "json") if fmt == "auto" else fmt


def current_format() -> str:
    """``console`` or ``json``: the format of this process's logs (auto until configured)."""
    return _format or resolve("auto")
