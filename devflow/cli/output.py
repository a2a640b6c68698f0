"""Rendering: JSON for machines (one stable shape per command), text and tables for people.

Off a terminal, tables are plain aligned columns with every value in full: a run id or
a gate name is never cut, whatever the width. On a terminal, rich draws them and
wraps long free text instead of cutting it. Values in ``key=value`` text are JSON
(``bindings={"planner":"scripted-planner@1"}``), costs are rounded for people
(``$0.0202``); ``--json`` keeps them exact.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import sys
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from devflow.errors import ControlFlow

if TYPE_CHECKING:
    from devflow.errors import DevflowError


class PipeClosed(ControlFlow):
    """The reader of our output went away (``devflow events RUN | head -1``)."""


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def emit_line(value: Any) -> None:
    click.echo(json.dumps(value, ensure_ascii=False, default=str))


# -- the command a person can type -------------------------------------------------------
@functools.cache
def program() -> str:
    """How to run this devflow again: ``devflow`` when that is the one on PATH, else the
    path it was started by (``.venv/bin/devflow`` when the venv is not activated)."""
    started = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if started is None or started.name != "devflow":
        return "devflow"  # python -m devflow.cli.main, or embedded: the documented name
    found = shutil.which("devflow")
    try:
        if found and Path(found).resolve() == started.resolve():
            return "devflow"
    except OSError:
        pass
    return os.path.abspath(started)  # works from any directory


_COMMAND = re.compile(r"(?<![\w/.-])devflow(?= [a-z])")


def commands(text: str) -> str:
    """``text`` with each ``devflow <command>`` spelled the way that works here."""
    name = program()
    return text if name == "devflow" or not text else _COMMAND.sub(lambda _: name, text)


# -- errors -------------------------------------------------------------------------------
def error(exc: DevflowError, want_json: bool) -> None:
    if want_json:
        body = exc.to_json()
        body["hint"] = commands(body.get("hint") or "")
        click.echo(json.dumps({"error": body}, indent=2, default=str))
        return
    click.secho(f"error [{exc.code}]: {commands(exc.message)}", fg="red", err=True)
    if exc.hint:
        click.echo(f"  hint: {commands(exc.hint)}", err=True)


def failure(code: str, message: str, hint: str, want_json: bool) -> None:
    """An error that is not a ``DevflowError`` (an interruption): the same two shapes."""
    if want_json:
        click.echo(json.dumps({"error": {"code": code, "message": message,
                                         "hint": commands(hint)}}, indent=2))
        return
    click.secho(f"{code}: {message}", fg="yellow", err=True)
    if hint:
        click.echo(f"  {commands(hint)}", err=True)


def usage_error(exc: click.ClickException, want_json: bool) -> None:
    if want_json:
        click.echo(json.dumps({"error": {"code": "invalid_input", "message": exc.format_message(),
                                         "hint": "see --help"}}, indent=2))
        return
    exc.show(file=sys.stderr)


def crash(exc: BaseException, want_json: bool) -> None:
    import traceback  # a crash only
    text = "".join(traceback.format_exception(exc))
    if want_json:
        click.echo(json.dumps({"error": {"code": "internal_error",
                                         "message": f"{type(exc).__name__}: {exc}",
                                         "hint": "this is a bug in devflow; please report it "
                                                 "with the traceback (run with -v)"}}, indent=2))
    else:
        click.secho(f"error [internal_error]: {type(exc).__name__}: {exc}", fg="red", err=True)
        click.echo("  hint: this is a bug in devflow; please report it with this traceback:",
                   err=True)
    click.echo(text, err=True)


def silence_stdout() -> None:
    """After the reader closed the pipe: nothing more goes to it, not even the final flush
    (which would print 'Exception ignored ... BrokenPipeError' at exit)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


# -- values and tables --------------------------------------------------------------------
def money(value: float) -> str:
    return f"${value:.4f}"


def value_text(key: str, value: Any) -> str:
    """One value of ``key=value`` text: plain words bare, the rest as JSON, costs rounded."""
    if isinstance(value, float) and not isinstance(value, bool):
        return money(value) if key.startswith("cost") or key.endswith("cost_usd") \
            else f"{value:.6g}"
    if isinstance(value, str):
        plain = value and not any(c.isspace() or c in "\"'=" for c in value)
        return value if plain else json.dumps(value, ensure_ascii=False)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def pairs_text(payload: dict[str, Any], keys: Collection[str] | None = None) -> str:
    chosen = payload if keys is None else {k: payload[k] for k in keys if k in payload}
    return " ".join(f"{k}={value_text(k, v)}" for k, v in chosen.items()
                    if v not in (None, "", [], {}))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None,
          *, wrap: Collection[str] = ()) -> None:
    """Columns of values in full; on a terminal the columns named in ``wrap`` (free text)
    wrap, the others (ids, names, states) keep their whole width."""
    cells = [["" if c is None else str(c) for c in row] for row in rows]
    if not sys.stdout.isatty():
        _plain(headers, cells, title)
        return
    from rich.console import Console
    from rich.table import Table
    grid = Table(title=title, show_lines=False, header_style="bold")
    for index, header in enumerate(headers):
        if header in wrap:
            grid.add_column(header, overflow="fold")
        else:
            width = max([len(header), *(len(row[index]) for row in cells)])
            grid.add_column(header, no_wrap=True, min_width=width)
    for row in cells:
        grid.add_row(*row)
    Console().print(grid)


def _plain(headers: Sequence[str], cells: list[list[str]], title: str | None) -> None:
    if title:
        click.echo(title)
    shown = [list(headers), *([c or "-" for c in row] for row in cells)]
    widths = [max(len(row[i]) for row in shown) for i in range(len(headers))]
    for row in shown:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def paragraphs(text: str, indent: str = "") -> str:
    """Text for people: each line wrapped to the terminal (at most 100 columns), its line
    breaks kept."""
    import textwrap
    width = max(min(shutil.get_terminal_size((100, 24)).columns, 100), 40)

    def wrap(line: str) -> str:
        inner = indent + " " * (len(line) - len(line.lstrip()))
        return textwrap.fill(line, width, initial_indent=indent, subsequent_indent=inner)
    return "\n".join(wrap(line) if line.strip() else "" for line in text.strip().splitlines())


def kv(pairs: Sequence[tuple[str, Any]]) -> None:
    width = max((len(k) for k, _ in pairs), default=0)
    for key, value in pairs:
        if value not in (None, ""):
            click.echo(f"{key.rjust(width)}  {value}")
