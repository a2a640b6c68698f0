"""A persona's backend options, checked against its backend's options schema by the real
CLI: `personas validate` names the file, the line, the place and the code, with the
option meant; `run start` with such a persona refuses before any run exists."""

from __future__ import annotations

import subprocess
import textwrap
from collections.abc import Callable
from pathlib import Path

from devflow.settings import Settings
from tests.acceptance.test_definitions_cli import db_snapshot
from tests.conftest import SQLITE_ONLY, as_json

Cli = Callable[..., subprocess.CompletedProcess[str]]

TYPO = textwrap.dedent("""\
    name: careful-reviewer
    version: 1
    roles: [reviewer]
    backend: claude-code
    model: claude-sonnet-4-5
    options:
      permission_mode: plan
      alowed_tools: [Read]
      timeout: 20m
    """)


def _persona(tmp_path: Path, text: str = TYPO) -> Path:
    directory = tmp_path / "personas"
    directory.mkdir(exist_ok=True)
    path = directory / "careful-reviewer.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@SQLITE_ONLY
def test_validate_names_the_file_the_line_and_the_option_meant(cli: Cli,
                                                               tmp_path: Path) -> None:
    path = _persona(tmp_path)
    result = cli("personas", "validate", str(path), check=2)
    assert f"{path}:8: at /options/alowed_tools: unknown option 'alowed_tools': did you " \
           f"mean 'allowed_tools'?" in result.stderr, result.stderr
    assert "[backend_option_invalid]" in result.stderr
    assert "docs/backends.md" in result.stderr  # the hint
    body = as_json(cli("personas", "validate", str(path), "--json", check=2))
    [problem] = body["invalid"][0]["error"]["details"]["problems"]
    assert problem == {"code": "backend_option_invalid", "where": f"{path}:8",
                       "pointer": "/options/alowed_tools",
                       "message": "unknown option 'alowed_tools': did you mean "
                                  "'allowed_tools'? (known: allowed_tools, args, bin, "
                                  "disallowed_tools, permission_mode, timeout)"}


@SQLITE_ONLY
def test_every_problem_of_the_options_is_named_at_its_line(cli: Cli, tmp_path: Path) -> None:
    path = _persona(tmp_path, TYPO.replace("permission_mode: plan", "permission_mode: yolo")
                    .replace("timeout: 20m", "timeout: soon"))
    body = as_json(cli("personas", "validate", str(path), "--json", check=2))
    problems = body["invalid"][0]["error"]["details"]["problems"]
    assert [(p["where"], p["pointer"]) for p in problems] == [
        (f"{path}:8", "/options/alowed_tools"), (f"{path}:7", "/options/permission_mode"),
        (f"{path}:9", "/options/timeout")]
    assert "'yolo' is not one of" in problems[1]["message"]
    assert "'soon' is not a duration" in problems[2]["message"]


@SQLITE_ONLY
def test_a_run_is_not_started_with_a_persona_whose_options_are_refused(
        cli: Cli, settings: Settings, repo: Path, tmp_path: Path) -> None:
    path = _persona(tmp_path, TYPO.replace("backend: claude-code", "backend: scripted")
                    .replace("model: claude-sonnet-4-5\n", "")
                    .replace("  permission_mode: plan\n  alowed_tools: [Read]\n"
                             "  timeout: 20m\n", "  scenaro: ok\n"))
    before = db_snapshot(settings.database_url)
    result = cli("--personas-dir", str(path.parent), "run", "start", "--repo", str(repo),
                 "--base", "main", "-t", "development@1", "--requirements", "-", "--detach",
                 "--json", "--bind=reviewer=careful-reviewer@1",
                 *[f"--bind={r}=scripted-{r}@1" for r in ("planner", "implementer")],
                 input_text="Add a farewell function.\n", check=2)
    error = as_json(result)["error"]
    assert error["code"] == "backend_option_invalid"
    assert f"{path}:6" in error["message"] and "did you mean 'scenario'?" in error["message"]
    assert db_snapshot(settings.database_url) == before


@SQLITE_ONLY
def test_backends_show_prints_the_options_schema(cli: Cli) -> None:
    text = cli("backends", "show", "command", check=0).stdout
    assert "argv (required)" in text and "version_argv" in text
    body = as_json(cli("backends", "show", "codex", "--json", check=0))
    assert body["backend"] == "codex"
    assert body["options"]["additionalProperties"] is False
    assert {"args", "bin", "timeout", "prices", "sandbox"} <= set(body["options"]["properties"])
    error = as_json(cli("backends", "show", "nope", "--json", check=2))["error"]
    assert error["code"] == "backend_unavailable"
