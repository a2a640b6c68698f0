"""Logging, configured once: structlog to stderr, console on a terminal, JSON otherwise.

Log lines are named events with fields (``run_id``, ``phase``, ``attempt`` bound where
known), never sentences built with f-strings. Values of secret-looking variables are
replaced with ``[redacted]`` by the redaction processor.

Modules take their logger from ``get_logger``: it drops what the configured level
filters out before anything is imported, and imports and configures structlog (with
its console renderer and rich, on a terminal) at the first line that is written. A
command that logs nothing, as most do at the default level, never loads them: they
are a tenth of a read command's start-up (docs/performance.md).

stderr holds one format at a time: what else a command writes there while it works
(the progress of a run) asks ``current_format`` and follows it, so with JSON logs every
line of stderr is a JSON object.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any, Final

_redactor: Callable[[Any], Any] | None = None
#: what ``configure`` asked for: (format, level); None until it is called
_wanted: tuple[str, str] | None = None
_configured = False
_threshold = logging.NOTSET
_LEVELS: Final = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
                  "error": logging.ERROR, "exception": logging.ERROR,
                  "critical": logging.CRITICAL}


def set_redactor(redact: Callable[[Any], Any] | None) -> None:
    global _redactor  # noqa: PLW0603 - the one processor that every logger shares
    _redactor = redact


def _redact(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if _redactor is not None:
        for key, value in list(event.items()):
            event[key] = _redactor(value)
    return event


def configure(fmt: str = "auto", level: str = "warning") -> None:
    """Set up logging for this process; ``fmt`` is auto, console or json. Lines below
    ``level`` are dropped at once; structlog is set up when the first line is written."""
    global _wanted, _configured, _threshold  # noqa: PLW0603 - one configuration per process
    _wanted, _configured = (resolve(fmt), level), False
    _threshold = logging.getLevelNamesMapping().get(level.upper(), logging.WARNING)


def _structlog() -> Any:
    """structlog, configured as asked (left at its defaults when nobody asked)."""
    global _configured  # noqa: PLW0603 - as above
    import structlog  # noqa: PLC0415 - loaded with the first line written (module doc)
    if _wanted is not None and not _configured:
        _configured = True
        fmt, level = _wanted
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
    return structlog


def resolve(fmt: str) -> str:
    return ("console" if sys.stderr.isatty() else "json") if fmt == "auto" else fmt


def current_format() -> str:
    """``console`` or ``json``: the format of this process's logs (auto until configured)."""
    return _wanted[0] if _wanted is not None else resolve("auto")


class Logger:
    """A named logger with bound fields; ``debug`` to ``critical`` and ``exception``
    (inside an ``except`` block) write a line when the level lets them."""

    __slots__ = ("_fields", "_name")

    def __init__(self, name: str | None, fields: Mapping[str, Any] | None = None) -> None:
        self._name = name
        self._fields = dict(fields or {})

    def bind(self, **fields: Any) -> Logger:
        return Logger(self._name, {**self._fields, **fields})

    def _write(self, method: str, event: str, fields: dict[str, Any]) -> None:
        if _LEVELS[method] < _threshold:
            return
        logger = _structlog().get_logger(self._name)
        getattr(logger, method)(event, **self._fields, **fields)

    def debug(self, event: str, **fields: Any) -> None:
        self._write("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._write("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._write("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._write("error", event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        self._write("exception", event, fields)

    def critical(self, event: str, **fields: Any) -> None:
        self._write("critical", event, fields)


def get_logger(name: str | None = None) -> Logger:
    return Logger(name)
