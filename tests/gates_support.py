"""Helpers shared by the tests of gates and decisions (integration and acceptance).

Templates written to a test's own directory (loaded with ``templates_dirs`` or
``DEVFLOW_TEMPLATES_DIR``), starting runs with the scripted personas, deciding through
the library, and the ``devflow`` command as a subprocess for tests that build their own
settings (the PostgreSQL-only ones, which cannot use the ``cli`` fixture).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from devflow.app import App, RunView
from devflow.approvals import DecisionRequest, DecisionResult, new_token
from devflow.requests import StartRequest
from tests.acceptance.cli_fork import run_devflow
from tests.conftest import SCRIPTED

#: Templates of these tests, by file name. Every gated phase is done by a scripted agent.
TEMPLATES: Mapping[str, str] = {
    # A plan phase whose gate approves the planned phases one by one.
    "gated-plan.yaml": """\
name: gated-plan
version: 1
description: A phase plan behind a gate with sections.
roles:
  planner:
  implementer:
phases:
  - key: plan
    title: Plan the work
    roles: [planner]
    instructions: Plan the follow-up phases.
    artifact: {path: .devflow/plan.json, schema: dev/phase-plan@1}
    gates: [plan_review]
gates:
  plan_review:
    message: Approve or reject each planned phase.
    options: [approve, request_changes, reject, abort]
    sections: /phases
""",
    # Gates only named people (build) or members of a group (polish) may decide.
    "guarded.yaml": """\
name: guarded
version: 1
description: Gates with approvers.
roles:
  implementer:
phases:
  - key: build
    title: Build
    roles: [implementer]
    instructions: Build it.
    artifact: {path: .devflow/build.json, schema: dev/implementation@1}
    gates: [alice_gate]
  - key: polish
    title: Polish
    roles: [implementer]
    instructions: Polish it.
    artifact: {path: .devflow/polish.json, schema: dev/implementation@1}
    gates: [leads_gate]
gates:
  alice_gate:
    message: Only alice decides this one.
    approvers: [alice]
  leads_gate:
    message: One of the leads decides this one.
    approvers: [leads]
""",
    # One phase behind two gates; the second offers only approve and reject.
    "double.yaml": """\
name: double
version: 1
description: Two gates on one phase.
roles:
  implementer:
phases:
  - key: build
    title: Build
    roles: [implementer]
    instructions: Build it.
    artifact: {path: .devflow/build.json, schema: dev/implementation@1}
    gates: [tech, product]
  - key: after
    title: After
    roles: [implementer]
    instructions: Finish.
    artifact: {path: .devflow/after.json, schema: dev/implementation@1}
gates:
  tech:
    message: Technical sign-off.
  product:
    message: Product sign-off.
    options: [approve, reject]
""",
    # One gated phase whose scripted agent edits README.md on every attempt.
    "gated-build.yaml": """\
name: gated-build
version: 1
description: A gated phase that changes the worktree.
roles:
  implementer:
phases:
  - key: build
    title: Build
    roles: [implementer]
    instructions: Build it.
    artifact: {path: .devflow/build.json, schema: dev/implementation@1}
    gates: [check]
gates:
  check:
    message: Check the build.
""",
}

#: The roles of each template, to bind them to the scripted personas.
ROLES: Mapping[str, tuple[str, ...]] = {
    "development@1": ("planner", "implementer", "reviewer"),
    "gated-plan@1": ("planner", "implementer"),
    "guarded@1": ("implementer",),
    "double@1": ("implementer",),
    "gated-build@1": ("implementer",),
}

GATE_KEYS = {"approval_id", "gate", "phase", "round", "message", "options", "artifact",
             "deadline"}


def write_templates(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, body in TEMPLATES.items():
        (directory / name).write_text(body, encoding="utf-8")
    return directory


def binds(template: str) -> dict[str, str]:
    return {role: SCRIPTED[role] for role in ROLES[template]}


def bind_args(template: str) -> list[str]:
    return [arg for role, persona in binds(template).items()
            for arg in ("--bind", f"{role}={persona}")]


def start(app: App, repo: Path, template: str = "development@1", *,
          scenarios: Mapping[str, str] | None = None, run_id: str | None = None,
          base: str = "main") -> RunView:
    if scenarios is None:
        scenarios = {"plan": "plan:0"} if template == "development@1" else {}
    return app.start(StartRequest(repo=repo, base=base, template=template,
                                  requirements="Add a farewell function.", actor="tester",
                                  binds=binds(template), scenarios=dict(scenarios),
                                  run_id=run_id))


def decide(app: App, run_id: str, action: str, *, actor: str = "tester",
           token: str | None = None, **kw: Any) -> DecisionResult:
    return app.decide(DecisionRequest(run_id=run_id, action=action, actor=actor,
                                      token=token or new_token(), **kw))


def approve_through(app: App, view: RunView, *gates: str) -> RunView:
    """Approve the named gates in order, driving the run after each."""
    for gate in gates:
        assert view.gate is not None and view.gate.gate == gate, view.to_json()
        decide(app, view.run.id, "approve")
        view, drove = app.drive(view.run.id)
        assert drove
    return view


def snapshot(app: App, run_id: str) -> dict[str, Any]:
    """Everything a refused decision (or pause, resume, abort) must leave as it was."""
    run = app.store.runs.get(run_id)
    return {
        "state": str(run.state), "paused_from": run.paused_from, "last_seq": run.last_seq,
        "approvals": [(a.id, str(a.state), a.resolved_by, a.approvers)
                      for a in app.store.approvals.find(run_id=run_id)],
        "decisions": [d.id for d in app.store.approvals.decisions(run_id=run_id)],
        "phases": [(p.key, str(p.state), p.attempt, p.round)
                   for p in app.store.runs.phases(run_id)],
        "report": run.report_status,
    }


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def prompt_text(run_workspace: str | Path, phase: str, attempt: int) -> str:
    return (Path(run_workspace) / "prompts" / f"{phase}.attempt-{attempt}.md").read_text(
        encoding="utf-8")


def read_report(run_workspace: str | Path) -> dict[str, Any]:
    body = json.loads((Path(run_workspace) / "report.json").read_text(encoding="utf-8"))
    assert isinstance(body, dict)
    return body


def run_cli(home: Path, database_url: str, workspace: Path, *args: str,
            env: Mapping[str, str] | None = None, timeout: float = 120,
            check: int | None = None) -> subprocess.CompletedProcess[str]:
    """The real ``devflow`` command, like the ``cli`` fixture, for tests with their own
    settings."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DEVFLOW_")}
    full_env.update({"DEVFLOW_HOME": str(home), "DEVFLOW_DATABASE_URL": database_url,
                     "DEVFLOW_WORKSPACE": str(workspace), "DEVFLOW_ACTOR": "tester",
                     "DEVFLOW_LOG_FORMAT": "json"})
    full_env.update(env or {})
    result = run_devflow(args, full_env, timeout=timeout)
    if check is not None:
        assert result.returncode == check, (
            f"devflow {' '.join(args)} exited {result.returncode}, wanted {check}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


def cli_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "devflow.cli.main", *args]

