"""`devflow templates|personas|schemas …` as a subprocess: malformed definitions exit 2, name
the file and the place, and leave the database unchanged."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from devflow.catalog import BUILTIN_ROOT
from devflow.settings import Settings
from devflow.store import Database
from tests.acceptance.cli_fork import run_devflow
from tests.conftest import SQLITE_ONLY, as_json
from tests.unit.malformed_definitions import CASES, GOOD_PERSONA, GOOD_TEMPLATE, Case

Cli = Callable[..., subprocess.CompletedProcess[str]]
#: The kinds the foundation issue names: one case each, run one by one.
REQUIRED = ["bad-yaml", "unknown-schema", "unknown-role", "duplicate-phase",
            "path-escape-dotdot", "path-escape-absolute", "missing-field", "wrong-type",
            "undefined-gate", "bad-duration", "bad-persona-backend"]


def _env(settings: Settings, home: Path) -> dict[str, str]:
    """The environment the `cli` fixture gives its subprocess (see tests/conftest.py)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEVFLOW_")}
    env.update({"DEVFLOW_HOME": str(home), "DEVFLOW_DATABASE_URL": settings.database_url,
                "DEVFLOW_WORKSPACE": str(settings.workspace), "DEVFLOW_ACTOR": "tester",
                "DEVFLOW_LOG_FORMAT": "json"})
    return env


def _run_many(env: dict[str, str], argvs: Sequence[Sequence[str]]
              ) -> list[subprocess.CompletedProcess[str]]:
    """Several `devflow` commands, two at a time (the machine has two cores)."""
    def one(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        return run_devflow(args, env)
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(one, argvs))


def db_snapshot(url: str) -> dict[str, Any]:
    """Row counts of every table, and for SQLite the bytes of the file."""
    db = Database(url)
    try:
        names = sorted(sa.inspect(db.engine).get_table_names())
        with db.engine.connect() as conn:
            counts = {n: conn.execute(sa.text(f'SELECT count(*) FROM "{n}"')).scalar_one()
                      for n in names}
            version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).all()
    finally:
        db.dispose()
    snapshot: dict[str, Any] = {"counts": counts, "version": version}
    path = sa.engine.make_url(url).database
    if url.startswith("sqlite") and path:
        snapshot["sha256"] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return snapshot


def _command(case: Case) -> str:
    return "templates" if case.kind == "template" else "personas"


# -- one malformed file per invocation ----------------------------------------------------------
@pytest.mark.slow  # eleven processes; the batch test below covers the same cases in one
@SQLITE_ONLY
def test_each_malformed_definition_exits_2_naming_file_and_place(
        settings: Settings, home: Path, tmp_path: Path) -> None:
    cases = [c for c in CASES if c.name in REQUIRED]
    assert len(cases) == len(REQUIRED) == 11
    paths = [c.write(tmp_path) for c in cases]
    before = db_snapshot(settings.database_url)
    results = _run_many(_env(settings, home), [[_command(c), "validate", str(p)]
                                               for c, p in zip(cases, paths, strict=True)])
    for case, path, result in zip(cases, paths, results, strict=True):
        context = f"{case.name}:\n{result.stdout}\n{result.stderr}"
        assert result.returncode == 2, context
        assert f"[{case.code}]" in result.stderr, context
        assert f"{path}:{case.line}" in result.stderr, context  # the file and the line
        if case.pointer is not None:
            assert f"at {case.pointer or '/'}:" in result.stderr, context  # the JSON pointer
        assert "hint: " in result.stderr, context
        assert result.stdout == "", context
    assert db_snapshot(settings.database_url) == before


@SQLITE_ONLY
def test_validate_json_lists_every_file_with_its_error(settings: Settings, home: Path,
                                                       tmp_path: Path) -> None:
    """The JSON shape, each file's code and place, and nothing written (the next test shows
    that validating reads no database at all, whatever its engine)."""
    good = tmp_path / "good.yaml"
    good.write_text(GOOD_TEMPLATE, encoding="utf-8")
    good_persona = tmp_path / "good-persona.yaml"
    good_persona.write_text(GOOD_PERSONA, encoding="utf-8")
    absent = tmp_path / "absent.yaml"
    templates = [c for c in CASES if c.kind == "template"]
    paths = [c.write(tmp_path) for c in templates]
    persona_case = next(c for c in CASES if c.kind == "persona")
    bad_persona = persona_case.write(tmp_path)
    before = db_snapshot(settings.database_url)
    result, persona_result = _run_many(_env(settings, home), [
        ["templates", "validate", str(good), *map(str, paths), str(absent), "--json"],
        ["personas", "validate", str(good_persona), str(bad_persona), "--json"]])
    assert result.returncode == 2, result.stderr
    body = as_json(result)
    assert set(body) == {"valid", "invalid"}
    assert [(v["file"], v["ref"]) for v in body["valid"]] == [(str(good), "custom@1")]
    assert len(body["valid"][0]["hash"]) == 64
    assert [i["file"] for i in body["invalid"]] == [*map(str, paths), str(absent)]
    for case, path, item in zip(templates, paths, body["invalid"], strict=False):
        error = item["error"]
        assert error["code"] == case.code, case.name
        assert error["message"] and error["hint"], case.name
        assert f"{path}:{case.line}" in error["message"], case.name
        if case.pointer is not None:
            first = error["details"]["problems"][0]
            assert (first["pointer"], first["where"]) == (case.pointer or "/",
                                                          f"{path}:{case.line}"), case.name
    assert body["invalid"][-1]["error"]["code"] == "file_not_found"

    assert persona_result.returncode == 2, persona_result.stderr
    body = as_json(persona_result)
    assert [v["ref"] for v in body["valid"]] == ["custom-implementer@1"]
    [item] = body["invalid"]
    assert item["file"] == str(bad_persona)
    assert item["error"]["code"] == "definition_invalid"
    assert item["error"]["details"]["problems"][0]["pointer"] == "/backend"
    assert f"{bad_persona}:{persona_case.line}" in item["error"]["message"]
    assert db_snapshot(settings.database_url) == before


def test_validate_needs_no_database(tmp_path: Path) -> None:
    """Checking files reads no database: an unreachable one and a fresh home stay untouched."""
    good = tmp_path / "good.yaml"
    good.write_text(GOOD_TEMPLATE, encoding="utf-8")
    fresh = tmp_path / "fresh-home"
    env = _env(Settings.load(env={}, home=str(fresh)), fresh)
    env["DEVFLOW_DATABASE_URL"] = "postgresql+psycopg://nobody@127.0.0.1:1/none"
    text, as_js = _run_many(env, [["templates", "validate", str(good)],
                                  ["templates", "validate", str(good), "--json"]])
    assert text.returncode == 0, text.stderr
    assert "custom@1" in text.stdout and str(good) in text.stdout
    assert as_js.returncode == 0, as_js.stderr
    assert as_json(as_js)["invalid"] == []
    assert not fresh.exists()


# -- version conflicts with the built-ins -------------------------------------------------------
def _changed_development(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    text = (BUILTIN_ROOT / "templates" / "development.yaml").read_text(encoding="utf-8")
    path = directory / "development.yaml"
    path.write_text(text.replace("Write the specification", "Write a specification"),
                    encoding="utf-8")
    return path


@SQLITE_ONLY
def test_a_changed_builtin_is_a_conflict_in_validate(settings: Settings, home: Path,
                                                     tmp_path: Path) -> None:
    path = _changed_development(tmp_path / "user-templates")
    one, every = _run_many(_env(settings, home), [
        ["templates", "validate", str(path), "--json"],
        # the same file seen through a user directory, with every template checked
        ["--templates-dir", str(path.parent), "templates", "validate", "--json"]])
    assert one.returncode == 2, one.stderr
    body = as_json(one)
    assert body["valid"] == []
    assert body["invalid"][0]["file"] == str(path)
    assert body["invalid"][0]["error"]["code"] == "template_version_conflict"
    assert every.returncode == 2, every.stderr
    body = as_json(every)
    assert [i["error"]["code"] for i in body["invalid"]] == ["template_version_conflict"]
    assert str(path) in body["invalid"][0]["error"]["message"]
    assert {"development@1", "quick@1"} <= {v["ref"] for v in body["valid"]}


@SQLITE_ONLY
def test_a_changed_builtin_cannot_start_a_run(cli: Cli, settings: Settings, repo: Path,
                                              tmp_path: Path) -> None:
    path = _changed_development(tmp_path / "user-templates")
    before = db_snapshot(settings.database_url)
    result = cli("--templates-dir", str(path.parent), "run", "start", "--repo", str(repo),
                 "--base", "main", "-t", "development@1", "--requirements", "-", "--detach",
                 "--json", *[f"--bind={r}=scripted-{r}@1"
                             for r in ("planner", "implementer", "reviewer")],
                 input_text="Add a farewell function.\n", check=3)
    error = as_json(result)["error"]
    assert error["code"] == "template_version_conflict"
    assert str(path) in error["message"] and error["hint"]
    assert db_snapshot(settings.database_url) == before


# -- schemas ------------------------------------------------------------------------------------
def test_schemas_check_exits_0_for_a_valid_document_and_2_for_an_invalid_one(
        tmp_path: Path) -> None:
    sample = BUILTIN_ROOT / "devflow" / "backends" / "samples" / "review.json"
    good = tmp_path / "review.json"
    good.write_text(sample.read_text(encoding="utf-8"), encoding="utf-8")
    document = json.loads(sample.read_text(encoding="utf-8"))
    document["verdict"] = "maybe"
    bad = tmp_path / "bad-review.json"
    bad.write_text(json.dumps(document), encoding="utf-8")
    not_json = tmp_path / "not.json"
    not_json.write_text("{verdict: ", encoding="utf-8")
    env = _env(Settings.load(env={}, home=str(tmp_path / "h")), tmp_path / "h")
    ok, invalid, broken, unknown = _run_many(env, [
        ["schemas", "check", "--schema", "dev/review@1", str(good), "--json"],
        ["schemas", "check", "--schema", "dev/review@1", str(bad)],
        ["schemas", "check", "--schema", "dev/review@1", str(not_json), "--json"],
        ["schemas", "check", "--schema", "dev/nothing@1", str(good), "--json"],
    ])
    assert ok.returncode == 0, ok.stderr
    assert as_json(ok) == {"valid": True, "schema": "dev/review@1", "file": str(good),
                           "errors": []}
    assert invalid.returncode == 2, invalid.stderr
    assert f"{bad}: invalid against dev/review@1" in invalid.stderr
    assert "/verdict: " in invalid.stderr
    assert broken.returncode == 2, broken.stdout + broken.stderr
    body = as_json(broken)
    assert body["valid"] is False
    assert [e["pointer"] for e in body["errors"]] == [""]
    assert "not valid JSON at line 1" in body["errors"][0]["message"]
    assert unknown.returncode == 4 and as_json(unknown)["error"]["code"] == "schema_not_found"


@SQLITE_ONLY
def test_schemas_list_shows_broken_files_beside_the_good_ones(cli: Cli, tmp_path: Path) -> None:
    extra = tmp_path / "schemas"
    extra.mkdir()
    (extra / "ok.json").write_text(json.dumps({
        "$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "acme/ok@1",
        "title": "OK", "type": "object"}), encoding="utf-8")
    (extra / "broken.json").write_text('{"$id": "acme/broken@1", ', encoding="utf-8")
    body = as_json(cli("--schemas-dir", str(extra), "schemas", "list", "--json", check=0))
    ids = {s["id"] for s in body["schemas"]}
    assert {"acme/ok@1", "dev/spec@1", "common/final-report@1"} <= ids
    assert [(b["file"], b["code"]) for b in body["skipped"]] == [
        (str(extra / "broken.json"), "schema_invalid")]


@SQLITE_ONLY
def test_schemas_show_takes_json(cli: Cli) -> None:
    result = cli("schemas", "show", "dev/spec@1", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert as_json(result)["$id"] == "dev/spec@1"


# -- lists and directories from the environment ---------------------------------------------
@SQLITE_ONLY
def test_definition_directories_from_the_environment(cli: Cli, tmp_path: Path) -> None:
    first, second = tmp_path / "t1", tmp_path / "t2"
    first.mkdir()
    second.mkdir()
    (first / "custom.yaml").write_text(GOOD_TEMPLATE, encoding="utf-8")
    (second / "other.yaml").write_text(GOOD_TEMPLATE.replace("name: custom", "name: other"),
                                       encoding="utf-8")
    personas = tmp_path / "p"
    personas.mkdir()
    (personas / "p.yaml").write_text(GOOD_PERSONA, encoding="utf-8")
    env = {"DEVFLOW_TEMPLATES_DIR": f"{first}{os.pathsep}{second}",
           "DEVFLOW_PERSONAS_DIR": str(personas)}
    listed = as_json(cli("templates", "list", "--json", env=env, check=0))["templates"]
    refs = {t["ref"]: t for t in listed}
    assert {"custom@1", "other@1", "development@1", "quick@1"} <= set(refs)
    assert refs["custom@1"]["source"] == str(first / "custom.yaml")
    assert refs["custom@1"]["phases"] == ["implement", "review"]
    shown = as_json(cli("personas", "show", "custom-implementer", "--json", env=env, check=0))
    assert shown["ref"] == "custom-implementer@1" and shown["definition"]["backend"] == "scripted"
