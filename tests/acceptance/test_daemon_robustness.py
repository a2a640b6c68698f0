"""What a client cannot do to ``devflow daemon``: a slow, silent or malformed request, or
descriptors it sends, delay or harm only itself; the daemon goes on serving the others.
And what a client does when the daemon misbehaves: a daemon that does not answer, a
signal before the command started, a command killed with SIGKILL.

Requests are made by hand, as a client would make them, on a real daemon.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from devflow.app import App
from devflow.daemon import wire
from devflow.settings import Settings
from tests.acceptance.crash_support import wait_until
from tests.acceptance.daemon_support import DEVFLOW, Daemon, env_for, running, start_daemon
from tests.conftest import SQLITE_ONLY, make_repo
from tests.gates_support import start

STDIO = {"encoding": "utf-8", "errors": "strict", "line_buffering": False,
         "write_through": False}


def _status(home: Path) -> dict[str, Any] | None:
    """The daemon's status, asked by hand (a few milliseconds: no interpreter starts)."""
    sock = wire.connect(str(home), timeout=60)
    if sock is None:
        return None
    with sock:
        try:
            wire.send(sock, {"version": wire.VERSION, "op": "status"})
            answer = wire.Channel(sock).read()
        except ConnectionError:  # closed unanswered
            return None
    return None if answer is None else dict(answer["status"])


def _closed(sock: socket.socket) -> bool:
    """Whether the other end closed ``sock`` (without waiting)."""
    try:
        return sock.recv(1, socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False


def _eof(fd: int) -> bool:
    """Whether the pipe read by ``fd`` has no writer left (without waiting)."""
    return bool(select.select([fd], [], [], 0)[0]) and os.read(fd, 1) == b""


def _holds(pid: int, fd: int) -> bool:
    """Whether process ``pid`` holds the pipe (or file) that ``fd`` is here."""
    mine = os.readlink(f"/proc/self/fd/{fd}")
    for entry in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{entry}") == mine:
                return True
        except OSError:
            continue
    return False


def _ended(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _pipe() -> tuple[int, int]:
    read, write = os.pipe()
    os.set_blocking(read, False)
    return read, write


@SQLITE_ONLY
def test_slow_silent_and_malformed_clients_harm_only_themselves(settings: Settings) -> None:
    home = settings.home
    with running(settings) as daemon:
        # a client that sends one byte and no more: the others are served meanwhile
        slow = wire.connect(str(home))
        assert slow is not None
        slow.send(b"\0")
        assert _status(home) is not None
        assert not _closed(slow)  # still waiting for its request's end: not the loop
        # JSON nested too deeply for the parser: that connection dropped, no more
        nested = wire.connect(str(home), timeout=60)
        assert nested is not None
        body = b"[" * 200_000 + b"]" * 200_000
        nested.sendall(struct.pack(">I", len(body)) + body)
        wait_until(lambda: _closed(nested), "the nested request dropped")
        # a bad request carrying a pipe's write end: the daemon does not keep it open
        read, write = _pipe()
        bad = wire.connect(str(home), timeout=60)
        assert bad is not None
        socket.send_fds(bad, [struct.pack(">I", 5) + b"{nope"], [write, write, write])
        wait_until(lambda: _closed(bad), "the malformed request dropped")
        os.close(write)
        wait_until(lambda: _eof(read), "the pipe's end: no copy of its write end left")
        os.close(read)
        # descriptors three at a time, again and again: refused at the fourth, all closed
        read, write = _pipe()
        many = wire.connect(str(home), timeout=60)
        assert many is not None
        socket.send_fds(many, [b"\0"], [write, write, write])
        socket.send_fds(many, [b"\0"], [write, write, write])
        wait_until(lambda: _closed(many), "the request with too many descriptors dropped")
        os.close(write)
        wait_until(lambda: _eof(read), "the pipe's end: none of its copies kept")
        os.close(read)
        # the slow one, dropped at its deadline; the daemon still serves
        wait_until(lambda: _closed(slow), "the slow request dropped at its deadline")
        for sock in (slow, nested, bad, many):
            sock.close()
        assert "no whole request within" in daemon.log()
        assert "more descriptors than asked for" in daemon.log()
        before = daemon.served()
        daemon.run("run", "list", check=0)
        assert daemon.served() == before + 1


def _daemons_interpreter(env: dict[str, str]) -> dict[str, Any]:
    """What the daemon (``python -P -m ...``) and its clients take as their interpreter."""
    probe = "import json, sys\nfrom devflow.daemon import stamp\n" \
            "print(json.dumps(stamp.interpreter(list(sys.path))))"
    done = subprocess.run([sys.executable, "-P", "-c", probe], capture_output=True, text=True,
                          env=env, cwd="/", timeout=120, check=True)
    return json.loads(done.stdout)  # type: ignore[no-any-return]


@pytest.fixture
def following(app: App, settings: Settings, tmp_path: Path) -> Iterator[tuple[Daemon, list[str]]]:
    """A daemon, and the argv of a command that runs until stopped (``events --follow``
    of a run waiting at its gate)."""
    run_id = start(app, make_repo(tmp_path / "repo")).run.id
    with running(settings) as daemon:
        yield daemon, [DEVFLOW, "events", run_id, "--follow"]


def _request(daemon: Daemon, argv: list[str], after: bytes = b"") -> tuple[socket.socket, int]:
    """A command's request sent by hand (stdout and stderr to /dev/null), and ``after``
    in the same write: the connection and the pid of the child forked for it."""
    sock = wire.connect(daemon.env["DEVFLOW_HOME"], timeout=120)
    assert sock is not None
    request = {"version": wire.VERSION, "op": "run", "argv": argv, "env": daemon.env,
               "cwd": "/", "umask": 0o022, "stdio": [STDIO] * 3,
               "interpreter": _daemons_interpreter(daemon.env)}
    body = json.dumps(request).encode("ascii")
    fds = [os.open(os.devnull, os.O_RDWR) for _ in range(3)]
    try:
        socket.send_fds(sock, [struct.pack(">I", len(body)) + body + after], fds)
    finally:
        for fd in fds:
            os.close(fd)
    answer = wire.Channel(sock).read()
    assert answer is not None and "started" in answer, answer
    return sock, int(answer["started"])


def _message(message: dict[str, Any]) -> bytes:
    body = json.dumps(message).encode("ascii")
    return struct.pack(">I", len(body)) + body


@SQLITE_ONLY
def test_odd_signal_messages_are_ignored_and_a_signal_at_once_is_not_lost(
        following: tuple[Daemon, list[str]]) -> None:
    daemon, argv = following
    # a signal sent with the request reaches the command, even the moment it is forked
    sock, pid = _request(daemon, argv, after=_message({"signal": signal.SIGTERM}))
    with sock:
        answer = wire.Channel(sock).read()
    assert answer is not None and os.WIFSIGNALED(answer["exit"]), answer
    assert os.WTERMSIG(answer["exit"]) == signal.SIGTERM
    # a signal number that is not an int, or not one passed on: nothing sent, no harm
    sock, pid = _request(daemon, argv)
    with sock:
        for odd in (float(signal.SIGINT), "15", True, [15], signal.SIGKILL, 10**30):
            wire.send(sock, {"signal": odd})
        assert _status(Path(daemon.env["DEVFLOW_HOME"])) is not None
        assert psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        wire.send(sock, {"signal": signal.SIGINT})
        answer = wire.Channel(sock).read()
    assert answer is not None and "exit" in answer
    assert "unexpected" not in daemon.log()


@SQLITE_ONLY
def test_a_command_killed_by_sigkill_ends_its_client_by_sigkill(
        following: tuple[Daemon, list[str]]) -> None:
    daemon, argv = following
    client = subprocess.Popen(argv, env=daemon.env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        child = wait_until(daemon.children, "the command to be forked")[0]
        child.kill()
        _, err = client.communicate(timeout=120)
        assert client.returncode == -signal.SIGKILL, err
        assert "Traceback" not in err
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate(timeout=60)


@pytest.fixture
def silent_daemon(settings: Settings) -> Iterator[socket.socket]:
    """A socket where the home's daemon would be, that accepts and never answers."""
    dirfd = wire.open_run_dir(str(settings.home), create=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(wire.address(dirfd))
        listener.listen(8)
        yield listener
    finally:
        listener.close()
        os.unlink(wire.SOCKET, dir_fd=dirfd)
        os.close(dirfd)


@SQLITE_ONLY
def test_a_daemon_that_does_not_answer_is_waited_for_only_so_long(
        settings: Settings, silent_daemon: socket.socket) -> None:
    env = env_for(settings)
    # a terminating signal while it waits ends the client by that signal
    client = subprocess.Popen([DEVFLOW, "--version"], env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    conn, _ = silent_daemon.accept()
    with conn:
        channel = wire.Channel(conn)
        assert channel.read(max_fds=3) is not None  # its request: it waits now
        channel.close_fds()  # its stdout and stderr: for it to be read to their end
        client.send_signal(signal.SIGTERM)
        client.communicate(timeout=120)
        assert client.returncode == -signal.SIGTERM
    # unanswered, it runs the command itself, and says why it took long
    client = subprocess.Popen([DEVFLOW, "--version"], env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    conn, _ = silent_daemon.accept()
    with conn:
        channel = wire.Channel(conn)
        assert channel.read(max_fds=3) is not None
        channel.close_fds()
        out, err = client.communicate(timeout=120)
    assert client.returncode == 0, err
    assert "devflow" in out
    assert err == "devflow: the daemon did not answer in time; running the command here\n"


@SQLITE_ONLY
def test_two_starts_at_once_both_succeed(settings: Settings) -> None:
    env = env_for(settings)
    starts = [subprocess.Popen([DEVFLOW, "daemon", "start", "--json"], env=env,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for _ in range(2)]
    said = []
    for process in starts:
        out, err = process.communicate(timeout=180)
        assert process.returncode == 0, out + err
        said.append(json.loads(out))
    assert sorted(s["started"] for s in said) == [False, True]
    assert said[0]["daemon"]["pid"] == said[1]["daemon"]["pid"]
    Daemon(env, int(said[0]["daemon"]["pid"])).stop()


@SQLITE_ONLY
def test_a_long_idle_timeout_is_kept(settings: Settings) -> None:
    daemon = start_daemon(env_for(settings), "--idle", "30d")  # longer than select() may wait
    try:
        status = _status(settings.home)
        assert status is not None and status["idle_timeout"] == 30 * 86400
        daemon.run("run", "list", check=0)
        assert daemon.served() == 1
    finally:
        daemon.stop()


@SQLITE_ONLY
def test_a_moved_home_stops_its_daemon(settings: Settings, tmp_path: Path) -> None:
    daemon = start_daemon(env_for(settings))
    moved = tmp_path / "moved-home"
    try:
        os.rename(settings.home, moved)
        try:
            assert _status(moved) is None  # a wake-up: a connection through the moved socket
            wait_until(lambda: _ended(daemon.pid), "the daemon to end")
            assert "stopping: its run directory" in (moved / "run" / "daemon.log").read_text()
        finally:
            os.rename(moved, settings.home)
    finally:
        daemon.stop()
