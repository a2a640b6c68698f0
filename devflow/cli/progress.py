"""Live progress while a run is driven: a table on a terminal, event lines otherwise.

It is the engine's observer: it gets each event once its transaction committed, and
short notes from the agent's output (what it is doing now). Off a terminal it follows
the log format, so stderr is one stream: JSON records (the logs' ``timestamp``,
``level`` and ``event``, the event's type, then ``run_id``, ``seq``, ``phase`` and
``payload`` as ``events --json`` has them) beside JSON logs, text
lines beside console logs. A reader that went away ends the printing, not the run.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import click

from devflow import events, logs, model
from devflow.cli import output

#: the events that end a phase, for its row
_PHASE_ENDS = frozenset(t.name for t in (events.PHASE_COMPLETED, events.PHASE_FAILED,
                                         events.PHASE_SKIPPED))

@dataclass
class _Row:
    state: str = "pending"
    attempt: int = 0
    started: float | None = None
    ended: float | None = None
    note: str = ""


class Progress:
    def __init__(self, *, quiet: bool = False) -> None:
        self.quiet = quiet
        self.live_mode = not quiet and sys.stderr.isatty()
        self.json_lines = logs.current_format() == "json"
        self._rows: dict[str, _Row] = {}
        self._lock = threading.Lock()
        self._live: Any = None
        self._status = ""

    def __enter__(self) -> Progress:
        if self.live_mode:
            from rich.console import Console
            from rich.live import Live
            self._live = Live(get_renderable=self._render, console=Console(stderr=True),
                              refresh_per_second=4, transient=False)
            self._live.start()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        if self._live is not None:
            self._live.stop()

    # -- the observer ----------------------------------------------------------------------
    def event(self, event: model.Event) -> None:
        with self._lock:
            self._apply(event)
        if self.quiet or self.live_mode:
            return
        if self.json_lines:
            line = json.dumps({"timestamp": model.iso(event.ts), "level": "info",
                               "event": event.type, "logger": "devflow.progress",
                               "run_id": event.run_id, "seq": event.seq, "phase": event.phase,
                               "payload": dict(event.payload)}, ensure_ascii=False, default=str)
        else:
            detail = _detail(event)
            line = (f"{event.ts:%H:%M:%S} {event.phase or '-':<12} {event.type}"
                    + (f"  {detail}" if detail else ""))
        try:
            with self._lock:
                click.echo(line, err=True)
        except (BrokenPipeError, ValueError):  # stderr closed: stop printing, drive on
            self.quiet = True

    def progress(self, run_id: str, phase: str, text: str) -> None:
        with self._lock:
            self._rows.setdefault(phase, _Row()).note = text[:80]

    def warning(self, text: str) -> None:
        """Printed even when quiet (--json, --detach): on standard error, never missed."""
        if self._live is not None:
            from rich.text import Text
            self._live.console.print(Text.assemble(("warning: ", "bold red"), text))
        else:
            click.echo(f"warning: {text}", err=True)

    def _apply(self, event: model.Event) -> None:
        if event.type == events.RUN_CREATED.name:
            self._status = f"run {event.run_id}"
        if event.phase is None:
            if event.type.startswith("run."):
                self._status = f"run {event.run_id}: {event.type[4:]}"
            return
        row = self._rows.setdefault(event.phase, _Row())
        attempt = event.payload.get("attempt")
        if isinstance(attempt, int):
            row.attempt = attempt
        kind = event.type
        if kind == events.PHASE_STARTED.name:
            row.state, row.note = "running", "agent starting"
            row.started = row.started or time.monotonic()
            row.ended = None
        elif kind == events.AGENT_EXITED.name:
            row.state, row.note = "validating", ""
        elif kind == events.PHASE_ARTIFACT_INVALID.name:
            row.state = "repairing" if event.payload.get("repair") else "failed"
            row.note = f"{event.payload.get('code')}"
        elif kind in _PHASE_ENDS:
            row.state = kind.split(".")[1]
            row.ended = time.monotonic()
        elif kind == events.APPROVAL_REQUESTED.name:
            row.state = "awaiting approval"
            row.note = f"gate {event.payload.get('gate')}"
        elif kind == events.PHASE_CHANGES_REQUESTED.name:
            row.state, row.note = "pending", "changes requested"
        elif kind == events.PHASE_INTERRUPTED.name:
            row.state, row.note = "pending", "interrupted"
            row.ended = time.monotonic()

    def _render(self) -> Any:
        from rich.table import Table
        table = Table(title=self._status, title_justify="left", show_edge=False)
        for header in ("phase", "state", "attempt", "elapsed", "agent"):
            table.add_column(header)
        now = time.monotonic()
        with self._lock:
            for key, row in self._rows.items():
                elapsed = ""
                if row.started is not None:
                    elapsed = f"{(row.ended or now) - row.started:.1f}s"
                style = {"completed": "green", "failed": "red",
                         "awaiting approval": "yellow"}.get(row.state, "")
                table.add_row(key, f"[{style}]{row.state}[/]" if style else row.state,
                              str(row.attempt or ""), elapsed, row.note)
        return table


def _detail(event: model.Event) -> str:
    keys = ("attempt", "code", "exit_code", "gate", "action", "actor", "sha", "reason", "phases",
            "by", "cost_usd")
    return output.pairs_text(dict(event.payload), keys)
