"""Bad input through the real ``devflow`` command is refused as bad input (exit 2, its own
code), never ``internal_error``, and creates nothing: requirements that are not text or
are blank, an alias bomb in a definition (under a memory limit), JSON nested beyond the
limit, a schema ``$ref`` that resolves to nothing."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from devflow import git
from devflow.settings import Settings
from tests.conftest import SQLITE_ONLY, as_json
from tests.integration.helpers import QUICK_CLI_BINDS, branches, cli_env, write_template
from tests.unit.malformed_definitions import GOOD_TEMPLATE, alias_bomb

Cli = Callable[..., subprocess.CompletedProcess[str]]
DRAFT = "https://json-schema.org/draft/2020-12/schema"
#: what the CLI needs (about 300 MB of address space for a whole run with its threads);
#: the alias bomb needs gigabytes, and ran out of this as MemoryError before it was refused
MEMORY_LIMIT = 1024 * 1024 * 1024
DEEP = b"[" * 3000 + b"]" * 3000


def _limited(settings: Settings, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """``devflow ARGS`` with its address space (and its children's) capped."""
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "devflow.cli.main", *args],
                            capture_output=True, text=True, env=cli_env(settings),
                            preexec_fn=cap, timeout=120, check=False)
    return result, time.monotonic() - started


def _nothing_created(cli: Cli, settings: Settings, repo: Path, branches_before: list[str]) -> None:
    assert as_json(cli("run", "list", "--json", check=0))["runs"] == []
    assert not settings.workspace.exists() or not any(settings.workspace.iterdir())
    assert branches(repo) == branches_before
    assert git.out(["worktree", "list", "--porcelain"], repo).count("worktree ") == 1


def _error(result: subprocess.CompletedProcess[str], code: str, exit_code: int = 2) -> str:
    assert result.returncode == exit_code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    body = as_json(result)["error"]
    assert body["code"] == code, body
    return str(body["message"])


# -- requirements ----------------------------------------------------------------------------
def test_requirements_that_are_not_text_or_blank_are_refused(cli: Cli, settings: Settings,
                                                             repo: Path, tmp_path: Path) -> None:
    before = branches(repo)
    start = ["run", "start", "--repo", str(repo), "--base", "main", "--template", "quick@1",
             *QUICK_CLI_BINDS, "--json"]
    files = {"latin1.md": "Add a café.\n".encode("latin-1"), "binary.bin": b"PK\x03\x04\x00\x01",
             "empty.md": b"", "blank.md": b" \n\t\n"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    cases: list[tuple[list[str], str | None, str]] = [
        (["-r", str(tmp_path / "latin1.md")], None,
         f"requirements file {tmp_path / 'latin1.md'} is not UTF-8 text: byte 0xe9 at "
         "offset 9"),
        (["-r", str(tmp_path / "binary.bin")], None,
         f"requirements file {tmp_path / 'binary.bin'} looks binary: control byte 0x03 at "
         "offset 2"),
        (["-r", str(tmp_path / "empty.md")], None, f"{tmp_path / 'empty.md'} is empty"),
        (["-r", str(tmp_path / "blank.md"), "--objective", "A fine objective"], None,
         f"{tmp_path / 'blank.md'} holds only white space"),
        (["-r", "-"], "", "standard input is empty"),
        (["-r", "-"], "abc\x00", "standard input looks binary: control byte 0x00 at offset 3"),
        (["--objective", "   "], None, "--objective is blank"),
        ([], None, "a run needs --requirements FILE (or -) or --objective TEXT"),
        (["--objective", "x", "--max-cost", "nan"], None, "--max-cost must be a positive"),
        (["--objective", "x", "--max-cost", "inf"], None, "--max-cost must be a positive"),
    ]
    for args, stdin, says in cases:
        result = cli(*start, *args, input_text=stdin)
        assert says in _error(result, "invalid_input"), args
    _nothing_created(cli, settings, repo, before)


# -- YAML aliases, under a memory limit -------------------------------------------------------
@SQLITE_ONLY
def test_an_alias_bomb_fails_fast_within_a_memory_limit(settings: Settings, tmp_path: Path) -> None:
    personas, templates = tmp_path / "personas", tmp_path / "templates"
    personas.mkdir()
    (personas / "custom-implementer.yaml").write_text(alias_bomb(), encoding="utf-8")
    bomb_template = GOOD_TEMPLATE.replace("description: A small workflow for tests.\n", (
        alias_bomb().split("  scenarios:\n")[1].split("prompt:")[0].replace("    l", "  l")
        .join(["x-lol:\n", "description: A small workflow for tests.\n"])))
    write_template(templates, "custom", bomb_template)
    dirs = ["--personas-dir", str(personas), "--templates-dir", str(templates)]
    for args in (["personas", "validate", str(personas / "custom-implementer.yaml")],
                 ["personas", "validate"], ["personas", "list"],
                 ["templates", "validate", str(templates / "custom.yaml")],
                 ["templates", "validate"], ["templates", "list"]):
        result, seconds = _limited(settings, *dirs, *args, "--json")
        assert "Traceback" not in result.stderr and "MemoryError" not in result.stderr, args
        assert seconds < 30, (args, seconds)
        if args[1] == "list":  # the broken file is set aside, the others are listed
            assert result.returncode == 0, result.stderr
            continue
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        errors = [i["error"] for i in as_json(result)["invalid"]]
        assert [e["code"] for e in errors] == ["yaml_invalid"], errors
        assert "anchors and aliases are not allowed" in errors[0]["message"]


def test_run_start_beside_an_alias_bomb_persona_completes_within_a_memory_limit(
        cli: Cli, settings: Settings, repo: Path, tmp_path: Path) -> None:
    personas = tmp_path / "personas"
    personas.mkdir()
    (personas / "custom-implementer.yaml").write_text(alias_bomb(), encoding="utf-8")
    result, seconds = _limited(settings, "--personas-dir", str(personas), "run", "start",
                               "--repo", str(repo), "--base", "main", "--template", "quick@1",
                               "--objective", "Add a farewell.", *QUICK_CLI_BINDS, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert as_json(result)["run"]["state"] == "completed"
    assert seconds < 60


# -- nested JSON from users -------------------------------------------------------------------
@SQLITE_ONLY
def test_json_nested_beyond_the_limit_from_a_user_is_refused(cli: Cli, tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_bytes(DEEP)
    checked = cli("schemas", "check", "--schema", "dev/spec@1", str(deep), "--json")
    assert checked.returncode == 2, checked.stdout + checked.stderr
    body = as_json(checked)
    assert body["valid"] is False
    assert "nested more than 64 arrays or objects deep" in body["errors"][0]["message"]
    sections = cli("approve", "no-such-run", "--sections-file", str(deep), "--json")
    assert "nested more than 64" in _error(sections, "invalid_input")
    schemas = tmp_path / "schemas"
    schemas.mkdir()
    (schemas / "deep.json").write_bytes(b'{"$id": "acme/deep@1", "x": ' + DEEP + b"}")
    listed = as_json(cli("--schemas-dir", str(schemas), "schemas", "list", "--json", check=0))
    assert [(b["file"], b["code"]) for b in listed["skipped"]] == [
        (str(schemas / "deep.json"), "schema_invalid")]


# -- $ref that resolve to nothing -------------------------------------------------------------
def _dangling(tmp_path: Path) -> tuple[Path, Path]:
    schemas = tmp_path / "schemas"
    schemas.mkdir()
    (schemas / "outer.json").write_text(json.dumps({
        "$schema": DRAFT, "$id": "acme/outer@1", "type": "object",
        "properties": {"inner": {"$ref": "acme/inner@1"}}}), encoding="utf-8")
    (schemas / "inner.json").write_text(json.dumps({
        "$schema": DRAFT, "$id": "acme/inner@1", "type": "object",
        "properties": {"finding": {"$ref": "common/findng@1"}}}), encoding="utf-8")
    text = GOOD_TEMPLATE.replace("schema: dev/implementation@1", "schema: acme/outer@1")
    template = write_template(tmp_path / "templates", "custom", text)
    return schemas, template


def test_a_ref_that_resolves_to_nothing_is_refused_before_any_agent_runs(
        cli: Cli, settings: Settings, repo: Path, tmp_path: Path) -> None:
    schemas, template = _dangling(tmp_path)
    before = branches(repo)
    dirs = ["--schemas-dir", str(schemas), "--templates-dir", str(template.parent)]
    validated = cli(*dirs, "templates", "validate", str(template), "--json")
    assert validated.returncode == 2, validated.stdout + validated.stderr
    [invalid] = as_json(validated)["invalid"]
    assert invalid["error"]["code"] == "schema_invalid"
    message = invalid["error"]["message"]
    assert f"{template}:" in message and "at /phases/0/artifact/schema" in message
    assert ("phase 'implement' uses schema acme/outer@1, where $ref 'common/findng@1' in "
            "schema acme/inner@1 cannot be resolved (no schema has that id)") in message
    started = cli(*dirs, "run", "start", "--repo", str(repo), "--base", "main", "--template",
                  "custom@1", "--objective", "Add a farewell.", "--bind",
                  "implementer=scripted-implementer@1", "--bind",
                  "reviewer=scripted-reviewer@1", "--json")
    assert "$ref 'common/findng@1' in schema acme/inner@1" in _error(started, "schema_invalid")
    _nothing_created(cli, settings, repo, before)
    assert not os.path.exists(settings.workspace)
