"""Commands of operators: db upgrade|current, backends list."""

from __future__ import annotations

import click

from devflow.cli import output
from devflow.cli.main import State


@click.group("db")
def db() -> None:
    """The database: migrations."""


@db.command("upgrade")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def db_upgrade(state: State, as_json: bool) -> None:
    """Bring the database schema up to date (needed once for PostgreSQL)."""
    before, after = state.app.db_upgrade()
    if as_json:
        output.emit_json({"before": before, "after": after})
    else:
        click.echo(f"database at revision {after}" + ("" if before == after
                                                      else f" (was {before or 'empty'})"))


@db.command("current")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def db_current(state: State, as_json: bool) -> None:
    """Show the database's URL and revision."""
    info = state.app.db_current()
    if as_json:
        output.emit_json(info)
    else:
        output.kv([("database", info["url"]), ("revision", info["revision"] or "none"),
                   ("head", info["head"])])


@click.group("backends")
def backends_group() -> None:
    """Agent backends."""


@backends_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def backends_list(state: State, as_json: bool) -> None:
    """Which backends are available here, with versions."""
    rows = state.app.backends()
    if as_json:
        output.emit_json({"backends": rows})
        return
    output.table(["backend", "available", "version", "personas", "why not"],
                 [[r["backend"], "yes" if r["available"] else "no", r["version"] or "",
                   ", ".join(r["personas"]), "" if r["available"] else r["reason"]]
                  for r in rows])


def register(cli: click.Group) -> None:
    cli.add_command(db)
    cli.add_command(backends_group)
