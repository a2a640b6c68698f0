"""Helpers of the end-to-end run tests: custom templates, gate approval, git inspection,
processes, and the CLI against any database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psutil

from devflow import git
from devflow.app import App, RunView
from devflow.approvals import DecisionRequest, new_token
from devflow.requests import StartRequest
from devflow.settings import Settings
from tests.conftest import SCRIPTED

#: The scripted bindings of quick@1 (no planner role there).
QUICK_BINDS = {"implementer": SCRIPTED["implementer"], "reviewer": SCRIPTED["reviewer"]}
#: --bind options naming the scripted personas, so no real agent is ever bound.
CLI_BINDS = [f"--bind={role}={persona}@1" for role, persona in SCRIPTED.items()]
QUICK_CLI_BINDS = [f"--bind={role}={persona}@1" for role, persona in QUICK_BINDS.items()]


def write_template(directory: Path, name: str, body: str) -> Path:
    """A template file ``<directory>/<name>.yaml`` (``body`` is dedented YAML)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.yaml"
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


def app_with_templates(settings: Settings, directory: Path) -> App:
    """An App that also sees the templates in ``directory``; the caller closes it."""
    return App(settings.replace(templates_dirs=(directory.resolve(),)))


def quick(repo: Path, *, scenarios: dict[str, str] | None = None, base: str = "main",
          run_id: str | None = None) -> StartRequest:
    return StartRequest(repo=repo, base=base, template="quick@1", requirements="Add a farewell.",
                        actor="tester", binds=QUICK_BINDS, scenarios=scenarios or {},
                        run_id=run_id)


def development(repo: Path, *, scenarios: dict[str, str] | None = None) -> StartRequest:
    return StartRequest(repo=repo, base="main", template="development@1",
                        requirements="Add a farewell function.", actor="tester", binds=SCRIPTED,
                        scenarios={"plan": "plan:0", **(scenarios or {})})


def approve_through(app: App, view: RunView) -> tuple[RunView, list[str]]:
    """Approve every gate the run stops at and drive it on; the gates passed."""
    gates = []
    while view.gate is not None:
        gates.append(view.gate.gate)
        app.decide(DecisionRequest(run_id=view.run.id, action="approve", actor="tester",
                                   token=new_token()))
        view, drove = app.drive(view.run.id)
        assert drove, f"run {view.run.id} was not driven after approving {gates[-1]}"
    return view, gates


def report_of(view: RunView) -> dict[str, Any]:
    return json.loads((Path(view.run.workspace) / "report.json").read_text(encoding="utf-8"))


def subjects(repo: Path, base_sha: str, branch: str) -> list[str]:
    """Commit subjects base..branch, oldest first."""
    text = git.out(["log", "--reverse", "--format=%s", f"{base_sha}..{branch}"], repo)
    return text.splitlines()


def commits_by_subject(repo: Path, base_sha: str, branch: str) -> dict[str, str]:
    text = git.out(["log", "--format=%H %s", f"{base_sha}..{branch}"], repo)
    return {line.split(" ", 1)[1]: line.split(" ", 1)[0] for line in text.splitlines()}


def branches(repo: Path) -> list[str]:
    return git.out(["for-each-ref", "--format=%(refname:short)", "refs/heads"], repo).split()


def worktrees(repo: Path) -> list[Path]:
    listing = git.out(["worktree", "list", "--porcelain"], repo)
    return [Path(line[len("worktree "):]) for line in listing.splitlines()
            if line.startswith("worktree ")]


def procs_of_run(run_id: str) -> list[psutil.Process]:
    """Live processes whose environment says they work for ``run_id`` (agents and children)."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get("DEVFLOW_RUN_ID") == run_id:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def alive(pids: Iterable[int]) -> list[int]:
    living = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                living.append(pid)
        except psutil.NoSuchProcess:
            continue
    return living


def cli_env(settings: Settings, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEVFLOW_")}
    env.update({"DEVFLOW_HOME": str(settings.home), "DEVFLOW_DATABASE_URL": settings.database_url,
                "DEVFLOW_WORKSPACE": str(settings.workspace), "DEVFLOW_ACTOR": "tester",
                "DEVFLOW_LOG_FORMAT": "json"})
    env.update(extra or {})
    return env


def popen_cli(settings: Settings, *args: str) -> subprocess.Popen[str]:
    """Start the real ``devflow`` command without waiting for it."""
    return subprocess.Popen([sys.executable, "-m", "devflow.cli.main", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=cli_env(settings))


def requirements_file(directory: Path, text: str = "Add a farewell function.\n") -> Path:
    path = directory / "requirements.md"
    path.write_text(text, encoding="utf-8")
    return path
