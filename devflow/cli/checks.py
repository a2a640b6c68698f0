"""What the definition commands share: the files a ``validate`` takes, its verdicts and
exit status, and what a list left out of the catalog, and why."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from devflow.cli import output
from devflow.cli.main import State

if TYPE_CHECKING:
    from devflow.errors import DevflowError

FILES = click.Path(path_type=Path, exists=False, dir_okay=False)
VALIDATE_EXIT = "Exit 0 when every file is valid, 2 when one is not (each is named with why)."


def _entry(file: Path | None, error: DevflowError) -> dict[str, Any]:
    return {"file": str(file) if file else None, "code": str(error.code),
            "message": error.message, "hint": error.hint}


def skipped(state: State, kind: str) -> list[dict[str, Any]]:
    """What the catalog left out of ``kind``, and why."""
    catalog = state.app.catalog
    found = [_entry(b.path, b.error) for b in catalog.broken_of(kind)]
    if kind != "schema":  # schema conflicts are among the broken files already
        found += [_entry(None, e) for e in catalog.conflicts(kind)]
    return found


def say_skipped(skipped: list[dict[str, Any]], kind: str) -> None:
    if not skipped:
        return
    click.secho(f"skipped {len(skipped)} {kind} file(s):", fg="yellow", err=True)
    for item in skipped:
        click.echo(f"  {item['file'] or '-'}: [{item['code']}] "
                   + item["message"].replace("\n", "\n    "), err=True)
    click.echo(f"  (`devflow {kind}s validate` checks them)", err=True)


def verdicts(valid: list[dict[str, Any]], invalid: list[dict[str, Any]], as_json: bool) -> int:
    if as_json:
        output.emit_json({"valid": valid, "invalid": invalid})
    else:
        for item in valid:
            click.echo(f"ok       {item['ref']:<28} {item['file']}"
                       + (f"  ({item['note']})" if item.get("note") else ""))
        for item in invalid:
            err = item["error"]
            click.secho(f"invalid  {item['file'] or ''}", fg="red", err=True)
            click.echo(f"  [{err['code']}] {err['message']}".replace("\n", "\n  "), err=True)
            if err.get("hint"):
                click.echo(f"  hint: {err['hint']}", err=True)
    return 2 if invalid else 0
