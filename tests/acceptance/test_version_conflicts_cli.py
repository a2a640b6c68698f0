"""A definition changed without a new version cannot start a run: the first run registered
name@version with its hash, a second start with another body is a conflict (exit 3) and
leaves nothing behind."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from devflow import git
from devflow.settings import Settings
from devflow.store import Database, Store
from tests.acceptance.test_definitions_cli import db_snapshot
from tests.conftest import as_json
from tests.unit.malformed_definitions import GOOD_PERSONA, GOOD_TEMPLATE

Cli = Callable[..., subprocess.CompletedProcess[str]]


def _start(cli: Cli, repo: Path, base: str, *options: str, binds: dict[str, str],
           check: int) -> subprocess.CompletedProcess[str]:
    return cli(*options, "run", "start", "--repo", str(repo), "--base", base,
               "-t", "custom@1", "--requirements", "-", "--detach", "--json",
               *[f"--bind={role}={persona}" for role, persona in binds.items()],
               input_text="Add a farewell function.\n", check=check)


def _registered(url: str, kind: str, name: str) -> list[tuple[str, str]]:
    db = Database(url)
    try:
        with db.engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT version, hash FROM definition "
                                        "WHERE kind = :k AND name = :n"), {"k": kind, "n": name})
            return [(str(v), str(h)) for v, h in rows]
    finally:
        db.dispose()


def test_a_template_changed_without_a_new_version_is_refused(
        cli: Cli, settings: Settings, repo: Path, tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    path = templates / "custom.yaml"
    path.write_text(GOOD_TEMPLATE, encoding="utf-8")
    # a second base branch, so that the one-active-run-per-branch limit cannot interfere
    git.run(["branch", "second", "main"], repo)
    binds = {"implementer": "scripted-implementer@1", "reviewer": "scripted-reviewer@1"}
    first = as_json(_start(cli, repo, "main", "--templates-dir", str(templates),
                           binds=binds, check=0))
    assert first["run"]["template"] == "custom@1"
    [(version, digest)] = _registered(settings.database_url, "template", "custom")
    assert (version, digest) == ("1", first["run"]["template_hash"])

    path.write_text(GOOD_TEMPLATE.replace("Make the change.", "Make the change, quickly."),
                    encoding="utf-8")
    before = db_snapshot(settings.database_url)
    result = _start(cli, repo, "second", "--templates-dir", str(templates), binds=binds,
                    check=3)
    error = as_json(result)["error"]
    assert set(error) >= {"code", "message", "hint"}
    assert error["code"] == "template_version_conflict"
    assert "custom@1" in error["message"] and digest[:12] in error["message"]
    assert "version" in error["hint"]
    assert db_snapshot(settings.database_url) == before  # no run, no event, no registration
    store = Store.open(settings.database_url)
    try:
        assert [r.id for r in store.runs.find()] == [first["run"]["id"]]
    finally:
        store.close()
    assert _registered(settings.database_url, "template", "custom") == [("1", digest)]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_persona_changed_without_a_new_version_is_refused(
        cli: Cli, settings: Settings, repo: Path, tmp_path: Path) -> None:
    templates, personas = tmp_path / "templates", tmp_path / "personas"
    templates.mkdir()
    personas.mkdir()
    (templates / "custom.yaml").write_text(GOOD_TEMPLATE, encoding="utf-8")
    persona = personas / "custom-implementer.yaml"
    persona.write_text(GOOD_PERSONA, encoding="utf-8")
    git.run(["branch", "second", "main"], repo)
    options = ("--templates-dir", str(templates), "--personas-dir", str(personas))
    binds = {"implementer": "custom-implementer@1", "reviewer": "scripted-reviewer@1"}
    _start(cli, repo, "main", *options, binds=binds, check=0)
    [(_version, digest)] = _registered(settings.database_url, "persona", "custom-implementer")

    persona.write_text(GOOD_PERSONA.replace("You implement.", "You implement carefully."),
                       encoding="utf-8")
    before = db_snapshot(settings.database_url)
    error = as_json(_start(cli, repo, "second", *options, binds=binds, check=3))["error"]
    assert error["code"] == "persona_version_conflict"
    assert "custom-implementer@1" in error["message"] and error["hint"]
    assert db_snapshot(settings.database_url) == before
    assert before["counts"]["run"] == 1
    assert _registered(settings.database_url, "persona", "custom-implementer") == [
        ("1", digest)]
