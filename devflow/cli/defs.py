"""Commands on definitions: templates, personas and schemas (list, show, validate, check)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from devflow.cli import output
from devflow.cli.main import State

_FILES = click.Path(path_type=Path, exists=False, dir_okay=False)


def _validate(state: State, kind: str, files: tuple[Path, ...], as_json: bool) -> int:
    from devflow.errors import DevflowError
    app = state.app
    valid: list[dict[str, Any]] = []
    invalid: list[dict[str, Any]] = []
    if files:
        for path in files:
            try:
                checked = app.check_definition(path, kind)
                valid.append({"file": str(path), "ref": checked.ref, "hash": checked.hash})
            except DevflowError as exc:
                invalid.append({"file": str(path), "error": exc.to_json()})
    else:
        items = app.templates() if kind == "template" else app.personas()
        valid = [{"file": str(i.source), "ref": i.ref, "hash": i.hash} for i in items]
        broken = [b for b in app.catalog.broken() if b.kind == kind]
        invalid = [{"file": str(b.path), "error": b.error.to_json()} for b in broken]
        invalid += [{"file": None, "error": e.to_json()} for e in app.catalog.conflicts()
                    if e.code.startswith(kind)]
    if as_json:
        output.emit_json({"valid": valid, "invalid": invalid})
    else:
        for item in valid:
            click.echo(f"ok       {item['ref']:<28} {item['file']}")
        for item in invalid:
            err = item["error"]
            click.secho(f"invalid  {item['file'] or ''}", fg="red", err=True)
            click.echo(f"  [{err['code']}] {err['message']}".replace("\n", "\n  "), err=True)
            if err.get("hint"):
                click.echo(f"  hint: {err['hint']}", err=True)
    return 2 if invalid else 0


def _show(item: Any, as_json: bool) -> None:
    if as_json:
        output.emit_json({"ref": item.ref, "hash": item.hash, "source": str(item.source),
                          "definition": dict(item.definition)})
        return
    import yaml
    click.echo(f"# {item.ref}  sha256 {item.hash}\n# {item.source}")
    click.echo(yaml.safe_dump(dict(item.definition), sort_keys=False, allow_unicode=True))


@click.group("templates")
def templates() -> None:
    """Workflow templates: roles, phases and gates."""


@templates.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def templates_list(state: State, as_json: bool) -> None:
    """List the templates devflow can see."""
    items = state.app.templates()
    if as_json:
        output.emit_json({"templates": [{"ref": t.ref, "name": t.name, "version": t.version,
                                         "description": t.description, "hash": t.hash,
                                         "phases": [p.key for p in t.phases],
                                         "source": str(t.source)} for t in items]})
        return
    output.table(["template", "phases", "gates", "description"],
                 [[t.ref, " → ".join(p.key for p in t.phases), ", ".join(t.gates),
                   t.description[:60]] for t in items])


@templates.command("show")
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def templates_show(state: State, ref: str, as_json: bool) -> None:
    """Show a template's definition and hash."""
    _show(state.app.template(ref), as_json)


@templates.command("validate")
@click.argument("files", nargs=-1, type=_FILES)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def templates_validate(state: State, files: tuple[Path, ...], as_json: bool) -> int:
    """Check template FILES (default: every template devflow sees); exit 2 if any is invalid."""
    return _validate(state, "template", files, as_json)


@click.group("personas")
def personas() -> None:
    """Personas: agents that fill roles, on a backend."""


@personas.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def personas_list(state: State, as_json: bool) -> None:
    """List the personas devflow can see."""
    items = state.app.personas()
    if as_json:
        output.emit_json({"personas": [{"ref": p.ref, "roles": list(p.roles),
                                        "backend": p.backend, "model": p.model,
                                        "hash": p.hash, "source": str(p.source)} for p in items]})
        return
    output.table(["persona", "roles", "backend", "model"],
                 [[p.ref, ", ".join(p.roles), p.backend, p.model or ""] for p in items])


@personas.command("show")
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def personas_show(state: State, ref: str, as_json: bool) -> None:
    """Show a persona's definition and hash."""
    _show(state.app.persona(ref), as_json)


@personas.command("validate")
@click.argument("files", nargs=-1, type=_FILES)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def personas_validate(state: State, files: tuple[Path, ...], as_json: bool) -> int:
    """Check persona FILES (default: every persona devflow sees); exit 2 if any is invalid."""
    return _validate(state, "persona", files, as_json)


@click.group("schemas")
def schemas() -> None:
    """JSON Schemas of artifacts (Draft 2020-12)."""


@schemas.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def schemas_list(state: State, as_json: bool) -> None:
    """List schema ids."""
    registry = state.app.catalog.schemas
    files = [registry.get(i) for i in registry.ids()]
    if as_json:
        output.emit_json({"schemas": [{"id": f.id, "title": f.title, "file": str(f.path)}
                                      for f in files],
                          "broken": [{"file": str(p), "error": e.to_json()}
                                     for p, e in registry.broken]})
        return
    output.table(["schema", "title", "file"], [[f.id, f.title, f.path] for f in files])


@schemas.command("show")
@click.argument("schema_id")
@click.option("--json", "as_json", is_flag=True, help="The schema on one line.")
@click.pass_obj
def schemas_show(state: State, schema_id: str, as_json: bool) -> None:
    """Print a schema."""
    click.echo(json.dumps(state.app.catalog.schemas.get(schema_id).contents,
                          indent=2 if not as_json else None))


@schemas.command("check")
@click.option("--schema", "schema_id", required=True, help="The schema id, e.g. dev/spec@1.")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def schemas_check(state: State, schema_id: str, file: Path, as_json: bool) -> int:
    """Check a JSON document FILE against a schema; exit 2 when it is invalid."""
    issues = state.app.check_document(schema_id, file)
    if as_json:
        output.emit_json({"valid": not issues, "schema": schema_id, "file": str(file),
                          "errors": [{"pointer": i.pointer, "message": i.message}
                                     for i in issues]})
    elif issues:
        click.secho(f"{file}: invalid against {schema_id}", fg="red", err=True)
        for issue in issues:
            click.echo(f"  {issue}", err=True)
    else:
        click.echo(f"{file}: valid against {schema_id}")
    return 2 if issues else 0


def register(cli: click.Group) -> None:
    for group in (templates, personas, schemas):
        cli.add_command(group)
