"""What a newcomer trips over (issue 21), through the real ``devflow`` command: closed pipes,
tables cut short, definitions skipped without a word, Ctrl-C and SIGTERM of a foreground
run, an abort from another shell, stderr's one format, failures and timeouts that say
what happened, section verdicts in the report, definitions shown as written, hints that
name a devflow that works, and ``run list --repo`` from a subdirectory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devflow.app import App
from devflow.catalog import BUILTIN_ROOT
from devflow.settings import Settings
from tests.conftest import SQLITE_ONLY, as_json
from tests.gates_support import decide, start
from tests.integration.helpers import (
    QUICK_CLI_BINDS,
    cli_env,
    procs_of_run,
    quick,
    requirements_file,
    write_template,
)

Cli = Callable[..., subprocess.CompletedProcess[str]]


def _noise(stderr: str) -> list[str]:
    """Lines of stderr a quiet ending would not print."""
    return [line for line in stderr.splitlines()
            if "Traceback" in line or "error" in line.lower() or "Exception" in line]


# -- pipes and tables ------------------------------------------------
def test_a_closed_pipe_ends_devflow_quietly(app: App, repo: Path, settings: Settings) -> None:
    run_id = app.start(quick(repo)).run.id
    devflow = f"{sys.executable} -m devflow.cli.main"
    for command in (f"run status {run_id}", f"events {run_id}", f"events {run_id} --json",
                    "run list", "approvals list", f"report {run_id}"):
        for reader in ("head -1", "true"):  # reads one line / reads nothing at all
            shell = f"{devflow} {command} | {reader} >/dev/null; echo rc=${{PIPESTATUS[0]}}"
            done = subprocess.run(["bash", "-c", shell], capture_output=True, text=True,
                                  env=cli_env(settings), timeout=120, check=False)
            assert done.stdout.strip() in ("rc=0", "rc=141"), (command, reader, done)
            assert not _noise(done.stderr), (command, reader, done.stderr)


@SQLITE_ONLY
def test_tables_off_a_terminal_print_every_value_in_full(app: App, repo: Path,
                                                         cli: Cli) -> None:
    long_id = "a-run-id-long-enough-to-be-cut-in-any-table-0042"
    started = app.start(quick(repo, run_id=long_id))
    assert started.run.id == long_id
    gated = start(app, repo, base="main", run_id="gated")  # development@1 at spec_review
    listed = cli("run", "list", check=0).stdout
    assert long_id in listed and "…" not in listed
    assert str(repo.resolve()) in listed
    approvals = cli("approvals", "list", check=0).stdout
    assert "gated" in approvals and "spec_review" in approvals and "…" not in approvals
    header, *rows = approvals.splitlines()
    assert header.split() == ["id", "run", "phase", "gate", "round", "state", "opened",
                              "deadline"]
    assert rows[0].split()[:4] == [str(gated.gate.id if gated.gate else ""), "gated", "spec",
                                   "spec_review"]


# -- definitions: skipped files are named, shown as written --------------------------
BROKEN_SCHEMA = {"$schema": "https://json-schema.org/draft/2020-12/schema",
                 "$id": "acme/ticket@1", "type": "object",
                 "properties": {"title": {"type": "string", "minLength": -1}}}
USES_IT = """\
    name: ticketed
    version: 1
    description: Uses a broken schema.
    roles:
      implementer:
    phases:
      - key: build
        title: Build
        roles: [implementer]
        instructions: Build it.
        artifact: {path: .devflow/ticket.json, schema: acme/ticket@1}
    """


@SQLITE_ONLY
def test_lists_name_the_files_they_skipped_and_why(cli: Cli, repo: Path,
                                                   tmp_path: Path) -> None:
    templates, personas, schemas = (tmp_path / n for n in ("t", "p", "s"))
    write_template(templates, "ticketed", USES_IT)
    (templates / "torn.yaml").write_text("name: torn\nphases: [unclosed\n", encoding="utf-8")
    personas.mkdir()
    (personas / "torn.yaml").write_text("name: [x\n", encoding="utf-8")
    schemas.mkdir()
    (schemas / "ticket.json").write_text(json.dumps(BROKEN_SCHEMA), encoding="utf-8")
    env = {"DEVFLOW_TEMPLATES_DIR": str(templates), "DEVFLOW_PERSONAS_DIR": str(personas),
           "DEVFLOW_SCHEMAS_DIR": str(schemas)}

    for kind, files in (("templates", ["ticketed.yaml", "torn.yaml"]),
                        ("personas", ["torn.yaml"]), ("schemas", ["ticket.json"])):
        text = cli(kind, "list", env=env, check=0)
        for name in files:
            assert name in text.stderr, (kind, text.stderr)
        body = as_json(cli(kind, "list", "--json", env=env, check=0))
        skipped = {Path(s["file"]).name: s for s in body["skipped"]}
        assert set(skipped) == set(files), (kind, body["skipped"])
        assert all(s["code"] and s["message"] for s in skipped.values())
    listed = as_json(cli("templates", "list", "--json", env=env, check=0))
    torn = next(s for s in listed["skipped"] if s["file"].endswith("torn.yaml"))
    assert torn["code"] == "yaml_invalid"
    why = next(s for s in listed["skipped"] if s["file"].endswith("ticketed.yaml"))
    assert "acme/ticket@1" in why["message"] and "broken" in why["message"]

    shown = cli("schemas", "show", "acme/ticket@1", "--json", env=env, check=2)
    error = as_json(shown)["error"]
    assert error["code"] == "schema_invalid" and "minLength" in error["message"]
    started = cli("run", "start", "--repo", str(repo), "--template", "ticketed",
                  "--objective", "x", "--bind", "implementer=scripted-implementer", "--json",
                  env=env, check=2)
    assert "is broken" in as_json(started)["error"]["message"]
    validated = as_json(cli("schemas", "validate", "--json", env=env, check=2))
    assert [Path(i["file"]).name for i in validated["invalid"]] == ["ticket.json"]
    assert {v["ref"] for v in validated["valid"]} >= {"dev/spec@1", "common/final-report@1"}
    good = tmp_path / "good.json"
    good.write_text(json.dumps({**BROKEN_SCHEMA, "$id": "acme/good@1", "properties": {
        "item": {"$ref": "common/finding@1"}}}), encoding="utf-8")
    dangling = tmp_path / "dangling.json"
    dangling.write_text(json.dumps({**BROKEN_SCHEMA, "$id": "acme/dangling@1", "properties": {
        "item": {"$ref": "acme/nowhere@1"}}}), encoding="utf-8")
    files = as_json(cli("schemas", "validate", str(good), str(dangling), "--json", check=2))
    assert [v["ref"] for v in files["valid"]] == ["acme/good@1"]
    assert "acme/nowhere@1" in files["invalid"][0]["error"]["message"]


@SQLITE_ONLY
def test_show_prints_the_definition_as_its_file_has_it(cli: Cli) -> None:
    for kind, ref, path in (("templates", "development@1", "templates/development.yaml"),
                            ("personas", "claude-implementer", "personas/claude-implementer.yaml")):
        text = (BUILTIN_ROOT / path).read_text(encoding="utf-8")
        shown = cli(kind, "show", ref, check=0).stdout
        assert text in shown, kind
        assert shown.count("\n\n\n") == text.count("\n\n\n")  # no blank lines added
        parsed = as_json(cli(kind, "show", ref, "--json", check=0))
        assert parsed["source"] == str(BUILTIN_ROOT / path)
        assert isinstance(parsed["definition"], dict) and parsed["definition"]["version"]
    schema = (BUILTIN_ROOT / "schemas" / "dev" / "spec.v1.json")
    if schema.exists():
        assert schema.read_text(encoding="utf-8") in cli("schemas", "show", "dev/spec@1",
                                                         check=0).stdout


@SQLITE_ONLY
def test_backends_list_says_what_the_command_backend_needs(cli: Cli) -> None:
    rows = {r["backend"]: r for r in as_json(cli("backends", "list", "--json", check=0))[
        "backends"]}
    assert rows["command"]["available"] is True
    assert "argv" in rows["command"]["reason"]
    assert rows["scripted"]["available"] is True


# -- Ctrl-C, SIGTERM, and an abort from another shell -------------------------------------------
def _foreground(settings: Settings, repo: Path, tmp_path: Path, run_id: str,
                *more: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "devflow.cli.main", *more, "run", "start", "--repo", str(repo),
         "--base", "main", "--template", "quick@1", "--requirements",
         str(requirements_file(tmp_path)), *QUICK_CLI_BINDS, "--scenario",
         "implement=slow:120", "--run-id", run_id],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(settings))


def _until_agent_started(proc: subprocess.Popen[str]) -> list[dict[str, Any]]:
    """stderr's records up to the agent's start; each one must be JSON (one format)."""
    assert proc.stderr is not None
    records = []
    for line in proc.stderr:
        records.append(json.loads(line))
        if records[-1].get("event") == "agent.started":
            return records
    raise AssertionError(f"no agent.started; exit {proc.wait()}: {records}")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_foreground_run_is_left_runnable_and_says_so(
        app: App, cli: Cli, repo: Path, settings: Settings, tmp_path: Path,
        signum: signal.Signals) -> None:
    run_id = f"stopped-{signum.name.lower()}"
    proc = _foreground(settings, repo, tmp_path, run_id)
    records = _until_agent_started(proc)
    assert {r["logger"] for r in records} == {"devflow.progress"}
    assert all({"timestamp", "level", "event", "run_id", "seq", "payload"} <= set(r)
               for r in records)
    agents = [p.pid for p in procs_of_run(run_id)]
    assert agents
    # while the agent works, `run status` says its phase is running
    status = cli("run", "status", run_id, check=0).stdout
    assert any(line.split()[1:3] == ["implement", "running"] for line in status.splitlines()
               if "implement" in line), status
    assert as_json(cli("run", "status", run_id, "--json", check=0))["run"]["phases"][0][
        "state"] == "running"

    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, (proc.returncode, out, err)
    assert "Traceback" not in err
    assert "interrupted, not aborted" in err
    assert f"run drive {run_id}" in err and f"run abort {run_id}" in err
    run = app.store.runs.get(run_id)
    assert run.state == "executing" and run.lease_owner is None
    [phase, _] = app.store.runs.phases(run_id)
    assert (phase.state, phase.attempt) == ("pending", 1)
    [invocation] = app.store.runs.invocations(run_id)
    assert invocation.outcome == "interrupted" and invocation.ended_at is not None
    assert "phase.interrupted" in [e.type for e in app.events(run_id)]
    assert procs_of_run(run_id) == []  # the agent did not outlive its driver
    shown = as_json(cli("run", "status", run_id, "--json", check=0))
    assert shown["run"]["lease"] is None
    assert as_json(cli("run", "abort", run_id, "--json", check=0))["run"]["state"] == "aborted"


def test_an_abort_from_another_shell_is_what_was_asked_not_a_lost_lease(
        cli: Cli, repo: Path, settings: Settings, tmp_path: Path) -> None:
    proc = _foreground(settings, repo, tmp_path, "from-elsewhere", "-v")
    _until_agent_started(proc)
    cli("run", "abort", "from-elsewhere", "--reason", "not needed", check=0)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, (out, err)  # the run it drove ended aborted
    assert "run from-elsewhere  aborted" in out
    records = [json.loads(line) for line in err.splitlines()]  # one format: JSON only
    assert not [r for r in records if r.get("event") == "lease_lost"]
    assert not [r for r in records if r.get("level") in ("warning", "error")], records
    ended = [r for r in records if r.get("event") == "run_ended_elsewhere"]
    assert ended and ended[0]["by"] == "tester" and ended[0]["level"] == "info"


# -- failures and timeouts say what happened ------------------------------------------------
TIMED = """\
    name: timed
    version: 1
    description: One phase with a short time limit.
    roles:
      implementer:
    phases:
      - key: build
        title: Build
        roles: [implementer]
        instructions: Build it.
        artifact: {path: .devflow/build.json, schema: dev/implementation@1}
        timeout: 1s
        max_repairs: 0
    """


def test_failures_name_their_log_and_timeouts_their_limit(cli: Cli, repo: Path,
                                                         tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    write_template(templates, "timed", TIMED)
    env = {"DEVFLOW_TEMPLATES_DIR": str(templates)}
    binds = ["--bind", "implementer=scripted-implementer", "--objective", "x", "--json"]
    failed = as_json(cli("run", "start", "--repo", str(repo), "--template", "timed", *binds,
                         "--scenario", "build=exit-1", env=env, check=1))["run"]
    reason = failed["failure"]["reason"]
    assert "/: " not in reason
    log = Path(failed["workspace"]) / "logs" / "build.attempt-1.stderr.log"
    assert f"see its stderr log {log}" in reason and log.is_file()

    timed = as_json(cli("run", "start", "--repo", str(repo), "--template", "timed", *binds,
                        "--scenario", "build=slow:60", env=env, check=1))["run"]
    assert timed["failure"]["code"] == "agent_timeout"
    report = as_json(cli("report", timed["id"], "--json", check=0))
    [invocation] = report["invocations"]
    assert invocation["outcome"] == "timeout"
    assert invocation["reason"].startswith("timeout after 1.0s")
    markdown = cli("report", timed["id"], check=0).stdout
    assert "| timeout |" in markdown and "signal 15" not in markdown


# -- a person's session: changes, sections, the report, events, --repo from a subdirectory --------
def test_a_review_session_from_a_subdirectory(app: App, cli: Cli, repo: Path) -> None:
    view = start(app, repo)
    run_id = view.run.id
    refused = cli("request-changes", run_id, "--json", check=2)
    assert as_json(refused)["error"]["code"] == "invalid_input"
    assert app.view(run_id).gate == view.gate  # nothing changed
    assert "phase.changes_requested" not in [e.type for e in app.events(run_id)]
    cli("request-changes", run_id, "-m", "Name the error cases.", check=0)
    decided = as_json(cli("approve", run_id, "--json", check=0))
    assert decided["gate"]["gate"] == "final_review"
    decide(app, run_id, "approve", sections={"truncate-off-by-one": "reject",
                                             "cli-help-text": "approve"},
           comment="Fix the off-by-one.")
    app.drive(run_id)
    cli("approve", run_id, check=0)
    markdown = cli("report", run_id, check=0).stdout
    assert "| truncate-off-by-one reject, cli-help-text approve |" in markdown
    report = as_json(cli("report", run_id, "--json", check=0))
    assert report["run"]["state"] == "completed"

    subdir = repo / "src" / "sample"
    assert [r["id"] for r in as_json(cli("run", "list", "--repo", str(subdir), "--json",
                                         check=0))["runs"]] == [run_id]
    events = cli("events", run_id, check=0).stdout
    bound = next(line for line in events.splitlines() if " run.bound " in line)
    bindings, _ = json.JSONDecoder().raw_decode(bound.split("bindings=", 1)[1])
    assert bindings["planner"] == "scripted-planner@1"
    assert "{'" not in events  # no Python reprs


# -- hints name a devflow that works ------------------------------------------------
@SQLITE_ONLY
def test_hints_name_the_devflow_that_was_run(settings: Settings) -> None:
    script = Path(sys.executable).parent / "devflow"
    assert script.is_file()
    env = cli_env(settings)
    elsewhere = {**env, "PATH": "/usr/bin:/bin"}
    lost = subprocess.run([str(script), "run", "status", "nope"], capture_output=True,
                          text=True, env=elsewhere, timeout=120, check=False)
    assert lost.returncode == 4
    assert f"`{script} run list`" in lost.stderr, lost.stderr
    on_path = {**env, "PATH": f"{script.parent}{os.pathsep}/usr/bin:/bin"}
    found = subprocess.run([str(script), "run", "status", "nope"], capture_output=True,
                           text=True, env=on_path, timeout=120, check=False)
    assert "`devflow run list`" in found.stderr, found.stderr


@SQLITE_ONLY
def test_start_says_which_agents_it_bound_and_when_they_are_stand_ins(cli: Cli,
                                                                    repo: Path) -> None:
    # no real agent CLI on this PATH: every role goes to a scripted persona
    path = f"{Path(sys.executable).parent}{os.pathsep}/usr/bin{os.pathsep}/bin"
    started = cli("run", "start", "--repo", str(repo), "-t", "quick", "-o", "try it",
                  env={"PATH": path}, check=0)
    assert "agents  implementer scripted-implementer@1 (scripted)" in started.stdout
    assert "scripted stand-in, not a real agent" in started.stderr
    bound = cli("run", "start", "--repo", str(repo), "-t", "quick", "-o", "again",
                *QUICK_CLI_BINDS, env={"PATH": path}, check=0)
    assert "stand-in" not in bound.stderr  # chosen on purpose
