"""The real Claude Code, Codex and Aider binaries driven by devflow against the fake model
server, on SQLite and PostgreSQL: each preset runs quick@1 to a report with tokens (and
cost), repairs through a resumed session, and fails cleanly on denied permissions, model
errors, hangs and budgets. No request may leave 127.0.0.1 (the fake is their proxy too).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from devflow.app import App, RunView
from devflow.requests import StartRequest
from devflow.settings import Settings
from tests.conftest import SQLITE_ONLY
from tests.fakes import agents
from tests.fakes.model_server import FakeModel
from tests.integration.helpers import branches, report_of, write_template

pytestmark = [pytest.mark.real_cli, pytest.mark.slow]
# SQLITE_ONLY: what those tests check is the agent CLI's side: its output read, its failure
# named, its processes ended, its cost counted. The store's side of an invocation is the
# same whichever backend ran it, and the scripted agents' tests check it on both
# databases; the end-to-end runs here (each backend's preset, a persona file through the
# command) run on both too.

IMPLEMENTATION = ".devflow/implementation.json"
#: quick@1's implement phase alone, with no repair and a short time limit
ONCE = """
name: once
version: 1
description: One implement phase, no repair, a short time limit (devflow's CLI tests).
roles:
  implementer: {description: Makes the change.}
phases:
  - key: implement
    title: Implement the change
    roles: [implementer]
    artifact: {path: .devflow/implementation.json, schema: dev/implementation@1}
    timeout: TIMEOUT
    max_repairs: 0
    instructions: Make the change, then record it in .devflow/implementation.json.
"""
ONCE_ARTIFACTS = {IMPLEMENTATION: "dev/implementation@1"}


@pytest.fixture
def fake() -> Iterator[FakeModel]:
    with FakeModel() as server:
        yield server
        assert server.outside == [], f"requests that tried to leave 127.0.0.1: {server.outside}"


@pytest.fixture
def personas_dir(tmp_path: Path) -> Path:
    return tmp_path / "personas"


def _app(settings: Settings, personas_dir: Path, templates: Path | None = None) -> App:
    personas_dir.mkdir(parents=True, exist_ok=True)
    return App(settings.replace(personas_dirs=(personas_dir,),
                                templates_dirs=(templates,) if templates else ()))


def _start(app: App, repo: Path, binds: dict[str, str], *, template: str = "quick@1",
           artifacts: dict[str, str] | None = None, max_cost: float | None = None) -> RunView:
    return app.start(StartRequest(
        repo=repo, base="main", template=template, actor="tester", binds=binds,
        requirements=agents.requirements(app.catalog.schemas, artifacts), max_cost=max_cost))


def _agent_invocations(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [i for i in report["invocations"] if i["kind"] == "agent"]


def _events(app: App, run_id: str, kind: str) -> list[dict[str, Any]]:
    return [dict(e.payload) for e in app.events(run_id) if e.type == kind]


# -- each preset, end to end --------------------------------------------------------------
@pytest.mark.parametrize("backend", ["claude-code", "codex", "aider"])
def test_preset_drives_quick_to_a_report_with_usage(backend: str, settings: Settings,
                                                    repo: Path, fake: FakeModel,
                                                    personas_dir: Path) -> None:
    binary = agents.real_cli_bin(backend)
    binds = agents.quick_personas(personas_dir, backend, fake, binary)
    app = _app(settings, personas_dir)
    try:
        view = _start(app, repo, binds)
        assert view.run.state == "completed", view.run.failure_reason
        report = report_of(view)
        assert app.catalog.schemas.validate("common/final-report@1", report) == []
        assert [p["state"] for p in report["phases"]] == ["completed", "completed"]
        runs = _agent_invocations(report)
        assert [(i["phase"], i["backend"], i["exit_code"]) for i in runs] == [
            ("implement", backend, 0), ("review", backend, 0)]
        assert all(i["tokens_in"] and i["tokens_out"] for i in runs), runs
        assert report["usage"]["tokens_in"] == sum(i["tokens_in"] for i in runs)
        assert all(i["cost_usd"] and i["cost_usd"] > 0 for i in runs), runs
        assert report["usage"]["cost_usd"] > 0
        if backend != "aider":  # Aider has no sessions
            assert all(i["session_id"] for i in runs), runs
        # the CLI wrote the artifacts through its own file tool, as the fake asked
        assert fake.agentic(), "the CLI never asked the fake model anything"
        assert {s.mode for s in fake.agentic() if s.mode} == {"ok"}
        # live progress from the CLI's output became events
        notes = [n for e in _events(app, view.run.id, "agent.progress") for n in e["notes"]]
        assert any(IMPLEMENTATION in n for n in notes), notes
        # the bound version came from the real binary
        versions = {b.backend_version for b in app.store.runs.bindings(view.run.id)}
        assert all(v and any(ch.isdigit() for ch in v) for v in versions), versions
        # no history, cache or config files of the CLI in the worktree
        changed = {f["path"] for f in report["git"]["files"]}
        assert changed <= {IMPLEMENTATION, ".devflow/review.json"}, changed
        markdown = (Path(view.run.workspace) / "report.md").read_text(encoding="utf-8")
        assert "Agent invocations" in markdown and "$" in markdown
    finally:
        app.close()


def _once(tmp_path: Path, timeout: str = "60s") -> Path:
    directory = tmp_path / "templates"
    write_template(directory, "once", ONCE.replace("TIMEOUT", timeout))
    return directory


def _procs_in(directory: Path) -> list[psutil.Process]:
    """Live processes working in ``directory`` (an agent and whatever it started)."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and Path(proc.cwd()).is_relative_to(
                    directory):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
    return found


@SQLITE_ONLY
def test_aider_names_a_long_artifact_path_in_one_note(settings: Settings, repo: Path,
                                                     fake: FakeModel, personas_dir: Path,
                                                     tmp_path: Path) -> None:
    # Off a terminal Aider wraps at COLUMNS (80 by default): 'Applied edit to PATH' on a
    # long path would lose its end; devflow gives it a wide COLUMNS.
    long_path = ".devflow/" + "a-directory-name-long-enough-to-wrap/" * 3 + "implementation.json"
    directory = tmp_path / "templates"
    write_template(directory, "once", ONCE.replace("TIMEOUT", "120s").replace(
        "path: .devflow/implementation.json", f"path: {long_path}"))
    ref = agents.write_persona(personas_dir, "fake-aider-long", "implementer", "aider", fake,
                               agents.real_cli_bin("aider"))
    app = _app(settings, personas_dir, directory)
    try:
        view = _start(app, repo, {"implementer": ref}, template="once@1",
                      artifacts={long_path: "dev/implementation@1"})
        assert view.run.state == "completed", view.run.failure_reason
        notes = [n for e in _events(app, view.run.id, "agent.progress") for n in e["notes"]]
        assert f"Applied edit to {long_path}" in notes, notes
    finally:
        app.close()


# -- repairs resume the session -----------------------------------------------------------
@SQLITE_ONLY
@pytest.mark.parametrize("backend", ["claude-code", "codex"])
def test_invalid_artifact_is_repaired_in_the_resumed_session(
        backend: str, settings: Settings, repo: Path, fake: FakeModel,
        personas_dir: Path) -> None:
    binary = agents.real_cli_bin(backend)
    binds = agents.quick_personas(personas_dir, backend, fake, binary)
    fake.plan(IMPLEMENTATION, "invalid", "ok")
    app = _app(settings, personas_dir)
    try:
        view = _start(app, repo, binds)
        assert view.run.state == "completed", view.run.failure_reason
        implement = next(p for p in view.phases if p.key == "implement")
        assert (implement.attempt, implement.repairs) == (2, 1)
        first, second = [i for i in _agent_invocations(report_of(view))
                         if i["phase"] == "implement"]
        assert first["session_id"], first
        if backend == "claude-code":
            assert "--resume" not in first["argv"]
            assert second["argv"][second["argv"].index("--resume") + 1] == first["session_id"]
        else:
            assert first["argv"][1:] == ["exec", "--json", "-"]
            assert second["argv"][1:] == ["exec", "resume", "--json", first["session_id"], "-"]
        refused = _events(app, view.run.id, "phase.artifact_invalid")
        assert [e["attempt"] for e in refused] == [1]
        # the fake saw the repair prompt in the same conversation as the first attempt
        turns = [s for s in fake.agentic() if not s.after_tool and s.mode]
        assert [s.mode for s in turns][:2] == ["invalid", "ok"]
    finally:
        app.close()


# -- failures -----------------------------------------------------------------------------
@SQLITE_ONLY
def test_claude_code_permission_denial_fails_the_attempt(settings: Settings, repo: Path,
                                                         fake: FakeModel, personas_dir: Path,
                                                         tmp_path: Path) -> None:
    binary = agents.real_cli_bin("claude-code")
    ref = agents.write_persona(personas_dir, "fake-claude-denied", "implementer",
                               "claude-code", fake, binary, permission_mode="default")
    app = _app(settings, personas_dir, _once(tmp_path))
    try:
        view = _start(app, repo, {"implementer": ref}, template="once@1",
                      artifacts=ONCE_ARTIFACTS)
        # Claude Code exited 0 having written nothing: devflow still says why it failed
        assert view.run.state == "failed"
        assert view.run.failure_code == "agent_failed"
        assert "denied 1 tool call(s) in permission mode default: Write" in (
            view.run.failure_reason or "")
        (agent,) = _agent_invocations(report_of(view))
        assert agent["exit_code"] == 0 and "denied" in agent["reason"]
        assert not (Path(view.run.worktree) / IMPLEMENTATION).exists()
    finally:
        app.close()


@SQLITE_ONLY
@pytest.mark.parametrize(("backend", "mode", "reason"), [
    ("claude-code", "error", "API Error: 500 the fake model failed on purpose"),
    ("codex", "error", "Codex reported an error: "),
    # Aider retries a 500 for about a minute; a 400 shows the same handling at once
    ("aider", "error:400", "Aider's model call failed: litellm.BadRequestError"),
])
def test_model_error_fails_the_attempt_with_its_reason(
        backend: str, mode: str, reason: str, settings: Settings, repo: Path,
        fake: FakeModel, personas_dir: Path, tmp_path: Path) -> None:
    binary = agents.real_cli_bin(backend)
    ref = agents.write_persona(personas_dir, f"fake-{backend}-err", "implementer", backend,
                               fake, binary)
    fake.plan(IMPLEMENTATION, mode)
    app = _app(settings, personas_dir, _once(tmp_path))
    try:
        view = _start(app, repo, {"implementer": ref}, template="once@1",
                      artifacts=ONCE_ARTIFACTS)
        assert view.run.state == "failed"
        assert view.run.failure_code == "agent_failed"
        assert reason in (view.run.failure_reason or "")
        (agent,) = _agent_invocations(report_of(view))
        assert reason in (agent["reason"] or ""), agent
        exited = _events(app, view.run.id, "agent.exited")
        assert reason in (exited[0]["failure"] or "")
        assert any(s.mode == mode for s in fake.agentic())
    finally:
        app.close()


@SQLITE_ONLY
@pytest.mark.parametrize("backend", ["claude-code", "codex"])
def test_hanging_cli_is_killed_with_its_children_at_the_timeout(
        backend: str, settings: Settings, repo: Path, fake: FakeModel, personas_dir: Path,
        tmp_path: Path) -> None:
    binary = agents.real_cli_bin(backend)
    more = {"allowed_tools": ["Bash(sleep:*)"]} if backend == "claude-code" else {}
    ref = agents.write_persona(personas_dir, f"fake-{backend}-hang", "implementer", backend,
                               fake, binary, **more)
    fake.plan(IMPLEMENTATION, "hang")  # the model asks the CLI to run `sleep 600`
    app = _app(settings.replace(workspace=tmp_path / "ws-hang"), personas_dir,
               _once(tmp_path, "8s"))
    try:
        view = _start(app, repo, {"implementer": ref}, template="once@1",
                      artifacts=ONCE_ARTIFACTS)
        assert view.run.state == "failed"
        assert view.run.failure_code == "agent_timeout"
        (agent,) = _agent_invocations(report_of(view))
        assert agent["outcome"] == "timeout"
        assert any(s.mode == "hang" for s in fake.agentic())
        assert _procs_in(Path(view.run.worktree)) == []
    finally:
        for proc in _procs_in(tmp_path / "ws-hang"):  # never leave a sleeper behind
            proc.kill()
        app.close()


@SQLITE_ONLY
@pytest.mark.parametrize("backend", ["claude-code", "codex"])
def test_max_cost_fails_the_run_with_budget_exceeded(backend: str, settings: Settings,
                                                     repo: Path, fake: FakeModel,
                                                     personas_dir: Path) -> None:
    binary = agents.real_cli_bin(backend)
    binds = agents.quick_personas(personas_dir, backend, fake, binary)
    app = _app(settings, personas_dir)
    try:
        view = _start(app, repo, binds, max_cost=0.000001)
        assert view.run.state == "failed"
        assert view.run.failure_code == "budget_exceeded"
        report = report_of(view)
        assert report["run"]["failure"]["code"] == "budget_exceeded"
        assert report["usage"]["cost_usd"] > 0.000001
        assert [i["phase"] for i in _agent_invocations(report)] == ["implement"]
    finally:
        app.close()


# -- through the devflow command ----------------------------------------------------------
def test_cli_runs_a_claude_code_persona_file_to_a_report_with_cost_per_phase(
        cli: Any, settings: Settings, repo: Path, fake: FakeModel, personas_dir: Path,
        tmp_path: Path) -> None:
    binary = agents.real_cli_bin("claude-code")
    binds = agents.quick_personas(personas_dir, "claude-code", fake, binary, bin=None)
    requirements = tmp_path / "requirements.md"
    app = App(settings)
    try:
        requirements.write_text(agents.requirements(app.catalog.schemas), encoding="utf-8")
    finally:
        app.close()
    on_path = {"PATH": f"{binary.parent}:/usr/local/bin:/usr/bin:/bin"}
    listed = json.loads(cli("--personas-dir", str(personas_dir), "backends", "list", "--json",
                            env=on_path, check=0).stdout)
    claude_row = next(r for r in listed["backends"] if r["backend"] == "claude-code")
    assert claude_row["available"] is True and "Claude Code" in claude_row["version"]
    bind_args = [f"--bind={role}={ref}" for role, ref in binds.items()]
    started = cli("--personas-dir", str(personas_dir), "run", "start", "--repo", str(repo),
                  "--base", "main", "--template", "quick@1", "--requirements",
                  str(requirements), *bind_args, "--json", env=on_path, check=0, timeout=300)
    run = json.loads(started.stdout)["run"]
    assert run["state"] == "completed"
    report = json.loads(cli("report", run["id"], "--format", "json", check=0).stdout)
    for phase in report["phases"]:
        assert phase["usage"]["tokens_in"] > 0 and phase["usage"]["tokens_out"] > 0, phase
        assert phase["usage"]["cost_usd"] > 0, phase
    assert [b["backend_version"] for b in report["bindings"]] == [claude_row["version"]] * 2
    markdown = cli("report", run["id"], check=0).stdout
    assert "claude-code" in markdown and "Usage:" in markdown
    # the API key given to the agent is a secret: redacted wherever devflow writes
    assert agents.API_KEY not in started.stdout + started.stderr + markdown
    assert agents.API_KEY not in json.dumps(report)


@SQLITE_ONLY
def test_cli_without_claude_on_path_fails_at_binding_before_creating_anything(
        cli: Any, settings: Settings, repo: Path, fake: FakeModel, personas_dir: Path,
        tmp_path: Path) -> None:
    binds = agents.quick_personas(personas_dir, "claude-code", fake, Path("/nonexistent"),
                                  bin=None)
    requirements = tmp_path / "requirements.md"
    requirements.write_text("Add a farewell.\n", encoding="utf-8")
    bind_args = [f"--bind={role}={ref}" for role, ref in binds.items()]
    failed = cli("--personas-dir", str(personas_dir), "run", "start", "--repo", str(repo),
                 "--base", "main", "--template", "quick@1", "--requirements",
                 str(requirements), *bind_args, "--json",
                 env={"PATH": "/usr/bin:/bin", "DEVFLOW_CLAUDE_BIN": ""})
    assert failed.returncode != 0
    error = json.loads(failed.stdout)["error"]
    assert error["code"] == "backend_unavailable"
    assert "'claude'" in error["message"] and binds["implementer"] in error["message"]
    assert json.loads(cli("run", "list", "--json", check=0).stdout)["runs"] == []
    assert not settings.workspace.exists() or not any(settings.workspace.iterdir())
    assert [b for b in branches(repo) if b.startswith("devflow/")] == []
