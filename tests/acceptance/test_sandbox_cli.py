"""The sandbox through the devflow command, on SQLite and PostgreSQL: a worker killed with
SIGKILL takes every process of its attempt with it (a ``setsid`` daemon, the real Codex);
``sandbox: none`` runs unsandboxed and says so; without bubblewrap, agents are refused
unless the configuration allows them unsandboxed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from devflow import git, model
from devflow.app import App
from devflow.backends import process, samples
from devflow.settings import Settings
from devflow.states import PhaseState, RunState
from tests.acceptance.crash_support import Devflow, publish, schemas, wait_until
from tests.conftest import make_repo
from tests.fakes import agents, hostile_agent
from tests.fakes.model_server import FakeModel
from tests.integration.helpers import QUICK_CLI_BINDS, write_template

AGENT = Path(hostile_agent.__file__).resolve()
IMPLEMENTATION = ".devflow/implementation.json"
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
    timeout: 2m
    instructions: Make the change, then record it in .devflow/implementation.json.
"""


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    templates, personas = tmp_path / "templates", tmp_path / "personas"
    write_template(templates, "once", ONCE)
    personas.mkdir()
    return templates, personas


@pytest.fixture
def devflow(settings: Settings, tmp_path: Path, dirs: tuple[Path, Path]) -> Iterator[Devflow]:
    templates, personas = dirs
    runner = Devflow(settings, tmp_path / "df", lease=3.0, env={
        "DEVFLOW_TEMPLATES_DIR": str(templates), "DEVFLOW_PERSONAS_DIR": str(personas)})
    yield runner
    runner.close()


def _hostile(personas: Path, name: str, escape: str, mark: str, *, wait: float = 0,
             sandbox: Any = None) -> str:
    text = samples.valid_text("dev/implementation@1", schemas())
    body = {"name": name, "version": 1, "roles": ["implementer"], "backend": "command",
            "options": {"argv": [sys.executable, "-I", str(AGENT)]},
            "env": {"set": {"HOSTILE_ESCAPE": escape, "HOSTILE_MARK": mark,
                            "HOSTILE_WAIT": str(wait), "HOSTILE_ARTIFACT": text}},
            "sandbox": sandbox if sandbox is not None else {"read_only": [str(AGENT.parent)]}}
    (personas / f"{name}.yaml").write_text(yaml.safe_dump(body), encoding="utf-8")
    return f"{name}@1"


def _carrying(name: str, value: str) -> list[int]:
    """Live host processes whose environment has ``name=value``."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(name) == value and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _start(df: Devflow, repo: Path, run_id: str, ref: str, *extra: str,
           env: dict[str, str] | None = None, check: int = 0) -> Any:
    return df.run("run", "start", "--repo", str(repo), "--base", "main", "--template",
                  "once@1", "--objective", "Escape.", "--run-id", run_id,
                  f"--bind=implementer={ref}", *extra, "--json", env=env, check=check,
                  name="start")


def _kill_worker_and_wait(df: Devflow, worker: Any, name: str, value: str,
                          tmp_path: Path, label: str) -> float:
    """SIGKILL the worker; seconds until no process carrying ``name=value`` is left (at
    most 3, polled)."""
    worker.kill(signal.SIGKILL)
    killed = time.monotonic()
    assert worker.wait(30) == -signal.SIGKILL
    while _carrying(name, value):
        assert time.monotonic() - killed < 3.0, (
            f"processes of the attempt alive 3 s after the worker's kill -9: "
            f"{[psutil.Process(p).cmdline()[:4] for p in _carrying(name, value)]}")
        time.sleep(0.02)
    gone = time.monotonic() - killed
    publish(label, {"seconds_until_none_left": round(gone, 3)}, tmp_path)
    return gone


# -- kill -9 of a worker -------------------------------------------------------------------
def test_kill_9_of_a_worker_ends_its_agents_setsid_daemon(
        devflow: Devflow, dirs: tuple[Path, Path], tmp_path: Path) -> None:
    mark = f"kill9-{tmp_path.name}"
    ref = _hostile(dirs[1], "daemon-then-wait", "setsid_daemon", mark, wait=120)
    _start(devflow, make_repo(tmp_path / "repo"), "kill9", ref, "--detach")
    worker = devflow.spawn("worker", "--once", "--poll", "0.2", "--json", name="worker")
    # the agent, its setsid daemon and the sandbox around them are all up
    log = devflow.settings.workspace / "kill9" / "logs" / "implement.attempt-1.stdout.log"
    wait_until(lambda: log.is_file() and '"hostile"' in log.read_text(), "the daemon")
    said = json.loads(log.read_text().splitlines()[0])["hostile"]
    assert said["alive"] is True
    assert len(_carrying("HOSTILE_MARK", mark)) >= 4  # bwrap, its init, the agent, daemon
    _kill_worker_and_wait(devflow, worker, "HOSTILE_MARK", mark, tmp_path,
                          "kill -9 of a worker, setsid daemon")


@pytest.mark.real_cli
@pytest.mark.slow
def test_kill_9_of_a_worker_ends_the_real_codex(devflow: Devflow, dirs: tuple[Path, Path],
                                                tmp_path: Path) -> None:
    binary = agents.real_cli_bin("codex")
    with FakeModel() as fake:
        ref = agents.write_persona(dirs[1], "fake-codex-hang", "implementer", "codex", fake,
                                   binary)
        fake.plan(IMPLEMENTATION, "hang")  # the model has Codex run `sleep 600`
        app = App(devflow.settings)
        try:
            requirements = agents.requirements(app.catalog.schemas,
                                               {IMPLEMENTATION: "dev/implementation@1"})
        finally:
            app.close()
        (tmp_path / "requirements.md").write_text(requirements, encoding="utf-8")
        devflow.run("run", "start", "--repo", str(make_repo(tmp_path / "repo")), "--base",
                    "main", "--template", "once@1", "--requirements",
                    str(tmp_path / "requirements.md"), "--run-id", "codex9",
                    f"--bind=implementer={ref}", "--detach", "--json", name="start")
        worker = devflow.spawn("worker", "--once", "--poll", "0.2", "--json", name="worker")
        # Codex asked for the sleep: its npm launcher, the native codex and the sleep live
        wait_until(lambda: any(s.mode == "hang" for s in fake.agentic()), "Codex's sleep")
        wait_until(lambda: any("sleep" in " ".join(psutil.Process(p).cmdline())
                               for p in _carrying("DEVFLOW_RUN_ID", "codex9")),
                   "the sleep Codex runs")
        _kill_worker_and_wait(devflow, worker, "DEVFLOW_RUN_ID", "codex9", tmp_path,
                              "kill -9 of a worker, real Codex")


# -- PID reuse -------------------------------------------------------------------------------
def test_the_sweep_leaves_a_reused_pid_alone_and_says_so(devflow: Devflow,
                                                         tmp_path: Path) -> None:
    """A dead driver's invocation names a pid that an unrelated process holds now (its
    start time differs from the one recorded): `devflow sweep` recovers the run, kills
    nothing, and prints why."""
    _start(devflow, make_repo(tmp_path / "repo"), "reused", "scripted-implementer@1",
           "--detach")
    app = devflow.app
    lease = app.store.leases.claim("reused", "ghost:host:1", 0.5)
    assert lease is not None
    unrelated = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        def ghost(tx: Any) -> None:
            tx.move_run(RunState.EXECUTING)
            tx.move_phase("implement", PhaseState.RUNNING, model.NewEvent(
                "phase.started", "implement", {"attempt": 1}), attempt=1)
            tx.start_invocation(
                phase_key="implement", attempt=1, kind="agent", backend="command",
                argv=["agent"], host=app.context().host, pid=unrelated.pid,
                pgid=unrelated.pid, process_start=process.start_time(unrelated.pid) - 1)
        app.store.runs.change("reused", ghost, lease=lease)
        wait_until(lambda: "reused" in app.store.leases.expired(), "the lease to expire")
        said = devflow.run("sweep", name="sweep").stdout()
        assert "reused  recovered" in said, said
        assert (f"agent pid {unrelated.pid} (implement, attempt 1): gone; pid "
                f"{unrelated.pid} now belongs to another process, left alone") in said, said
        assert unrelated.poll() is None
    finally:
        unrelated.kill()
        unrelated.wait()


# -- unsandboxed, on purpose or allowed --------------------------------------------------------
def test_sandbox_none_runs_unsandboxed_and_says_so(devflow: Devflow, dirs: tuple[Path, Path],
                                                   tmp_path: Path) -> None:
    ref = _hostile(dirs[1], "open-agent", "list_processes", "open", sandbox="none")
    started = _start(devflow, make_repo(tmp_path / "repo"), "open", ref)
    assert "warning: role implementer: the agent of open-agent@1 will run UNSANDBOXED" \
        in started.stderr(), started.tail()
    assert "the persona says `sandbox: none`" in started.stderr()
    events = devflow.events("open")
    bound = next(e for e in events if e.type == "run.bound")
    assert bound.payload["sandbox"] == {"implementer": "none: the persona says `sandbox: none`"}
    agent = next(e for e in events if e.type == "agent.started")
    assert agent.payload["sandbox"].startswith("none:")
    # and it did see the host's processes: devflow's among them
    log = devflow.settings.workspace / "open" / "logs" / "implement.attempt-1.stdout.log"
    seen = json.loads(log.read_text().splitlines()[0])["hostile"]["processes"]
    assert any("devflow.cli.main" in c for c in seen.values())
    assert devflow.run_of("open").state is RunState.COMPLETED


def test_without_bubblewrap_agents_are_refused_unless_allowed(
        devflow: Devflow, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    hidden = {"DEVFLOW_BWRAP": str(tmp_path / "no-such-bwrap")}
    listed = devflow.run("backends", "list", env=hidden, name="list").stdout()
    assert "REFUSED" in listed and "WARNING: no sandbox here" in listed
    refused = devflow.run("run", "start", "--repo", str(repo), "--base", "main", "--template",
                          "quick@1", "--objective", "x", "--run-id", "nobox",
                          *QUICK_CLI_BINDS, "--json", env=hidden, check=2, name="start")
    error = json.loads(refused.stdout())["error"]
    assert error["code"] == "sandbox_unavailable", error
    assert "no-such-bwrap" in error["message"] and "allow_unsandboxed" in error["hint"]
    # nothing was created: no run, no branch
    assert devflow.app.runs() == []
    assert git.out(["for-each-ref", "refs/heads/devflow"], repo) == ""
    allowed = devflow.run("run", "start", "--repo", str(repo), "--base", "main", "--template",
                          "quick@1", "--objective", "x", "--run-id", "allowed",
                          *QUICK_CLI_BINDS, "--json",
                          env={**hidden, "DEVFLOW_ALLOW_UNSANDBOXED": "1"}, name="start")
    assert json.loads(allowed.stdout())["run"]["state"] == "completed"
    assert "UNSANDBOXED" in allowed.stderr() and "allowed by allow_unsandboxed" \
        in allowed.stderr()
    agent = next(e for e in devflow.events("allowed") if e.type == "agent.started")
    assert "allowed by allow_unsandboxed" in agent.payload["sandbox"]
