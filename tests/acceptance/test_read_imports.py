"""What a read command imports, on both databases: only what it needs (issue 21).

A command that reads runs or definitions imports no Alembic (the schema's revision is
one query), no jsonschema (a definition checked once per version is remembered), no
agent backend and no engine, no ORM; and off a terminal (as here) not structlog or
rich either: tables are printed plain, every value whole. Each command runs as a real
process; what it imported is read from ``sys.modules`` when it exits. This test, not
a timing, guards the start-up of read commands (docs/performance.md has their times);
another does the same for the two commands of a gated run (``run start``, ``approve``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from devflow.app import App
from devflow.requests import StartRequest
from devflow.settings import Settings
from tests.conftest import SCRIPTED

#: a read command never imports these
NEVER = ("alembic", "mako", "jsonschema", "referencing", "devflow.backends", "devflow.engine",
         "devflow.sweep", "sqlalchemy.orm", "sqlmodel", "pydantic", "filelock", "pathspec",
         "cronsim", "devflow.api", "fastapi", "starlette", "uvicorn")
#: nor, off a terminal, these
QUIET = ("structlog", "rich")
#: prints sys.modules' names (as JSON, to the file in $PROBE_OUT) when the command exits
PROBE = """
import atexit, json, os, sys
atexit.register(lambda: json.dump(sorted(sys.modules), open(os.environ["PROBE_OUT"], "w")))
from devflow.cli.main import main
main(sys.argv[1:])
"""


def _imports(settings: Settings, home: Path, out: Path, *args: str,
             printed: list[str] | None = None) -> set[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEVFLOW_")}
    env.update({"DEVFLOW_HOME": str(home), "DEVFLOW_DATABASE_URL": settings.database_url,
                "DEVFLOW_WORKSPACE": str(settings.workspace), "PROBE_OUT": str(out)})
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True,
                          text=True, env=env, timeout=120, check=False)
    assert done.returncode == 0, f"devflow {' '.join(args)}: {done.stdout}\n{done.stderr}"
    if printed is not None:
        printed.append(done.stdout)
    return set(json.loads(out.read_text(encoding="utf-8")))


def _loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == n or m.startswith(f"{n}.") for n in names))


@pytest.fixture
def gated_run(app: App, repo: Path) -> tuple[str, int]:
    """A run waiting at its first gate (scripted agents): (run id, approval id)."""
    view = app.start(StartRequest(repo=repo, base="main", template="development@1",
                                  requirements="Add a farewell.", actor="tester",
                                  binds=SCRIPTED))
    assert view.gate is not None, view.run.failure_reason
    return view.run.id, view.gate.id


def test_read_commands_import_only_what_they_need(settings: Settings, home: Path,
                                                  tmp_path: Path,
                                                  gated_run: tuple[str, int]) -> None:
    run_id, approval_id = gated_run
    out = tmp_path / "modules.json"
    _imports(settings, home, out, "templates", "list")  # the first sight of the definitions
    commands = [
        ["run", "status", run_id], ["run", "list"], ["events", run_id],
        ["approvals", "list"], ["approvals", "show", str(approval_id)], ["workers", "list"],
        ["templates", "list"], ["templates", "show", "development@1"], ["personas", "list"],
        ["personas", "show", "scripted-planner"], ["schemas", "list"],
        ["schemas", "show", "dev/spec@1"], ["--version"],
    ]
    found = {}
    printed: list[str] = []
    for args in commands:
        modules = _imports(settings, home, out, *args, printed=printed)
        found[" ".join(args[:2])] = _loaded(modules, NEVER + QUIET)
        if args[0] != "--version":
            modules = _imports(settings, home, out, *args, "--json")
            found[" ".join(args[:2]) + " --json"] = _loaded(modules, NEVER + QUIET)
    assert {k: v for k, v in found.items() if v} == {}
    assert run_id in printed[1].split()  # run list: a whole id, not cut for a narrow table
    # listing backends loads them, and still no validator, migration tool or engine
    modules = _imports(settings, home, out, "backends", "list", "--json")
    assert "devflow.backends.scripted" in modules
    assert _loaded(modules, tuple(n for n in NEVER if n != "devflow.backends") + QUIET) == []


#: the commands of a gated run (``run start`` to the gate, ``approve`` on to the next)
#: import neither what serves HTTP, migrates or runs triggers, nor the agent backends
#: their personas do not name; off a terminal, not rich either
NEVER_IN_A_RUN = ("alembic", "mako", "sqlalchemy.orm", "sqlmodel", "pydantic", "devflow.api",
                  "fastapi", "starlette", "uvicorn", "devflow.sweep", "devflow.store.triggers",
                  "devflow.store.deliveries", "devflow.ticks", "devflow.hooks",
                  "devflow.triggerdefs", "devflow.cron", "cronsim", "devflow.backends.codex",
                  "devflow.backends.aider", "devflow.backends.claude_code", "rich")
#: nor, on SQLite, PostgreSQL's dialect and driver
POSTGRES = ("sqlalchemy.dialects.postgresql", "psycopg")


def test_a_gated_runs_commands_import_only_what_they_need(
        settings: Settings, home: Path, tmp_path: Path, repo: Path) -> None:
    out = tmp_path / "modules.json"
    printed: list[str] = []
    binds = [f"--bind={role}={persona}" for role, persona in SCRIPTED.items()]
    requirements = tmp_path / "requirements.md"
    requirements.write_text("Add a farewell.\n", encoding="utf-8")
    _imports(settings, home, out, "personas", "list")  # the first sight of the definitions
    started = _imports(settings, home, out, "run", "start", "--repo", str(repo), "--base",
                       "main", "--template", "development@1", "--requirements",
                       str(requirements), *binds, "--json", printed=printed)
    run = json.loads(printed[-1])["run"]
    assert run["state"] == "awaiting_approval", run
    approved = _imports(settings, home, out, "approve", run["id"], "--json", printed=printed)
    assert json.loads(printed[-1])["run"]["state"] == "awaiting_approval"  # the next gate
    never = NEVER_IN_A_RUN + (POSTGRES if settings.database_url.startswith("sqlite") else ())
    assert {"run start": _loaded(started, never), "approve": _loaded(approved, never)} == {
        "run start": [], "approve": []}
    # what they did need: the engine, the store, the scripted backend, the validator
    for modules in (started, approved):
        assert {"devflow.engine.drive", "devflow.store.runs", "devflow.backends.scripted",
                "jsonschema"} <= modules


def test_a_database_never_migrated_is_migrated_by_the_first_command(
        tmp_path: Path) -> None:
    """The other side of the rule: Alembic is loaded when there is something to migrate."""
    home = tmp_path / "fresh"
    home.mkdir()
    settings = Settings.load(env={}, home=str(home), workspace=str(tmp_path / "ws"))
    modules = _imports(settings, home, tmp_path / "modules.json", "run", "list", "--json")
    assert "alembic" in modules
    modules = _imports(settings, home, tmp_path / "modules.json", "run", "list", "--json")
    assert _loaded(modules, NEVER + QUIET) == []
