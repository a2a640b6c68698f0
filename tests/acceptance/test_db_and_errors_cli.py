"""`devflow db upgrade|current`, the embedded database's self-upgrade, and errors as JSON with
the exit codes of devflow.errors — the real command as a subprocess."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devflow.errors import Code, Kind, kind_of
from devflow.settings import Settings
from devflow.store import Database, migrate
from devflow.store.migrations import HEAD
from tests.acceptance.test_definitions_cli import _env, _run_many, db_snapshot
from tests.conftest import SQLITE_ONLY, _pg_admin, as_json, pg_url_for


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty' / 'devflow.db'}"
        return
    request.getfixturevalue("pg_template")  # skips (or fails in CI) without a server
    name = f"devflow_cli_{uuid.uuid4().hex[:12]}"
    with _pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield pg_url_for(name)
    with _pg_admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _env_for(url: str, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEVFLOW_")}
    env.update({"DEVFLOW_HOME": str(home), "DEVFLOW_DATABASE_URL": url,
                "DEVFLOW_LOG_FORMAT": "json"})
    return env


# -- db upgrade | current -----------------------------------------------------------------------
def test_db_upgrade_from_empty_then_current(empty_url: str, tmp_path: Path) -> None:
    if empty_url.startswith("sqlite"):
        Path(empty_url.removeprefix("sqlite:///")).parent.mkdir()
    env = _env_for(empty_url, tmp_path / "home")
    [upgraded] = _run_many(env, [["db", "upgrade", "--json"]])
    assert upgraded.returncode == 0, upgraded.stderr
    assert as_json(upgraded) == {"before": None, "after": HEAD}
    [current] = _run_many(env, [["db", "current", "--json"]])
    assert current.returncode == 0, current.stderr
    assert as_json(current) == {"url": empty_url, "revision": HEAD, "head": HEAD}
    db = Database(empty_url)
    try:
        assert migrate.current(db) == HEAD
    finally:
        db.dispose()


def test_db_current_hides_a_password(tmp_path: Path) -> None:
    url = "postgresql+psycopg://devflow:s3cret@127.0.0.1:1/nowhere"
    [result] = _run_many(_env_for(url, tmp_path), [["db", "current", "--json"]])
    # the server is unreachable: an error, and the password is not printed
    assert result.returncode != 0
    assert "error" in as_json(result)
    assert "s3cret" not in result.stdout + result.stderr


def test_an_unreachable_database_is_a_database_error(tmp_path: Path) -> None:
    url = "postgresql+psycopg://devflow@127.0.0.1:1/nowhere"
    [result] = _run_many(_env_for(url, tmp_path), [["run", "list", "--json"]])
    error = as_json(result)["error"]
    assert error["code"] == "database_error", error
    assert result.returncode == 1
    assert "DEVFLOW_DATABASE_URL" in error["hint"]


def test_the_embedded_database_upgrades_itself_on_first_use(tmp_path: Path) -> None:
    home = tmp_path / "fresh-home"
    env = _env(Settings.load(env={}, home=str(home)), home)
    env.pop("DEVFLOW_DATABASE_URL")  # the default: $DEVFLOW_HOME/devflow.db
    [listed] = _run_many(env, [["run", "list", "--json"]])
    assert listed.returncode == 0, listed.stderr
    assert as_json(listed) == {"runs": []}
    path = home / "devflow.db"
    assert path.is_file()
    db = Database(f"sqlite:///{path}")
    try:
        assert migrate.current(db) == HEAD
    finally:
        db.dispose()


# -- errors as JSON, with their exit codes ------------------------------------------------------
@pytest.mark.parametrize(("code", "kind", "exit_code"), [
    (Code.YAML_INVALID, Kind.INVALID, 2),
    (Code.PATH_ESCAPE, Kind.INVALID, 2),
    (Code.RUN_NOT_FOUND, Kind.NOT_FOUND, 4),
    (Code.TEMPLATE_VERSION_CONFLICT, Kind.CONFLICT, 3),
    (Code.ILLEGAL_TRANSITION, Kind.CONFLICT, 3),
    (Code.DATABASE_NOT_MIGRATED, Kind.CONFLICT, 3),
    (Code.AGENT_FAILED, Kind.FAILED, 1),
    (Code.INTERNAL, Kind.FAILED, 1),
])
def test_codes_fix_the_exit_code_and_http_status(code: Code, kind: Kind, exit_code: int) -> None:
    assert kind_of(code) is kind
    assert kind.exit_code == exit_code
    assert kind.http_status == {2: 422, 3: 409, 4: 404, 1: 500}[exit_code]


def test_error_codes_are_unique_stable_strings() -> None:
    values = [c.value for c in Code]
    assert len(values) == len(set(values))
    assert all(v == v.lower() and " " not in v for v in values)
    assert Code.TEMPLATE_VERSION_CONFLICT == "template_version_conflict"


@SQLITE_ONLY
def test_errors_print_json_with_the_exit_code_of_their_kind(settings: Settings, home: Path,
                                                            tmp_path: Path) -> None:
    not_a_repo = tmp_path / "plain-dir"
    not_a_repo.mkdir()
    before = db_snapshot(settings.database_url)
    status, show, persona, usage, bad_repo, text = _run_many(_env(settings, home), [
        ["run", "status", "nope", "--json"],
        ["templates", "show", "nope", "--json"],
        ["personas", "show", "nope@3", "--json"],
        ["run", "start", "--json"],  # --template is required: a usage error
        ["run", "start", "--repo", str(not_a_repo), "--base", "main", "-t", "quick@1",
         "--objective", "x", "--detach", "--json"],
        ["run", "status", "nope"],  # without --json: the error goes to stderr
    ])
    expected = [(status, 4, "run_not_found"), (show, 4, "template_not_found"),
                (persona, 4, "persona_not_found"), (usage, 2, "invalid_input"),
                (bad_repo, 2, "not_a_git_repo")]
    for result, exit_code, code in expected:
        context = f"{code}: {result.stdout}\n{result.stderr}"
        assert result.returncode == exit_code, context
        body = as_json(result)
        assert set(body) == {"error"}, context
        error = body["error"]
        assert {"code", "message", "hint"} <= set(error), context
        assert error["code"] == code, context
        assert error["message"] and error["hint"], context
    assert "nope" in as_json(status)["error"]["message"]
    assert "development@1" in as_json(show)["error"]["hint"]  # names the known templates
    assert db_snapshot(settings.database_url) == before
    assert text.returncode == 4 and text.stdout == ""
    assert "error [run_not_found]" in text.stderr and "hint: " in text.stderr
