"""What ``devflow daemon`` refuses, and what it holds before it forks.

A daemon runs commands for whoever connects to it, so: only this account's processes
(SO_PEERCRED, behind a socket 0600 in a directory 0700 inside devflow's home) confined
as the daemon is (no sandbox, namespace or no_new_privs of their own), only
commands of its own home, only from a client with its interpreter; and before forking it
has only imported: no cache of devflow's filled, no thread, no file or connection open.
(The sandboxed agent that looks for the socket is in tests/integration/test_hostile_agents.py.)
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from devflow.daemon import stamp, wire
from devflow.settings import Settings
from tests.acceptance.crash_support import wait_until
from tests.acceptance.daemon_support import DEVFLOW, env_for, running
from tests.conftest import SQLITE_ONLY

STDIO = {"encoding": "utf-8", "errors": "strict", "line_buffering": False,
         "write_through": False}


def _ask(home: Path, env: dict[str, str], cwd: str, interpreter: dict[str, Any]) -> Any:
    """A request made by hand (as a client would), and the daemon's answer."""
    sock = wire.connect(str(home))
    assert sock is not None
    fds = [os.open(os.devnull, os.O_RDWR) for _ in range(3)]
    try:
        with sock:
            wire.send(sock, {"version": wire.VERSION, "op": "run", "argv": [DEVFLOW, "run", "list"],
                             "env": env, "cwd": cwd, "umask": 0o022, "stdio": [STDIO] * 3,
                             "interpreter": interpreter}, fds=fds)
            return wire.Channel(sock).read()
    finally:
        for fd in fds:
            os.close(fd)


@SQLITE_ONLY
def test_another_home_and_another_interpreter_are_refused(settings: Settings,
                                                          tmp_path: Path) -> None:
    other = tmp_path / "other-home"
    other.mkdir()
    with running(settings) as daemon:
        env = env_for(settings)
        served = daemon.served()
        answer = _ask(settings.home, {**env, "DEVFLOW_HOME": str(other)}, str(tmp_path), {})
        assert answer == {"refused": f"the command's home is {other}, not the daemon's"}
        # relative to the command's directory, as Settings.load resolves it
        answer = _ask(settings.home, {**env, "DEVFLOW_HOME": "home"}, str(other), {})
        assert answer == {"refused": f"the command's home is {other / 'home'}, not the daemon's"}
        mine = stamp.interpreter(sys.path[1:])
        elsewhere = {**mine, "path": [str(tmp_path), *mine["path"]]}  # as PYTHONPATH makes it
        answer = _ask(settings.home, env, str(tmp_path), elsewhere)
        assert answer is not None and "interpreter" in answer["refused"]
        answer = _ask(settings.home, {**env, "DEVFLOW_HOME": 7}, str(tmp_path), mine)  # type: ignore[dict-item]
        assert answer == {"refused": "a malformed request"}
        # the real client with another import path: refused, so it runs the command itself
        daemon.run("run", "list", env={"PYTHONPATH": str(tmp_path)}, check=0)
        status = daemon.status()
        assert status is not None and status["served"] == served and status["refused"] == 5
        # the client's own choice: another home has no daemon, so the command runs here
        done = daemon.run("run", "list", env={"DEVFLOW_HOME": str(other)}, check=0)
        assert done.returncode == 0 and daemon.served() == served


@SQLITE_ONLY
def test_a_client_confined_otherwise_runs_its_command_itself(settings: Settings) -> None:
    """A process of this account under no_new_privs (what Landlock and seccomp sandboxes
    such as Codex's need) or in namespaces of its own is not served: the daemon's child
    would run unconfined. Its command runs in process, confined as it is."""
    wrappers = [["setpriv", "--no-new-privs"]]
    for flags in (["--net"], ["--user", "--map-root-user"]):
        if subprocess.run(["unshare", *flags, "true"], capture_output=True,
                          check=False).returncode == 0:
            wrappers.append(["unshare", *flags])
            break
    with running(settings) as daemon:
        served = daemon.served()
        for wrapper in wrappers:
            done = subprocess.run([*wrapper, DEVFLOW, "run", "list", "--json"],
                                  capture_output=True, text=True, env=daemon.env,
                                  stdin=subprocess.DEVNULL, timeout=120, check=False)
            assert done.returncode == 0, (wrapper, done.stderr)
            assert json.loads(done.stdout)["runs"] == []
        status = daemon.status()
        assert status is not None and status["served"] == served
        assert status["refused"] == len(wrappers)
        assert "confined otherwise" in status["last_refusal"]
        daemon.run("run", "list", check=0)  # a client confined as the daemon is served
        assert daemon.served() == served + 1


@SQLITE_ONLY
@pytest.mark.skipif(os.getuid() != 0, reason="needs root to connect as another account")
def test_another_account_is_refused_even_where_the_socket_is_open_to_it(
        settings: Settings) -> None:
    run_dir = settings.home / "run"
    socket_path = run_dir / "daemon.sock"
    with running(settings) as daemon:
        served = daemon.served()
        try:
            run_dir.chmod(0o711)
            socket_path.chmod(0o666)
            # a client will not use a run directory others may enter: in process
            daemon.run("run", "list", check=0)
            # connected (the socket let it), then closed by the daemon without an answer
            found = _as_nobody(run_dir)
            assert found.startswith("connected; ") and "answered:" not in found, found
            wait_until(lambda: "refused a connection from uid 65534" in daemon.log(),
                       "the refusal in the daemon's log")
        finally:
            run_dir.chmod(0o700)
            socket_path.chmod(0o600)
        assert daemon.served() == served
        daemon.run("run", "list", check=0)
        assert daemon.served() == served + 1


def _as_nobody(run_dir: Path) -> str:
    """Connect to the daemon as uid 65534 and send a status request: what came back."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only system calls, then _exit
        try:
            os.close(read)
            os.chdir(run_dir)
            os.setgid(65534)
            os.setuid(65534)
            sock = socket.socket(socket.AF_UNIX)
            sock.connect("daemon.sock")
            os.write(write, b"connected; ")
            wire.send(sock, {"version": wire.VERSION, "op": "status"})
            said = sock.recv(100)
            os.write(write, b"closed unanswered" if not said else b"answered: " + said)
        except BaseException as exc:  # noqa: BLE001 - what failed is the finding
            os.write(write, f"{type(exc).__name__}: {exc}".encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        found = pipe.read().decode()
    os.waitpid(pid, 0)
    return found


PROBE = """
import functools, gc, json, os, sys, threading
from devflow.cli import forkserver
forkserver.preload()
caches = [f"{o.__module__}.{o.__qualname__}" for o in gc.get_objects()
          if isinstance(o, functools._lru_cache_wrapper)
          and str(getattr(o, "__module__", "")).startswith("devflow")
          and o.cache_info().currsize]
fds = {}
for fd in os.listdir("/proc/self/fd"):
    try:
        fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        pass
from devflow import memo
import tempfile
print(json.dumps({"caches": caches, "threads": threading.active_count(), "fds": fds,
                  "modules": len(sys.modules), "memo": len(getattr(memo, "_shared", {})),
                  "tempdir": tempfile.tempdir}))
"""


@SQLITE_ONLY
def test_the_daemon_only_imports_before_it_forks(settings: Settings, tmp_path: Path) -> None:
    """What the daemon does before serving (``forkserver.preload``), in a process of its
    own with a real home and database in its environment: it reads none of them."""
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          env=env_for(settings), cwd=tmp_path, timeout=120, check=False,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["caches"] == []
    assert found["threads"] == 1
    assert found["memo"] == 0  # no remembered answer shared by the process's homes
    assert found["tempdir"] is None  # $TMPDIR is the command's, read when it is used
    opened = [target for fd, target in found["fds"].items() if int(fd) > 2]
    assert not [t for t in opened if str(settings.home) in t or t.endswith(".db")], opened
    assert found["modules"] > 500  # it did import what commands use
