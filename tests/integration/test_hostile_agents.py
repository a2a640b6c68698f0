"""The hostile suite: agents that try to escape their sandbox, on SQLite and PostgreSQL.

Each test runs one ``command`` persona (``tests/fakes/hostile_agent.py``) that tries one
escape, prints what it found, then writes a valid artifact, beside a bystander run that
waits at its gate. Every test checks what it tried failed or was caught, and that the
run's branch holds devflow's checkpoints only, the user's branches did not move and the
bystander run (its state, its events, its files) did not change. Each writes
``hostile.json``: the terminal summary shows them as a table (``-k hostile``).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from devflow import git
from devflow.app import App, RunView
from devflow.backends import samples
from devflow.requests import StartRequest
from devflow.settings import Settings
from devflow.states import RunState
from tests.acceptance.daemon_support import running
from tests.conftest import ROOT, make_repo
from tests.fakes import hostile_agent
from tests.integration.helpers import development, write_template

AGENT = Path(hostile_agent.__file__).resolve()
ONCE = """
name: once
version: 1
description: One implement phase, no repair.
roles:
  implementer: {description: Makes the change.}
phases:
  - key: implement
    title: Implement the change
    roles: [implementer]
    artifact: {path: .devflow/implementation.json, schema: dev/implementation@1}
    max_repairs: 0
    instructions: Make the change, then record it in .devflow/implementation.json.
"""
CANARY = f"canary-{uuid.uuid4().hex}"


@dataclass
class World:
    """What a hostile agent must leave as it found it: the user's branches in both
    repositories, and the bystander run (its state, its events, its workspace's files)."""

    app: App
    settings: Settings
    repo: Path
    bystander: RunView
    tmp_path: Path
    branches: dict[str, dict[str, str]] | None = None
    files: dict[str, str] | None = None
    seq: int = 0

    def take(self) -> None:
        self.branches = {str(r): _user_branches(r) for r in (self.repo, self._bystander_repo)}
        self.files = _digest(Path(self.bystander.run.workspace))
        self.seq = self.app.store.runs.get(self.bystander.run.id).last_seq

    @property
    def _bystander_repo(self) -> Path:
        return Path(self.bystander.run.repo)

    def assert_unchanged(self, hostile: RunView) -> None:
        assert self.branches == {str(r): _user_branches(r)
                                 for r in (self.repo, self._bystander_repo)}
        assert self.files == _digest(Path(self.bystander.run.workspace))
        other = self.app.store.runs.get(self.bystander.run.id)
        assert (other.state, other.last_seq) == (RunState.AWAITING_APPROVAL, self.seq)
        assert self.app.store.approvals.decisions(run_id=other.id) == []
        # the hostile run's branch: devflow's checkpoints on the base, nothing else
        run = hostile.run
        log = git.out(["log", "--format=%s", f"{run.base_sha}..{run.branch}"], self.repo)
        assert all(s.startswith("devflow(") for s in log.splitlines()), log


def _user_branches(repo: Path) -> dict[str, str]:
    refs = git.out(["for-each-ref", "--format=%(refname) %(objectname)", "refs/heads"], repo)
    return dict(line.split() for line in refs.splitlines()
                if not line.startswith("refs/heads/devflow/"))


def _digest(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file() and ".git" not in p.parts}


@pytest.fixture
def world(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    # devflow's own environment holds a secret and the database URL, as a user's would
    monkeypatch.setenv("HOSTILE_CANARY_TOKEN", CANARY)
    monkeypatch.setenv("DEVFLOW_DATABASE_URL", settings.database_url)
    (settings.home / "config.yaml").write_text(f"# {CANARY}\n", encoding="utf-8")
    templates = tmp_path / "templates"
    write_template(templates, "once", ONCE)
    (tmp_path / "personas").mkdir()
    settings = settings.replace(templates_dirs=(templates,),
                                personas_dirs=(tmp_path / "personas",))
    app = App(settings)
    try:
        bystander = app.start(development(make_repo(tmp_path / "bystander-repo")))
        assert bystander.gate is not None, bystander.run.state
        yield World(app, settings, make_repo(tmp_path / "repo"), bystander, tmp_path)
    finally:
        app.close()


def _persona(world: World, escape: str, targets: dict[str, Any], *,
             sandbox: dict[str, Any] | None = None) -> str:
    directory = world.tmp_path / "personas"
    name = f"hostile-{escape.replace('_', '-')}"
    box = sandbox or {}
    body = {
        "name": name, "version": 1, "roles": ["implementer"], "backend": "command",
        "options": {"argv": [sys.executable, "-I", str(AGENT)]},
        "env": {"set": {
            "HOSTILE_ESCAPE": escape, "HOSTILE_TARGETS": json.dumps(targets),
            "HOSTILE_MARK": f"{world.tmp_path}",
            "HOSTILE_ARTIFACT": samples.valid_text("dev/implementation@1",
                                                   world.app.catalog.schemas)}},
        "sandbox": {**box, "read_only": [str(AGENT.parent), *box.get("read_only", [])]}}
    (directory / f"{name}.yaml").write_text(yaml.safe_dump(body), encoding="utf-8")
    return f"{name}@1"


def _run(world: World, escape: str, targets: dict[str, Any] | None = None,
         **persona: Any) -> tuple[RunView, dict[str, Any]]:
    """Run the escape; the run and what the agent said it found."""
    ref = _persona(world, escape, targets or {}, **persona)
    world.take()
    app = App(world.settings)  # a catalog that sees the new persona
    try:
        view = app.start(StartRequest(
            repo=world.repo, base="main", template="once@1", actor="tester",
            requirements="Add a farewell.", binds={"implementer": ref}))
    finally:
        app.close()
    assert view.run.state is RunState.COMPLETED, view.run.failure_reason
    log = Path(view.run.workspace) / "logs" / "implement.attempt-1.stdout.log"
    said = [json.loads(line)["hostile"] for line in log.read_text().splitlines()
            if line.startswith('{"hostile"')]
    assert len(said) == 1, log.read_text()
    return view, said[0]


def _record(world: World, tmp_path: Path, escape: str, outcome: str) -> None:
    database = "sqlite" if world.settings.database_url.startswith("sqlite") else "postgresql"
    (tmp_path / "hostile.json").write_text(json.dumps(
        {"escape": escape, "outcome": outcome, "database": database}), encoding="utf-8")


def _refused(result: str) -> bool:
    return result.startswith("error:")


def _why(result: str) -> str:
    """``error: OSError: Read-only file system`` -> ``Read-only file system``."""
    return result.split(": ", 2)[-1] if _refused(result) else result


def _fate(path: str, result: str) -> str:
    """What became of a write outside what the sandbox shows: refused, or (for a path
    under /tmp, where the test's files live) written into the sandbox's own, empty /tmp."""
    if _refused(result):
        return _why(result)
    assert Path(path).is_relative_to("/tmp"), (path, result)
    return "went to its own empty /tmp, gone with it"


def _marked(mark: str) -> list[int]:
    """Live host processes whose environment carries HOSTILE_MARK=mark."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("HOSTILE_MARK") == mark and \
                    proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _none_left(mark: str, seconds: float = 3.0) -> bool:
    deadline = time.monotonic() + seconds
    while _marked(mark):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# -- what devflow's processes hold ------------------------------------------------------------
def test_hostile_agent_cannot_read_the_parents_environment(world: World, tmp_path: Path) -> None:
    view, said = _run(world, "parent_environ")
    seen = json.dumps(said)
    assert CANARY not in seen and world.settings.database_url not in seen
    assert said["ppid"] == 1  # its parent is the sandbox's init, not devflow
    assert set(said["all"]) <= {"1", "2", "3"}, said["all"].keys()
    world.assert_unchanged(view)
    _record(world, tmp_path, "read /proc/$PPID/environ",
            f"not visible: its parent is the sandbox's PID 1; {len(said['all'])} processes "
            f"in sight, none of devflow's; no secret, no database URL")


def test_hostile_agent_sees_no_process_of_devflow(world: World, tmp_path: Path) -> None:
    view, said = _run(world, "list_processes")
    lines = said["processes"].values()
    assert all(c.split()[0].endswith("/bwrap") or c.startswith(f"{sys.executable} -I {AGENT}")
               for c in lines), said["processes"]
    world.assert_unchanged(view)
    _record(world, tmp_path, "list /proc for devflow's processes",
            f"not visible: its own PID namespace ({len(said['processes'])} processes: "
            f"bwrap's init and the agent)")


def test_hostile_agent_cannot_open_the_sqlite_database(world: World, tmp_path: Path) -> None:
    database = (world.settings.home / "devflow.db")
    if world.settings.database_url.startswith("sqlite:///"):
        database = Path(world.settings.database_url.removeprefix("sqlite:///"))
    view, said = _run(world, "open_database", {"database": str(database)})
    assert said["direct"].startswith("error: FileNotFoundError"), said
    assert said["walked"] == [], said["walked"]
    world.assert_unchanged(view)
    _record(world, tmp_path, "open the SQLite file",
            "not visible: no such file in the sandbox (nor any .db or config walking up)")


def test_hostile_agent_finds_no_database_url(world: World, tmp_path: Path) -> None:
    view, said = _run(world, "database_url", {
        "config": str(world.settings.home / "config.yaml")})
    assert said["hits"] == {}, said["hits"]
    assert CANARY not in json.dumps(said)
    assert said["config"].startswith("error: FileNotFoundError")
    world.assert_unchanged(view)
    _record(world, tmp_path, "look for the database URL",
            "not found: not in its environment, no /proc of devflow's, config.yaml not visible")


def test_hostile_agent_running_devflow_approve_decides_nothing(world: World,
                                                               tmp_path: Path) -> None:
    view, said = _run(world, "approve", {"run": world.bystander.run.id, "source": str(ROOT)},
                      sandbox={"read_only": [str(ROOT)]})
    assert said["exit"] != 0, said
    assert "run_not_found" in said["stdout"] + said["stderr"], said
    world.assert_unchanged(view)
    _record(world, tmp_path, "devflow approve --as alice",
            "refused: run_not_found (devflow ran, but no database of devflow's is in sight)")


def test_hostile_agent_cannot_reach_the_daemon(world: World, tmp_path: Path) -> None:
    """A running ``devflow daemon`` forks commands for whoever connects to its socket: in
    its sandbox, the agent finds no socket (devflow's home is hidden), and the daemon saw
    no connection of its."""
    run_dir = world.settings.home / "run"
    with running(world.settings) as daemon:
        served = daemon.served()
        view, said = _run(world, "daemon_socket", {"socket": str(run_dir / "daemon.sock"),
                                                   "run_dir": str(run_dir)})
        assert said["socket"].startswith("error: FileNotFoundError"), said
        assert said["by_dir"].startswith("error: FileNotFoundError"), said
        assert said["listing"] in ([], "error: FileNotFoundError: No such file or directory"), \
            said
        status = daemon.status()
        assert status is not None and status["served"] == served and status["refused"] == 0
        assert "refused" not in daemon.log() and "dropped" not in daemon.log()
    world.assert_unchanged(view)
    _record(world, tmp_path, "connect to devflow daemon's socket",
            "not visible: devflow's home (and its run/daemon.sock) is hidden in the sandbox")


def test_hostile_agent_without_network_cannot_reach_the_database(world: World,
                                                                 tmp_path: Path) -> None:
    view, said = _run(world, "connect_database", {"port": 5432},
                      sandbox={"network": "none"})
    assert said["connect"].startswith("error:"), said
    world.assert_unchanged(view)
    _record(world, tmp_path, "connect to 127.0.0.1:5432 (network: none)",
            f"failed: {_why(said['connect'])} (no network but its own loopback)")


# -- processes that would outlive the agent --------------------------------------------------
@pytest.mark.parametrize("escape", ["setsid_daemon", "nohup_daemon", "double_fork"])
def test_hostile_daemons_end_with_the_agent(escape: str, world: World, tmp_path: Path) -> None:
    view, said = _run(world, escape)
    if "alive" in said:
        assert said["alive"] is True, said  # it was running when the agent exited
    ended = time.monotonic()
    gone = _none_left(str(world.tmp_path))
    assert gone, f"{escape}: processes of the agent outlived it: {_marked(str(tmp_path))}"
    world.assert_unchanged(view)
    _record(world, tmp_path, escape.replace("_", " "),
            f"killed with its sandbox when the agent exited (none left "
            f"{(time.monotonic() - ended) * 1000:.0f} ms after the run's attempt ended)")


# -- writing where it must not ----------------------------------------------------------------
def test_hostile_agent_cannot_write_the_common_git_dir(world: World, tmp_path: Path) -> None:
    common = world.repo / ".git"
    config = (common / "config").read_bytes()
    view, said = _run(world, "common_git_dir", {"common": str(common)})
    assert all(_refused(said[k]) for k in ("ref", "hook", "config")), said
    assert said["update_ref"] != 0, said
    assert (common / "config").read_bytes() == config
    assert not (common / "hooks" / "post-commit").exists()
    world.assert_unchanged(view)
    _record(world, tmp_path, "write the common git dir (refs, hooks, config)",
            f"refused: {_why(said['ref'])}; git update-ref failed too")


def test_hostile_agent_cannot_repoint_the_worktrees_git_file(world: World,
                                                             tmp_path: Path) -> None:
    view, said = _run(world, "dot_git", {"common": str(world.repo / ".git")})
    assert _refused(said["dot_git"]), said
    assert (Path(view.run.worktree) / ".git").read_text().startswith("gitdir: ")
    assert str(world.repo / ".git") + "\n" != (Path(view.run.worktree) / ".git").read_text()
    world.assert_unchanged(view)
    _record(world, tmp_path, "rewrite the worktree's .git",
            f"refused: {_why(said['dot_git'])} (bound read-only over itself)")


def test_hostile_agent_cannot_write_outside_its_worktree(world: World, tmp_path: Path) -> None:
    token = uuid.uuid4().hex
    readme = (world.repo / "README.md").read_bytes()
    paths = {"checkout": str(world.repo / "README.md"),
             "user_home": os.path.expanduser(f"~/hostile-{token}"),
             "devflow_home": str(world.settings.home / f"hostile-{token}"),
             "system": f"/usr/local/hostile-{token}",
             "tmp": f"/tmp/hostile-{token}"}
    view, said = _run(world, "outside_worktree", {"paths": paths})
    assert (world.repo / "README.md").read_bytes() == readme
    for name, path in paths.items():
        assert not Path(path).exists() or name == "checkout", (name, said)
    fates = {name: _fate(path, said[name]) for name, path in paths.items()}
    assert fates["system"] == fates["user_home"] == "Read-only file system", fates
    world.assert_unchanged(view)
    _record(world, tmp_path, "write outside the worktree",
            "; ".join(f"{k}: {v}" for k, v in fates.items()))


def test_hostile_agent_cannot_write_another_runs_workspace(world: World,
                                                           tmp_path: Path) -> None:
    other = Path(world.bystander.run.workspace)
    paths = {"worktree": str(other / "main" / "README.md"),
             "prompts": str(next((other / "prompts").iterdir())),
             "artifacts": str(other / "artifacts" / "hostile.json")}
    view, said = _run(world, "other_run", {"paths": paths})
    fates = {name: _fate(path, said[name]) for name, path in paths.items()}
    assert all(Path(p).exists() == (k != "artifacts") for k, p in paths.items())
    world.assert_unchanged(view)  # its files are as they were
    _record(world, tmp_path, "write another run's workspace",
            "not visible; " + "; ".join(f"{k}: {v}" for k, v in fates.items()))
