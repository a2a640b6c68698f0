"""Who decides (issue 19, deliverable 2), through the real ``devflow`` command as a
subprocess, on SQLite and PostgreSQL.

Every decision (approve, reject, request-changes, abort through ``decide``) and every
control command (pause, resume, abort) on a gate restricted to the group ``leads``, by
a gate approver, an operator, anyone else, and someone acting as ``alice`` with and
without ``act_for_others``; a refusal is ``not_authorized`` (exit 3) and records
nothing. On a gate that names no approvers, ``--as`` stays a label. The hostile row: a
process with the database in reach approves as alice and is refused.

Everything here runs as one OS account (root on CI), so the roles are varied in
config.yaml between commands, not by uid; one PostgreSQL test runs the command as
another uid (``setpriv``) to show the principal is the uid's account.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from devflow import access, git
from devflow.app import App
from devflow.requests import StartRequest
from devflow.settings import Settings
from tests.acceptance.cli_fork import run_devflow
from tests.conftest import as_json, make_repo
from tests.gates_support import read_report, snapshot

Cli = Callable[..., subprocess.CompletedProcess[str]]

ME = access.os_account().name
UID = str(os.getuid())

TEMPLATES = {
    # three phases behind the same gate, which only the leads may decide
    "restricted.yaml": """\
name: restricted
version: 1
description: Every phase behind a gate of the leads.
roles:
  implementer:
phases:
""" + "".join(f"""\
  - key: {key}
    title: Step {key}
    roles: [implementer]
    instructions: Do step {key}.
    artifact: {{path: .devflow/{key}.json, schema: dev/implementation@1}}
    gates: [leads_review]
""" for key in ("one", "two", "three")) + """\
gates:
  leads_review:
    message: One of the leads decides.
    approvers: [leads]
    options: [approve, request_changes, reject, abort]
""",
    # the same with a gate anyone may decide
    "open.yaml": """\
name: open
version: 1
description: A gate that names no approvers.
roles:
  implementer:
phases:
  - key: one
    title: Step one
    roles: [implementer]
    instructions: Do it.
    artifact: {path: .devflow/one.json, schema: dev/implementation@1}
    gates: [anyone]
gates:
  anyone:
    message: Anyone decides.
""",
}


@dataclass(frozen=True)
class Role:
    """Who runs the command: what config.yaml grants, and the name the command gives."""

    name: str
    config: dict[str, Any]
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)


APPROVER = Role("approver", {"groups": {"leads": [ME]}})
OPERATOR = Role("operator", {"groups": {"leads": ["alice"], "operators": [ME]}})
ANYONE = Role("anyone else", {"groups": {"leads": ["alice"]}})
AS_ALICE = Role("--as alice", {"groups": {"leads": ["alice"]}}, ("--as", "alice"))
ACTOR_ALICE = Role("DEVFLOW_ACTOR=alice", {"groups": {"leads": ["alice"]}},
                   env={"DEVFLOW_ACTOR": "alice"})
DELEGATE = Role("--as alice, delegated",
                {"groups": {"leads": ["alice"]}, "act_for_others": [ME]}, ("--as", "alice"))
#: refused on every command
NOBODY_OF_THE_GATE = (ANYONE, AS_ALICE)

DECISIONS = {
    "approve": ("approve", "{run}", "--no-drive"),
    "request-changes": ("request-changes", "{run}", "--comment", "Again.", "--no-drive"),
    "reject": ("reject", "{run}"),
    "decide abort": ("decide", "{run}", "abort"),
}
CONTROLS = {
    "pause": ("run", "pause", "{run}"),
    "resume": ("run", "resume", "{run}", "--no-drive"),
    "abort": ("run", "abort", "{run}"),
}


def recorded(role: Role) -> dict[str, Any]:
    """The authentication a command by ``role`` records."""
    return {"method": "os_account", "principal": ME, "id": UID,
            "attribution": "delegated" if role.args else "self"}


@pytest.fixture
def wapp(settings: Settings, tmp_path: Path) -> Iterator[App]:
    directory = tmp_path / "templates"
    directory.mkdir()
    for name, body in TEMPLATES.items():
        (directory / name).write_text(body, encoding="utf-8")
    application = App(settings.replace(templates_dirs=(directory,)))
    yield application
    application.close()


@pytest.fixture
def wcli(cli: Cli, wapp: App, home: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """The command as ``role``: its config.yaml written, its name given, no DEVFLOW_ACTOR."""
    templates = str(wapp.settings.templates_dirs[0])

    def run(role: Role, command: tuple[str, ...], run_id: str, *,
            check: int) -> subprocess.CompletedProcess[str]:
        (home / "config.yaml").write_text(yaml.safe_dump(role.config), encoding="utf-8")
        argv = [a.format(run=run_id) for a in command]
        return cli(*argv, *role.args, "--json", check=check,
                   env={"DEVFLOW_TEMPLATES_DIR": templates, "DEVFLOW_ACTOR": "", **role.env})
    return run


def start(app: App, repo: Path, template: str = "restricted@1") -> str:
    view = app.start(StartRequest(repo=repo, base="main", template=template,
                                  requirements="Do the steps.", actor="tester",
                                  binds={"implementer": "scripted-implementer"}))
    assert view.gate is not None, view.to_json()
    return view.run.id


def refuse(wcli: Cli, app: App, role: Role, command: tuple[str, ...], run_id: str) -> None:
    """``role`` is refused: not_authorized, naming who was refused and who may; nothing
    recorded."""
    before = snapshot(app, run_id)
    error = as_json(wcli(role, command, run_id, check=3))["error"]
    assert error["code"] == "not_authorized", (role.name, command, error)
    assert f"OS account {ME}" in error["message"], error
    if role.args or role.env:
        assert "as alice" in error["message"], error
    assert "who may: the approvers of gate leads_review: leads (alice)" in error["hint"], error
    assert snapshot(app, run_id) == before, (role.name, command)


def decided(wcli: Cli, role: Role, command: tuple[str, ...], run_id: str) -> dict[str, Any]:
    body = as_json(wcli(role, command, run_id, check=0))
    decision = body["decision"]
    assert decision["actor"] == ("alice" if role.args else ME)
    assert decision["authentication"] == recorded(role)
    return dict(body)


def steered(wcli: Cli, app: App, role: Role, verb: str, run_id: str) -> None:
    body = as_json(wcli(role, CONTROLS[verb], run_id, check=0))
    assert body["changed"] is True, body
    events = [e for e in app.events(run_id)
              if e.type == {"pause": "run.paused", "resume": "run.resumed",
                            "abort": "run.aborted"}[verb]]
    assert events[-1].payload["by"] == ("alice" if role.args else ME)
    assert events[-1].payload["authentication"] == recorded(role)


# -- the matrix ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_approve_and_request_changes_need_an_approver_or_a_delegate(
        wcli: Cli, wapp: App, repo: Path) -> None:
    run_id = start(wapp, repo)
    for command, roles in (("approve", (OPERATOR, *NOBODY_OF_THE_GATE, ACTOR_ALICE)),
                           ("request-changes", (OPERATOR, *NOBODY_OF_THE_GATE))):
        for role in roles:
            refuse(wcli, wapp, role, DECISIONS[command], run_id)
    for role in (APPROVER, DELEGATE):
        decided(wcli, role, DECISIONS["request-changes"], run_id)
        view, _ = wapp.drive(run_id)
        assert view.gate is not None and view.gate.phase_key == "one"
    assert view.gate.round == 3
    for role, phase in ((APPROVER, "two"), (DELEGATE, "three")):
        decided(wcli, role, DECISIONS["approve"], run_id)
        if role is APPROVER:
            # a run that waits at no gate is anyone's to steer: the gate is what is restricted
            steered(wcli, wapp, ANYONE, "pause", run_id)
            steered(wcli, wapp, ANYONE, "resume", run_id)
        view, _ = wapp.drive(run_id)
        assert view.gate is not None and view.gate.phase_key == phase
    decided(wcli, APPROVER, DECISIONS["reject"], run_id)
    assert wapp.store.runs.get(run_id).state == "failed"
    # the report names each decision's actor and how it was authenticated
    report = read_report(wapp.store.runs.get(run_id).workspace)
    assert wapp.catalog.schemas.validate("common/final-report@1", report) == []
    assert [(d["action"], d["actor"], d["authentication"]["attribution"])
            for a in report["approvals"] for d in a["decisions"]] == [
        ("request_changes", ME, "self"), ("request_changes", "alice", "delegated"),
        ("approve", ME, "self"), ("approve", "alice", "delegated"), ("reject", ME, "self")]
    markdown = (Path(wapp.store.runs.get(run_id).workspace) / "report.md").read_text()
    assert f"| alice | OS account {ME}, acting for alice |" in markdown
    assert f"| {ME} | OS account {ME} |" in markdown


@pytest.mark.slow
def test_reject_and_abort_decisions_need_an_approver_or_a_delegate(
        wcli: Cli, wapp: App, repo: Path) -> None:
    run_id = start(wapp, repo)
    for command in ("reject", "decide abort"):
        for role in (OPERATOR, *NOBODY_OF_THE_GATE):
            refuse(wcli, wapp, role, DECISIONS[command], run_id)
    decided(wcli, DELEGATE, DECISIONS["reject"], run_id)
    assert wapp.store.runs.get(run_id).state == "failed"
    # naming yourself is not acting for another
    yourself = Role("approver --as itself", APPROVER.config, ("--as", ME))
    for role in (DELEGATE, yourself):
        run_id = start(wapp, repo)
        body = as_json(wcli(role, DECISIONS["decide abort"], run_id, check=0))
        assert body["run"]["state"] == "aborted"
        assert body["decision"]["authentication"]["attribution"] == \
            ("delegated" if role is DELEGATE else "self")


@pytest.mark.slow
def test_pause_resume_and_abort_need_an_approver_an_operator_or_a_delegate(
        wcli: Cli, wapp: App, repo: Path) -> None:
    run_id = start(wapp, repo)
    for role in NOBODY_OF_THE_GATE:
        refuse(wcli, wapp, role, CONTROLS["pause"], run_id)
    for role in (APPROVER, OPERATOR, DELEGATE):
        steered(wcli, wapp, role, "pause", run_id)
        if role is APPROVER:
            for role_refused in NOBODY_OF_THE_GATE:
                refuse(wcli, wapp, role_refused, CONTROLS["resume"], run_id)
                # a paused run still waits at its gate: abort is as restricted
                refuse(wcli, wapp, role_refused, CONTROLS["abort"], run_id)
        steered(wcli, wapp, role, "resume", run_id)
        assert wapp.store.runs.get(run_id).state == "awaiting_approval"
    for role_refused in (*NOBODY_OF_THE_GATE, ACTOR_ALICE):
        refuse(wcli, wapp, role_refused, CONTROLS["abort"], run_id)
    steered(wcli, wapp, OPERATOR, "abort", run_id)
    for role in (APPROVER, DELEGATE):
        run_id = start(wapp, repo)
        steered(wcli, wapp, role, "abort", run_id)
        assert wapp.store.runs.get(run_id).state == "aborted"


def test_a_gate_without_approvers_keeps_as_a_label(wcli: Cli, wapp: App, repo: Path,
                                                   cli: Cli) -> None:
    run_id = start(wapp, repo, "open@1")
    label = {"method": "os_account", "principal": ME, "id": UID, "attribution": "label"}
    paused = as_json(wcli(Role("bob", {}, ("--as", "bob")), CONTROLS["pause"], run_id,
                          check=0))
    assert paused["changed"] is True
    assert next(e.payload for e in wapp.events(run_id) if e.type == "run.paused")[
        "authentication"] == label
    wcli(ANYONE, CONTROLS["resume"], run_id, check=0)
    body = as_json(wcli(Role("alice", {}, ("--as", "alice")), DECISIONS["approve"], run_id,
                        check=0))
    assert (body["decision"]["actor"], body["decision"]["authentication"]) == ("alice", label)
    shown = as_json(cli("approvals", "show", str(body["approval"]["id"]), "--json", check=0))
    assert shown["decisions"][0]["authentication"] == label
    text = cli("approvals", "show", str(body["approval"]["id"]), check=0).stdout
    assert f"authenticated: label given by OS account {ME}" in text
    resolved = [e for e in wapp.events(run_id) if e.type == "approval.resolved"]
    assert resolved[0].payload["authentication"] == label
    view, _ = wapp.drive(run_id)
    assert view.run.state == "completed"
    report = read_report(view.run.workspace)
    assert report["approvals"][0]["decisions"][0]["authentication"] == label
    markdown = (Path(view.run.workspace) / "report.md").read_text()
    assert f"| alice | label given by OS account {ME} |" in markdown


# -- the hostile row ---------------------------------------------------------------------------
def _refs(repo: Path) -> str:
    return git.run(["for-each-ref", "--format=%(refname) %(objectname)"], repo).stdout


def test_hostile_agent_approves_as_alice_on_a_gate_of_the_leads(
        wapp: App, settings: Settings, home: Path, tmp_path: Path, db_url: str) -> None:
    """An agent-like process that read devflow's environment (the database in reach) runs
    ``devflow approve RUN --as alice`` on another run's gate of ``leads: [alice, bob]``."""
    (home / "config.yaml").write_text("groups:\n  leads: [alice, bob]\n", encoding="utf-8")
    target_repo = make_repo(tmp_path / "target")
    own_repo = make_repo(tmp_path / "own")
    target = start(wapp, target_repo)
    own = start(wapp, own_repo, "open@1")
    before = {"target": snapshot(wapp, target), "own": snapshot(wapp, own),
              "refs": (_refs(target_repo), _refs(own_repo))}
    # what the agent read from /proc/$PPID/environ, run from its own worktree
    leaked = {k: v for k, v in os.environ.items() if not k.startswith("DEVFLOW_")}
    leaked.update({"DEVFLOW_HOME": str(home), "DEVFLOW_DATABASE_URL": settings.database_url,
                   "DEVFLOW_WORKSPACE": str(settings.workspace)})
    attempts: list[tuple[list[str], dict[str, str]]] = [
        (["approve", target, "--as", "alice"], {}),
        (["approve", target], {"DEVFLOW_ACTOR": "alice"}),
        (["decide", target, "approve", "--as", "bob", "--no-drive"], {}),
        (["run", "abort", target, "--as", "alice"], {}),
        (["run", "pause", target], {}),
    ]
    outcomes = []
    for argv, extra in attempts:
        result = run_devflow([*argv, "--json"], {**leaked, **extra},
                             cwd=Path(wapp.store.runs.get(own).worktree))
        assert result.returncode == 3, (argv, result.stdout, result.stderr)
        outcomes.append(as_json(result)["error"]["code"])
    assert set(outcomes) == {"not_authorized"}
    assert {"target": snapshot(wapp, target), "own": snapshot(wapp, own),
            "refs": (_refs(target_repo), _refs(own_repo))} == before
    assert wapp.store.approvals.decisions(run_id=target) == []
    (tmp_path / "hostile.json").write_text(json.dumps({
        "escape": "devflow approve --as",
        "outcome": f"refused: not_authorized ({len(outcomes)} attempts), nothing recorded",
        "database": "sqlite" if db_url.startswith("sqlite") else "postgresql"}))


# -- another uid ---------------------------------------------------------------------------------
@pytest.fixture
def shared_home() -> Iterator[Path]:
    """A devflow home another uid can read (the test's own tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="devflow-shared-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.postgresql_only
def test_another_uid_is_its_own_account_whatever_it_names(
        pg_url: str, shared_home: Path, tmp_path: Path, home: Path) -> None:
    if os.getuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run the command as another uid")
    nobody = pwd.getpwnam("nobody")
    reach = subprocess.run(["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}",
                            "--clear-groups", sys.executable, "-c", "import devflow"],
                           capture_output=True, text=True, check=False, timeout=60,
                           env={"PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    if reach.returncode != 0:  # e.g. a checkout under a directory only its owner may enter
        pytest.skip(f"nobody cannot run this checkout's interpreter: {reach.stderr[-200:]}")
    directory = tmp_path / "templates"
    directory.mkdir()
    (directory / "restricted.yaml").write_text(TEMPLATES["restricted.yaml"], encoding="utf-8")
    app = App(Settings.load(env={}, home=str(home), database_url=pg_url,
                            workspace=str(tmp_path / "ws"), templates_dirs=[str(directory)]))
    try:
        run_id = start(app, make_repo(tmp_path / "repo"))
        config = shared_home / "config.yaml"

        def as_nobody(*argv: str, env: dict[str, str] | None = None,
                      check: int) -> dict[str, Any]:
            result = subprocess.run(
                ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}",
                 "--clear-groups", sys.executable, "-m", "devflow.cli.main", *argv, "--json"],
                capture_output=True, text=True, check=False, cwd=shared_home, timeout=120,
                env={"PATH": os.environ["PATH"], "HOME": str(shared_home),
                     "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
                     "DEVFLOW_HOME": str(shared_home), "DEVFLOW_DATABASE_URL": pg_url,
                     **(env or {})})
            assert result.returncode == check, (argv, result.stdout, result.stderr)
            return dict(as_json(result))

        config.write_text(f"groups:\n  leads: [{ME}]\n", encoding="utf-8")
        before = snapshot(app, run_id)
        for env in ({}, {"DEVFLOW_ACTOR": ME}, {"USER": ME, "LOGNAME": ME}):
            error = as_nobody("run", "pause", run_id, env=env, check=3)["error"]
            assert error["code"] == "not_authorized"
            assert error["message"].startswith("OS account nobody"), error
        assert snapshot(app, run_id) == before
        config.write_text(f"groups:\n  leads: [{ME}]\n  operators: [nobody]\n",
                          encoding="utf-8")
        assert as_nobody("run", "pause", run_id, check=0)["changed"] is True
        paused = next(e for e in app.events(run_id) if e.type == "run.paused").payload
        assert (paused["by"], paused["authentication"]) == ("nobody", {
            "method": "os_account", "principal": "nobody", "id": str(nobody.pw_uid),
            "attribution": "self"})
    finally:
        app.close()
