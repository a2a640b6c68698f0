"""Rendering: JSON for machines (one stable shape per command), text and tables for people."""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from devflow.errors import DevflowError


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def emit_line(value: Any) -> None:
    click.echo(json.dumps(value, ensure_ascii=False, default=str))


def error(exc: DevflowError, want_json: bool) -> None:
    if want_json:
        click.echo(json.dumps({"error": exc.to_json()}, indent=2, default=str))
        return
    click.secho(f"error [{exc.code}]: {exc.message}", fg="red", err=True)
    if exc.hint:
        click.echo(f"  hint: {exc.hint}", err=True)


def usage_error(exc: click.ClickException, want_json: bool) -> None:
    if want_json:
        click.echo(json.dumps({"error": {"code": "invalid_input", "message": exc.format_message(),
                                         "hint": "see --help"}}, indent=2))
        return
    exc.show(file=sys.stderr)


def crash(exc: BaseException, want_json: bool) -> None:
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


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> None:
    if not sys.stdout.isatty():
        _plain_table(headers, rows, title)
        return
    from rich.console import Console
    from rich.table import Table
    grid = Table(title=title, show_lines=False, header_style="bold")
    for header in headers:
        grid.add_column(header)
    for row in rows:
        grid.add_row(*("" if c is None else str(c) for c in row))
    Console().print(grid)


def _plain_table(headers: Sequence[str], rows: Sequence[Sequence[Any]],
                 title: str | None) -> None:
    """Off a terminal: every value whole (an id is never cut), columns two spaces apart,
    and no rich to import (it is a fifth of a read command's start-up)."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row]
                                            for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    if title:
        click.echo(title)
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def kv(pairs: Sequence[tuple[str, Any]]) -> None:
    width = max((len(k) for k, _ in pairs), default=0)
    for key, value in pairs:
        if value not in (None, ""):
            click.echo(f"{key.rjust(width)}  {value}")
