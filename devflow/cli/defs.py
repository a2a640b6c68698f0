"""Commands on definitions: templates, personas and schemas (list, show, validate, check).

A list never hides a file: what it left out (malformed YAML, a broken schema, the same
name@version defined twice) is named on stderr with its reason, and under ``skipped``
in ``--json``. ``show`` prints a definition as its file has it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from devflow.cli import checks, output
from devflow.cli.main import State


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
        invalid = [{"file": str(b.path), "error": b.error.to_json()}
                   for b in app.catalog.broken_of(kind)]
        invalid += [{"file": None, "error": e.to_json()} for e in app.catalog.conflicts(kind)]
    return checks.verdicts(valid, invalid, as_json)


def _show(item: Any, as_json: bool) -> None:
    if as_json:
        output.emit_json({"ref": item.ref, "hash": item.hash, "source": str(item.source),
                          "definition": dict(item.definition)})
        return
    click.echo(f"# {item.ref}  sha256 {item.hash}\n# {item.source}")
    text = None
    if item.source is not None:
        try:
            text = Path(item.source).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            text = None  # changed on disk since it was loaded: show what was loaded
    if text is None:
        import yaml
        text = yaml.safe_dump(dict(item.definition), sort_keys=False, allow_unicode=True,
                              width=100)
    click.echo(text, nl=not text.endswith("\n"))


# -- templates ----------------------------------------------------------------------------
@click.group("templates")
def templates() -> None:
    """Workflow templates: roles, phases and gates."""


@templates.command("list", epilog="""\b
Example:
  devflow --templates-dir ./my-templates templates list""")
@click.option("--json", "as_json", is_flag=True, help="The templates (and what was skipped).")
@click.pass_obj
def templates_list(state: State, as_json: bool) -> None:
    """List the templates devflow can see; name the files it had to skip, and why."""
    items = state.app.templates()
    skipped = checks.skipped(state, "template")
    if as_json:
        output.emit_json({"templates": [{"ref": t.ref, "name": t.name, "version": t.version,
                                         "description": t.description, "hash": t.hash,
                                         "phases": [p.key for p in t.phases],
                                         "source": str(t.source)} for t in items],
                          "skipped": skipped})
        return
    output.table(["template", "phases", "gates", "description"],
                 [[t.ref, " → ".join(p.key for p in t.phases), ", ".join(t.gates),
                   t.description] for t in items], wrap=("phases", "description"))
    checks.say_skipped(skipped, "template")


@templates.command("show", epilog="""\b
Examples:
  devflow templates show development@1
  devflow templates show quick --json | jq .definition.phases""")
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="The parsed definition, hash and source.")
@click.pass_obj
def templates_show(state: State, ref: str, as_json: bool) -> None:
    """Show a template as its file has it, with its hash (NAME or NAME@VERSION)."""
    _show(state.app.template(ref), as_json)


@templates.command("validate", epilog=f"""\b
Examples:
  devflow templates validate                     # every template devflow sees
  devflow templates validate my-flow.yaml --json

{checks.VALIDATE_EXIT}""")
@click.argument("files", nargs=-1, type=checks.FILES)
@click.option("--json", "as_json", is_flag=True, help="valid and invalid files as JSON.")
@click.pass_obj
def templates_validate(state: State, files: tuple[Path, ...], as_json: bool) -> int:
    """Check template FILES (default: every template devflow sees)."""
    return _validate(state, "template", files, as_json)


# -- personas -----------------------------------------------------------------------------
@click.group("personas")
def personas() -> None:
    """Personas: agents that fill roles, on a backend."""


@personas.command("list", epilog="""\b
Example:
  devflow personas list --json | jq -r '.personas[] | select(.backend == "codex") | .ref'""")
@click.option("--json", "as_json", is_flag=True, help="The personas (and what was skipped).")
@click.pass_obj
def personas_list(state: State, as_json: bool) -> None:
    """List the personas devflow can see; name the files it had to skip, and why."""
    items = state.app.personas()
    skipped = checks.skipped(state, "persona")
    if as_json:
        output.emit_json({"personas": [{"ref": p.ref, "roles": list(p.roles),
                                        "backend": p.backend, "model": p.model,
                                        "hash": p.hash, "source": str(p.source)} for p in items],
                          "skipped": skipped})
        return
    output.table(["persona", "roles", "backend", "model"],
                 [[p.ref, ", ".join(p.roles), p.backend, p.model or ""] for p in items])
    checks.say_skipped(skipped, "persona")


@personas.command("show", epilog="""\b
Example:
  devflow personas show claude-implementer""")
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="The parsed definition, hash and source.")
@click.pass_obj
def personas_show(state: State, ref: str, as_json: bool) -> None:
    """Show a persona as its file has it, with its hash (NAME or NAME@VERSION)."""
    _show(state.app.persona(ref), as_json)


@personas.command("validate", epilog=f"""\b
Examples:
  devflow personas validate
  devflow personas validate my-persona.yaml

{checks.VALIDATE_EXIT}""")
@click.argument("files", nargs=-1, type=checks.FILES)
@click.option("--json", "as_json", is_flag=True, help="valid and invalid files as JSON.")
@click.pass_obj
def personas_validate(state: State, files: tuple[Path, ...], as_json: bool) -> int:
    """Check persona FILES (default: every persona devflow sees)."""
    return _validate(state, "persona", files, as_json)


# -- schemas ------------------------------------------------------------------------------
@click.group("schemas")
def schemas() -> None:
    """JSON Schemas of artifacts (Draft 2020-12)."""


@schemas.command("list", epilog="""\b
Example:
  devflow --schemas-dir ./schemas schemas list""")
@click.option("--json", "as_json", is_flag=True, help="The schemas (and what was skipped).")
@click.pass_obj
def schemas_list(state: State, as_json: bool) -> None:
    """List schema ids; name the files devflow had to skip, and why."""
    registry = state.app.catalog.schemas
    files = [registry.get(i) for i in registry.ids() if i in registry]
    skipped = checks.skipped(state, "schema")
    if as_json:
        output.emit_json({"schemas": [{"id": f.id, "title": f.title, "file": str(f.path)}
                                      for f in files],
                          "skipped": skipped})
        return
    output.table(["schema", "title", "file"], [[f.id, f.title, f.path] for f in files],
                 wrap=("title", "file"))
    checks.say_skipped(skipped, "schema")


@schemas.command("show", epilog="""\b
Examples:
  devflow schemas show dev/spec@1
  devflow schemas show dev/spec@1 --json | jq .required""")
@click.argument("schema_id")
@click.option("--json", "as_json", is_flag=True, help="The schema as one line of JSON.")
@click.pass_obj
def schemas_show(state: State, schema_id: str, as_json: bool) -> None:
    """Print a schema as its file has it; a broken one is an error that says why."""
    schema = state.app.catalog.schemas.get(schema_id)
    if as_json:
        click.echo(json.dumps(schema.contents))
        return
    try:
        text = schema.path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        text = json.dumps(schema.contents, indent=2) + "\n"
    click.echo(text, nl=not text.endswith("\n"))


@schemas.command("validate", epilog=f"""\b
Examples:
  devflow schemas validate                      # every schema devflow sees
  devflow schemas validate schemas/acme/ticket.json --json

{checks.VALIDATE_EXIT}""")
@click.argument("files", nargs=-1, type=checks.FILES)
@click.option("--json", "as_json", is_flag=True, help="valid and invalid files as JSON.")
@click.pass_obj
def schemas_validate(state: State, files: tuple[Path, ...], as_json: bool) -> int:
    """Check schema FILES (default: every schema devflow sees): JSON, a short $id, a valid
    Draft 2020-12 schema whose $refs resolve, no other contents under the same id."""
    from devflow.errors import DevflowError
    registry = state.app.catalog.schemas
    valid: list[dict[str, Any]] = []
    invalid: list[dict[str, Any]] = []
    if files:
        for path in files:
            try:
                checked = registry.check_file(path)
                valid.append({"file": str(path), "ref": checked.id})
            except DevflowError as exc:
                invalid.append({"file": str(path), "error": exc.to_json()})
    else:
        for schema_id in registry.ids():
            try:
                registry.check_refs(schema_id)
                valid.append({"file": str(registry.get(schema_id).path), "ref": schema_id})
            except DevflowError as exc:
                invalid.append({"file": str(registry.get_file(schema_id).path),
                                "error": exc.to_json()})
        invalid += [{"file": str(path), "error": error.to_json()}
                    for path, error in registry.broken]
    return checks.verdicts(valid, invalid, as_json)


@schemas.command("check", epilog="""\b
Example:
  devflow schemas check --schema dev/spec@1 .devflow/spec.json

Exit 0 when the document is valid, 2 when it is not (each problem with its JSON
pointer), 4 when the file or the schema does not exist.""")
@click.option("--schema", "schema_id", required=True, help="The schema id, e.g. dev/spec@1.")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="The verdict and the errors as JSON.")
@click.pass_obj
def schemas_check(state: State, schema_id: str, file: Path, as_json: bool) -> int:
    """Check a JSON document FILE against a schema."""
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
