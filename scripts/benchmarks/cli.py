"""Read commands and a decision as whole ``devflow`` processes, beside the interpreter's
floors measured in the same rounds: ``python -c pass`` and ``python -c "import sqlalchemy"``.

Each round runs the two floors and then every command once (A B C ... A B C), so a figure
and the floor it is divided by share the machine's minutes. With a ``devflow daemon``
running on each database's home, each command also runs through it right after it ran in
process (``DEVFLOW_DAEMON=off``): "(sqlite, daemon)" figures, interleaved with the others.
A command runs as a person runs it (the console script, default log format, output
captured: not a terminal), with Python writing its bytecode caches as it does by
default (PYTHONDONTWRITEBYTECODE, if set where the bench runs, is left out: devflow's
own modules would be compiled again by every process, which no installed devflow does).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common import Figure, Report, Stat, make_app, start_request, synthetic_repo

from devflow.app import App

#: target: a read command's median at most this many times the ``import sqlalchemy`` floor
READ_TARGET = 2.0
#: and a decision's (recorded, not driven on) at most this many times
DECIDE_TARGET = 3.0


def plain_env() -> dict[str, str]:
    """The bench's environment without devflow's variables and PYTHONDONTWRITEBYTECODE."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith("DEVFLOW_") and k != "PYTHONDONTWRITEBYTECODE"}


def _env(url: str, root: Path, templates: Path) -> dict[str, str]:
    env = plain_env()
    env.update({"DEVFLOW_HOME": str(root / "home"), "DEVFLOW_DATABASE_URL": url,
                "DEVFLOW_WORKSPACE": str(root / "ws"), "DEVFLOW_ACTOR": "bench",
                "DEVFLOW_TEMPLATES_DIR": str(templates)})
    return env


class Timer:
    """Wall milliseconds and CPU milliseconds (user + system) of child processes."""

    def __init__(self) -> None:
        self.wall: dict[str, list[float]] = {}
        self.cpu: dict[str, list[float]] = {}

    def run(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = _now()
        done = subprocess.run(list(argv), capture_output=True, text=True, env=env, check=False,
                              stdin=subprocess.DEVNULL)
        wall = _now() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if check and done.returncode != 0:
            raise RuntimeError(f"{name}: exit {done.returncode}\n{done.stdout}\n{done.stderr}")
        self.wall.setdefault(name, []).append(wall)
        self.cpu.setdefault(name, []).append(
            (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000)
        return done


def _now() -> float:
    return time.perf_counter() * 1000


def _prepare(app: App, repo: Path, gated: int) -> tuple[str, int, list[str]]:
    """A run waiting at its gate (for status, events, approvals), a completed one, and
    ``gated`` more runs waiting, one for each timed decision."""
    view = app.start(start_request(repo, "benchgate@1", run_id="shown"))
    assert view.gate is not None, view.run.failure_reason
    app.start(start_request(repo, "bench2@1", run_id="done"))
    waiting = []
    for i in range(gated):
        started = app.start(start_request(repo, "benchgate@1", run_id=f"dec{i}"))
        assert started.gate is not None, started.run.failure_reason
        waiting.append(started.run.id)
    return view.run.id, view.gate.id, waiting


def commands(run_id: str, approval_id: int) -> list[tuple[str, list[str]]]:
    """The read commands, as a person types them."""
    return [
        ("run status", ["run", "status", run_id]),
        ("run list", ["run", "list"]),
        ("events", ["events", run_id]),
        ("approvals list", ["approvals", "list"]),
        ("approvals show", ["approvals", "show", str(approval_id)]),
        ("templates list", ["templates", "list"]),
        ("templates show", ["templates", "show", "development@1"]),
        ("personas list", ["personas", "list"]),
        ("personas show", ["personas", "show", "claude-implementer@1"]),
        ("schemas list", ["schemas", "list"]),
        ("schemas show", ["schemas", "show", "dev/spec@1"]),
        ("backends list", ["backends", "list"]),
        ("workers list", ["workers", "list"]),
        ("--version", ["--version"]),
    ]


def run(report: Report, databases: Sequence[tuple[str, str]], root: Path, n: int,
        templates: Path) -> None:
    """``databases``: (label, url) pairs; the database commands are timed on each, the
    definition commands (which open no database) on the first."""
    timer = Timer()
    plans = []
    daemons: list[dict[str, str]] = []
    try:
        _rounds(report, databases, root, n, templates, timer, plans, daemons)
        for _, env, listed, _ in plans:
            if daemon_served(env) != (n + 1) * (len(listed) + 1):
                raise RuntimeError("the daemon refused commands: see run/daemon.log in its home")
    finally:
        for env in daemons:
            stop_daemon(env)


def start_daemon(env: dict[str, str]) -> dict[str, str]:
    """A ``devflow daemon`` on ``env``'s home (the environment, to stop it with)."""
    devflow = str(Path(sys.executable).parent / "devflow")
    subprocess.run([devflow, "daemon", "start", "--idle", "1h"], env=env, check=True,
                   capture_output=True)
    return env


def stop_daemon(env: dict[str, str]) -> None:
    devflow = str(Path(sys.executable).parent / "devflow")
    subprocess.run([devflow, "daemon", "stop"], env=env, check=False, capture_output=True)


def daemon_served(env: dict[str, str]) -> int:
    """How many commands the daemon on ``env``'s home served (it must still be running:
    the figures "with the daemon" would otherwise be in-process ones)."""
    devflow = str(Path(sys.executable).parent / "devflow")
    done = subprocess.run([devflow, "daemon", "status", "--json"], env=env, check=True,
                          capture_output=True, text=True)
    status = json.loads(done.stdout)["daemon"]
    if status is None:
        raise RuntimeError("the daemon stopped during the bench (devflow's code changed?)")
    return int(status["served"])


def _rounds(report: Report, databases: Sequence[tuple[str, str]], root: Path, n: int,
            templates: Path, timer: Timer, plans: list[Any],
            daemons: list[dict[str, str]]) -> None:
    py = sys.executable
    devflow = str(Path(py).parent / "devflow")
    for label, url in databases:
        where = root / f"cli-{label}"
        repo = synthetic_repo(where / "repo", 20)
        app = make_app(url, where, templates_dirs=(templates,))
        try:
            run_id, approval_id, waiting = _prepare(app, repo, 2 * (n + 1))
        finally:
            app.close()
        env = _env(url, where, templates)
        daemons.append(start_daemon(env))
        listed = commands(run_id, approval_id)
        if plans:  # the definitions and --version do not depend on the database
            listed = [c for c in listed if c[0] in _DATABASE_COMMANDS]
        plans.append((label, env, listed, waiting))
    floors = [("python -c pass", [py, "-c", "pass"]),
              ("python -c 'import sqlalchemy'", [py, "-c", "import sqlalchemy"])]
    for round_ in range(n + 1):  # the first round warms the disk cache and devflow's caches
        for name, argv in floors:
            timer.run(name, argv, env=plain_env())
        for label, env, listed, waiting in plans:
            off = {**env, "DEVFLOW_DAEMON": "off"}
            for name, args in listed:
                timer.run(f"{name} ({label})", [devflow, *args], env=off)
                timer.run(f"{name} ({label}, daemon)", [devflow, *args], env=env)
            timer.run(f"decide ({label})", [devflow, "approve", waiting[2 * round_],
                                            "--no-drive"], env=off)
            timer.run(f"decide ({label}, daemon)", [devflow, "approve",
                                                    waiting[2 * round_ + 1], "--no-drive"],
                      env=env)
        if round_ == 0:
            for samples in (*timer.wall.values(), *timer.cpu.values()):
                samples.clear()
    floor_pass = Stat.of(timer.wall[floors[0][0]])
    floor = Stat.of(timer.wall[floors[1][0]])
    report.add(Figure("cli", "floor: python -c pass", "ms", floor_pass,
                      note=f"{Stat.of(timer.cpu[floors[0][0]]).median:.0f} ms CPU"))
    report.add(Figure("cli", "floor: python -c 'import sqlalchemy'", "ms", floor,
                      note=f"{Stat.of(timer.cpu[floors[1][0]]).median:.0f} ms CPU"))
    for label, _, listed, _ in plans:
        for name, _ in [*listed, ("decide", [])]:
            key = f"{name} ({label})"
            stat = Stat.of(timer.wall[key])
            limit = DECIDE_TARGET if name == "decide" else READ_TARGET
            ratio = stat.median / floor.median
            report.add(Figure("cli", key, "ms", stat, target=f"<= {limit:g}x floor",
                              ok=ratio <= limit,
                              note=f"{ratio:.2f}x the import sqlalchemy floor; "
                                   f"{Stat.of(timer.cpu[key]).median:.0f} ms CPU"
                                   + ("; approve --no-drive" if name == "decide" else "")))
            through = f"{name} ({label}, daemon)"
            served = Stat.of(timer.wall[through])
            report.add(Figure("cli", through, "ms", served,
                              note=f"through devflow daemon: {served.median / stat.median:.2f}x "
                                   f"in process; {Stat.of(timer.cpu[through]).median:.0f} ms "
                                   "CPU (the client's; the daemon's child not counted)"))


_DATABASE_COMMANDS = {"run status", "run list", "events", "approvals list", "approvals show",
                      "workers list"}
