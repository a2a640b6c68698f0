"""``devflow daemon``: commands handed by the console script to a resident process that
forks a child per command, and the same commands they would be in process.

Every command here runs as a person runs it: the console script (the thin client) in a
process of its own, against a real daemon started with ``devflow daemon start`` on the
test's home; ``DEVFLOW_DAEMON=off`` runs the same command in process to compare.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import psutil

from devflow import git
from devflow.app import App
from devflow.settings import Settings
from devflow.states import RunState
from tests.acceptance.crash_support import wait_until
from tests.acceptance.daemon_support import (
    DEVFLOW,
    Daemon,
    env_for,
    running,
    start_daemon,
)
from tests.conftest import SQLITE_ONLY, make_repo
from tests.gates_support import start
from tests.integration.helpers import (
    CLI_BINDS,
    QUICK_CLI_BINDS,
    procs_of_run,
    requirements_file,
)

OFF = {"DEVFLOW_DAEMON": "off"}


def _events(app: App, run_id: str) -> list[tuple[str, str | None]]:
    return [(e.type, e.phase) for e in app.store.events.after(run_id)]


def test_a_gated_run_through_the_daemon_is_the_run_in_process(app: App, settings: Settings,
                                                              tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    git.run(["branch", "other"], repo)
    req = str(requirements_file(tmp_path))
    ended = {}
    with running(settings) as daemon:
        for label, env, base in (("daemon", {}, "main"), ("in process", OFF, "other")):
            served = daemon.served()
            started = daemon.run("run", "start", "--repo", str(repo), "--base", base,
                                 "--template", "development@1", "--requirements", req,
                                 *CLI_BINDS, "--scenario", "plan=plan:0", "--json",
                                 env=env, check=0)
            run = json.loads(started.stdout)["run"]
            commands = 1
            while run["state"] == RunState.AWAITING_APPROVAL:
                approved = daemon.run("approve", run["id"], "--json", env=env, check=0)
                run = json.loads(approved.stdout)["run"]
                commands += 1
            assert run["state"] == RunState.COMPLETED, run
            assert daemon.served() - served == (commands if label == "daemon" else 0)
            report = json.loads((Path(run["workspace"]) / "report.json").read_text())
            ended[label] = (_events(app, run["id"]), report["run"]["state"], sorted(report),
                            [p["state"] for p in run["phases"]])
    assert ended["daemon"] == ended["in process"]


@SQLITE_ONLY
def test_exit_codes_output_stdin_cwd_and_env_are_the_commands(app: App, settings: Settings,
                                                              tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    git.run(["branch", "second"], repo)
    with running(settings) as daemon:
        served = daemon.served()
        compared = [("run", "list"), ("run", "status", "nope"), ("run", "status", "nope", "--json"),
                    ("--version",), ("bogus",), ("run", "start", "--repo", str(repo), "--json"),
                    ("templates", "show", "quick@1")]
        for args in compared:
            through = daemon.run(*args)
            here = daemon.run(*args, env=OFF)
            assert (through.returncode, through.stdout, through.stderr) == \
                (here.returncode, here.stdout, here.stderr), args
        assert daemon.served() - served == len(compared)
        assert daemon.run("run", "status", "nope").returncode == 4
        error = json.loads(daemon.run("run", "status", "nope", "--json", check=4).stdout)
        assert error["error"]["code"] == "run_not_found"
        daemon.run("bogus", check=2)
        # --repo . from the command's directory, requirements on its stdin, its own actor
        runs = {}
        for actor, base in (("alice", "main"), ("bob", "second")):
            done = daemon.run("run", "start", "--repo", ".", "--base", base, "--template",
                              "quick@1", "--requirements", "-", *QUICK_CLI_BINDS, "--json",
                              cwd=repo / "src", env={"DEVFLOW_ACTOR": actor},
                              input_text=f"A farewell, asked by {actor} on stdin.\n", check=0)
            runs[actor] = json.loads(done.stdout)["run"]
        for actor, run in runs.items():
            assert run["repo"] == str(repo.resolve()) and run["state"] == "completed"
            assert app.store.runs.get(run["id"]).created_by == actor
            prompt = Path(run["workspace"]) / "prompts" / "implement.attempt-1.md"
            assert f"asked by {actor} on stdin" in prompt.read_text(encoding="utf-8")
        assert daemon.served() - served == len(compared) + 3 + 2


@SQLITE_ONLY
def test_a_closed_pipe_ends_a_command_as_in_process(app: App, settings: Settings,
                                                    tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    daemon_env = env_for(settings)
    with running(settings) as daemon:
        run = json.loads(daemon.run("run", "start", "--repo", str(repo), "--template",
                                    "quick@1", "--requirements",
                                    str(requirements_file(tmp_path)), *QUICK_CLI_BINDS,
                                    "--json", check=0).stdout)["run"]
        served = daemon.served()
        for command in (f"events {run['id']}", "run list", f"report {run['id']}"):
            for reader in ("head -1", "true"):
                codes = []
                for env in (daemon_env, {**daemon_env, **OFF}):
                    shell = f"{DEVFLOW} {command} | {reader} >/dev/null; " \
                            f"echo rc=${{PIPESTATUS[0]}}"
                    done = subprocess.run(["bash", "-c", shell], capture_output=True,
                                          text=True, env=env, timeout=120, check=False)
                    assert "Traceback" not in done.stderr, done.stderr
                    codes.append(done.stdout.strip())
                assert codes[0] in ("rc=0", "rc=141"), (command, reader, codes)
                assert codes[1] in ("rc=0", "rc=141"), (command, reader, codes)
        assert daemon.served() - served == 6


def _hanging(settings: Settings, repo: Path, base: str,
             req: str) -> subprocess.Popen[str]:
    return subprocess.Popen([DEVFLOW, "run", "start", "--repo", str(repo), "--base", base,
                             "--template", "quick@1", "--requirements", req,
                             *QUICK_CLI_BINDS, "--scenario", "implement=hang", "--json"],
                            env=env_for(settings), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # a job of its own, as a shell starts it: a group whose parent
                            # is in this session (the kernel drops a Ctrl-Z sent to an
                            # orphaned group, in process or not)
                            process_group=0)


def _agent_running(app: App, base: str) -> str | None:
    for run in app.runs():
        if run.base == base and run.state is RunState.EXECUTING and procs_of_run(run.id):
            return run.id
    return None


@SQLITE_ONLY
def test_signals_reach_the_command_and_it_ends_with_its_client(app: App, settings: Settings,
                                                               tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    git.run(["branch", "killed"], repo)
    req = str(requirements_file(tmp_path))
    clients: list[subprocess.Popen[str]] = []
    with running(settings) as daemon:
        try:
            _signals_reach_the_command(app, settings, daemon, repo, req, clients)
        finally:  # whatever failed, no command is left behind (stopped or hanging)
            for client in clients:
                if client.poll() is None:
                    client.kill()
                    client.communicate(timeout=60)


def _signals_reach_the_command(app: App, settings: Settings, daemon: Daemon, repo: Path,
                               req: str, clients: list[subprocess.Popen[str]]) -> None:
    # SIGTERM to the client: the command stops as on SIGTERM in process (143, the run
    # interrupted, left to drive or abort)
    client = _hanging(settings, repo, "main", req)
    clients.append(client)
    run_id = wait_until(lambda: _agent_running(app, "main"), "the agent to start")
    child = daemon.children()[0]
    # Ctrl-Z: the client stops its command, then itself; continued, it continues it
    client.send_signal(signal.SIGTSTP)
    wait_until(lambda: psutil.Process(client.pid).status() == psutil.STATUS_STOPPED,
               "the client to stop")
    wait_until(lambda: child.status() == psutil.STATUS_STOPPED, "the command to stop")
    client.send_signal(signal.SIGCONT)
    wait_until(lambda: child.status() != psutil.STATUS_STOPPED, "the command to go on")
    client.send_signal(signal.SIGTERM)
    out, err = client.communicate(timeout=120)
    assert client.returncode == 143, err
    assert json.loads(out)["error"]["code"] == "interrupted", out
    assert app.store.runs.get(run_id).state is not RunState.ABORTED
    wait_until(lambda: not procs_of_run(run_id), "the agent to end")
    # the client killed: its command gets SIGTERM and ends, its agent with it
    client = _hanging(settings, repo, "killed", req)
    clients.append(client)
    run_id = wait_until(lambda: _agent_running(app, "killed"), "the second agent")
    child = daemon.children()[0]
    client.kill()
    client.communicate(timeout=60)
    child.wait(120)
    wait_until(lambda: not procs_of_run(run_id), "the second agent to end")
    said = f"pid {child.pid} ended (exit 143) after its client went away"
    wait_until(lambda: said in daemon.log(), "the daemon to log the command's end")
    assert app.store.runs.get(run_id).state is not RunState.ABORTED


@SQLITE_ONLY
def test_start_status_stop_and_the_idle_timeout(settings: Settings) -> None:
    env = env_for(settings)
    daemon = start_daemon(env, "--idle", "1h")
    again = daemon.run("daemon", "start", "--json", check=0)
    assert json.loads(again.stdout)["started"] is False
    assert "already running" in daemon.run("daemon", "start", check=0).stdout
    status = daemon.status()
    assert status is not None and status["pid"] == daemon.pid
    assert status["idle_timeout"] == 3600
    assert status["socket"] == str(settings.home / "run" / "daemon.sock")
    socket = settings.home / "run" / "daemon.sock"
    assert oct(socket.stat().st_mode & 0o777) == oct(0o600)
    assert oct(socket.parent.stat().st_mode & 0o777) == oct(0o700)
    stopped = json.loads(daemon.run("daemon", "stop", "--json", check=0).stdout)
    assert stopped["stopped"] is True
    assert not psutil.pid_exists(daemon.pid) or \
        psutil.Process(daemon.pid).status() == psutil.STATUS_ZOMBIE
    assert not socket.exists()
    assert json.loads(daemon.run("daemon", "status", "--json", check=0).stdout)["running"] \
        is False
    assert "no daemon was running" in daemon.run("daemon", "stop", check=0).stdout
    daemon.run("daemon", "start", "--idle", "soon", check=2)
    # idle: it ends by itself
    idle = start_daemon(env, "--idle", "1s")
    psutil.Process(idle.pid).wait(120)
    assert "stopped (idle)" in idle.log()


@SQLITE_ONLY
def test_changed_code_is_never_run(settings: Settings, tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(Path(__file__).resolve().parents[2] / "devflow", source / "devflow",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = env_for(settings, {"PYTHONPATH": str(source)})
    daemon = start_daemon(env)
    try:
        served = daemon.served()
        daemon.run("run", "list", check=0)
        assert daemon.served() == served + 1
        changed = source / "devflow" / "cli" / "output.py"
        later = changed.stat().st_mtime_ns + 5_000_000_000
        os.utime(changed, ns=(later, later))
        daemon.run("run", "list", check=0)  # refused: run in process
        psutil.Process(daemon.pid).wait(120)
        assert "devflow's code changed" in daemon.log()
        daemon.run("run", "list", check=0)
    finally:
        daemon.stop()


def _on_terminal(env: dict[str, str], *args: str) -> tuple[int, bytes]:
    """``devflow ARGS`` with a terminal (a pty) as stdin, stdout and stderr: its exit code
    and what the terminal showed."""
    main, side = os.openpty()
    try:
        done = subprocess.run([DEVFLOW, *args], stdin=side, stdout=side, stderr=side,
                              env=env, timeout=120, check=False)
    finally:
        os.close(side)
    shown = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # EIO: the terminal's last reader and writer are gone
            break
        if not chunk:
            break
        shown += chunk
    os.close(main)
    return done.returncode, shown


@SQLITE_ONLY
def test_a_terminal_stays_a_terminal(app: App, settings: Settings, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    with running(settings) as daemon:
        daemon.run("run", "start", "--repo", str(repo), "--template", "quick@1",
                   "--requirements", str(requirements_file(tmp_path)), *QUICK_CLI_BINDS,
                   check=0)
        served = daemon.served()
        env = {**daemon.env, "COLUMNS": "120", "TERM": "xterm"}
        env.pop("DEVFLOW_LOG_FORMAT")
        for args in (("run", "list"), ("run", "status", "nope")):
            through = _on_terminal(env, *args)
            here = _on_terminal({**env, **OFF}, *args)
            assert through == here, args
        assert daemon.served() == served + 2
        # rich's table on a terminal, not the plain columns printed to a pipe
        assert "─" in _on_terminal(env, "run", "list")[1].decode()


@SQLITE_ONLY
def test_a_daemon_killed_ends_its_commands_and_their_clients_say_so(
        app: App, settings: Settings, tmp_path: Path) -> None:
    run_id = start(app, make_repo(tmp_path / "repo")).run.id  # waits at its first gate
    daemon = start_daemon(env_for(settings))
    client = None
    try:
        client = subprocess.Popen([DEVFLOW, "events", run_id, "--follow"], env=daemon.env,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, process_group=0)
        child = wait_until(daemon.children, "the command to be forked")[0]
        psutil.Process(daemon.pid).kill()
        _, err = client.communicate(timeout=120)
        assert client.returncode == 1
        assert "the daemon ended during the command" in err
        child.wait(120)  # SIGTERM from the kernel when its parent died
    finally:
        if client is not None and client.poll() is None:
            client.kill()
        daemon.stop()
