"""Many ``devflow`` commands, each in a process of its own, at a fraction of the start-up.

A server process imports devflow (the CLI, the app, the engine, the backends) once
and checks the built-in definitions (content only, see ``_SERVER``), then forks a child
per command: the child sets the command's environment, directory,
standard input and output files and runs ``devflow.cli.main.main`` with the arguments,
then leaves the interpreter as ``devflow`` does (``sys.exit``, atexit handlers, threads
joined); its exit status is the command's. That is the real entry point in a real
process with real exit codes, signals and output (no click test runner), without paying
the interpreter and the imports for each command: 0.3-0.45 s of CPU each, a third of the
suite's CPU when every crash test's command was a new interpreter.

The children are the server's, not the test's: the server reaps them as SIGCHLD tells
it (``waitpid`` with ``WUNTRACED``) and reports each stop and each end on its output; a
thread of the test's process reads that and wakes whoever waits for that child. A test
signals a child directly (``os.kill``), as it would a process it started itself. The
server has no threads, so forking it is safe.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

# What a command of the suite loads: imported once in the server, never in a child.
PRELOAD = ("devflow.app", "devflow.cli.main", "devflow.cli.admin", "devflow.cli.decisions",
           "devflow.cli.defs", "devflow.cli.demo", "devflow.cli.runs", "devflow.cli.triggers",
           "devflow.cli.output", "devflow.cli.progress", "devflow.engine.start",
           "devflow.engine.drive", "devflow.engine.worker", "devflow.engine.schedule",
           "devflow.engine.prune", "devflow.sweep", "devflow.backends.scripted",
           "devflow.backends.command", "devflow.backends.sandbox", "devflow.report",
           "devflow.schemas", "devflow.worktree", "devflow.cli.serve",
           "devflow.backends.aider", "devflow.backends.claude_code", "devflow.backends.codex",
           "sqlalchemy.dialects.sqlite", "sqlalchemy.dialects.postgresql.psycopg", "psycopg",
           "anyio", "filelock", "jsonschema", "jsonschema_specifications", "referencing",
           "yaml", "rfc3339_validator", "rfc3986_validator", "uri_template", "idna")

_SERVER = r"""
import importlib, io, json, os, select, signal, sys

for name in sys.argv[1:]:
    importlib.import_module(name)
import devflow.cli.main as entry
from devflow import backends
from devflow.catalog import Catalog, Dirs

# The built-in definitions parsed and checked once: answers about their content alone,
# which every Memo of a process shares (devflow/memo.py), as a command in a home whose
# memo holds them finds them. No home, database or machine is looked at here.
built_in = Catalog(Dirs.with_builtins(), check_persona_options=backends.check_options)
built_in.templates()
built_in.personas()

wake_r, wake_w = os.pipe()
os.set_blocking(wake_r, False)
os.set_blocking(wake_w, False)
signal.set_wakeup_fd(wake_w)
signal.signal(signal.SIGCHLD, lambda signum, frame: None)


def say(message):
    # unbuffered, so that no fork copies a half-written line
    os.write(1, (json.dumps(message) + "\n").encode("utf-8"))


def reap():
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG | os.WUNTRACED)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if os.WIFSTOPPED(status):
            say({"pid": pid, "stopped": True})
        else:
            say({"pid": pid, "code": os.waitstatus_to_exitcode(status)})


def command(request):
    # the child: the server's signal plumbing is not the command's
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.close(wake_r)
    os.close(wake_w)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    source = os.open(request.get("in") or os.devnull, os.O_RDONLY)
    os.dup2(source, 0)
    os.close(source)
    sys.stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)),
                                 encoding="utf-8")
    for fd, name in ((1, request["out"]), (2, request["err"])):
        target = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(target, fd)
        os.close(target)
    # as `python -m devflow.cli.main` has it (output.program reads it)
    sys.argv = [entry.__file__, *request["args"]]
    code = 0
    try:
        entry.main(request["args"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        import traceback
        traceback.print_exc()
        code = 99
    sys.exit(code)  # out of the server's loop: the interpreter ends as devflow's would


say({"ready": True})
pending = b""
while True:
    readable = select.select([0, wake_r], [], [])[0]
    if wake_r in readable:
        while True:
            try:
                if not os.read(wake_r, 512):
                    break
            except BlockingIOError:
                break
        reap()
    if 0 in readable:
        chunk = os.read(0, 65536)
        if not chunk:
            break
        pending += chunk
        while b"\n" in pending:
            line, _, pending = pending.partition(b"\n")
            request = json.loads(line)
            pid = os.fork()
            if pid == 0:
                command(request)
            # said before any reap can report this child's end: the test learns of a
            # child before it learns how it ended
            say({"id": request["id"], "pid": pid})
"""


@dataclass(frozen=True)
class Result:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


class Forked:
    """One child of the fork server, with the part of ``subprocess.Popen`` the tests use:
    ``pid``, ``returncode``, ``poll()``, ``wait(timeout)``; and ``wait_stopped()``."""

    def __init__(self, server: ForkServer, args: tuple[str, ...], pid: int) -> None:
        self._server = server
        self.args = args
        self.pid = pid
        self.returncode: int | None = None
        self.stopped = False

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        with self._server.changed:
            if not self._server.changed.wait_for(lambda: self.returncode is not None, timeout):
                raise subprocess.TimeoutExpired(["devflow", *self.args], timeout or 0)
        assert self.returncode is not None
        return self.returncode

    def wait_stopped(self, timeout: float | None = None) -> bool:
        """True once the child stopped (SIGSTOP), False if it ended first."""
        with self._server.changed:
            if not self._server.changed.wait_for(
                    lambda: self.stopped or self.returncode is not None, timeout):
                raise subprocess.TimeoutExpired(["devflow", *self.args], timeout or 0)
        return self.returncode is None


class ForkServer:
    """The server process and the thread that reads what it says."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env = env
        self.changed = threading.Condition()
        self._ids = itertools.count(1)
        self._asked: dict[int, tuple[str, ...]] = {}  # request id -> its arguments
        self._replies: dict[int, Forked] = {}  # request id -> the child it made
        self._children: dict[int, Forked] = {}  # pid -> the child, while it runs
        self._ended: str | None = None
        self._write = threading.Lock()
        self._process = subprocess.Popen([sys.executable, "-c", _SERVER, *PRELOAD],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         bufsize=0, env=env, cwd=str(cwd))
        assert self._process.stdout is not None
        ready = self._process.stdout.readline()
        assert json.loads(ready or b"{}").get("ready"), f"the fork server did not start: {ready!r}"
        self._reader = threading.Thread(target=self._read, name="fork-server", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            message: dict[str, Any] = json.loads(line)
            with self.changed:
                if "id" in message:  # registered here, before its end can be read
                    request_id, pid = message["id"], message["pid"]
                    self._children[pid] = self._replies[request_id] = Forked(
                        self, self._asked.pop(request_id), pid)
                else:
                    child = self._children.get(message["pid"])
                    if child is not None and message.get("stopped"):
                        child.stopped = True
                    elif child is not None:
                        child.returncode = int(message["code"])
                        del self._children[message["pid"]]
                self.changed.notify_all()
        with self.changed:
            self._ended = "the fork server ended"
            self.changed.notify_all()

    @property
    def alive(self) -> bool:
        return self._ended is None and self._process.poll() is None

    def spawn(self, args: tuple[str, ...], env: dict[str, str], cwd: Path, out: Path, err: Path,
              stdin: Path | None = None) -> Forked:
        """Start ``devflow ARGS`` with exactly ``env`` as its environment."""
        assert self._process.stdin is not None
        request_id = next(self._ids)
        request = {"id": request_id, "args": list(args), "env": env, "cwd": str(cwd),
                   "out": str(out), "err": str(err), "in": str(stdin) if stdin else None}
        with self.changed:
            self._asked[request_id] = args
        with self._write:
            self._process.stdin.write((json.dumps(request) + "\n").encode("utf-8"))
        with self.changed:
            self.changed.wait_for(lambda: request_id in self._replies or self._ended is not None)
            if self._ended is not None:
                raise AssertionError(self._ended)
            return self._replies.pop(request_id)

    def close(self) -> None:
        if self._process.stdin is not None:
            with contextlib.suppress(OSError):
                self._process.stdin.close()
        try:
            self._process.wait(30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(30)
        self._reader.join(30)
        if self._process.stdout is not None:
            self._process.stdout.close()


class _Shared:
    server: ForkServer | None = None
    lock = threading.Lock()


def shared() -> ForkServer:
    """This test process's fork server, started on first use (commands pass their whole
    environment, so one server serves every test)."""
    with _Shared.lock:
        if _Shared.server is None or not _Shared.server.alive:
            env = {k: v for k, v in os.environ.items() if not k.startswith("DEVFLOW_")}
            _Shared.server = ForkServer(env, Path(os.environ.get("TMPDIR", "/tmp")))
            atexit.register(_Shared.server.close)
        return _Shared.server


def run_devflow(args: Sequence[str], env: Mapping[str, str], *, cwd: Path | None = None,
                input_text: str | None = None,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``devflow ARGS`` with exactly ``env`` as its environment, to its end, like
    ``subprocess.run(..., capture_output=True, text=True)``: forked from the shared
    server, or a new interpreter under ``DEVFLOW_TEST_CLI=spawn``."""
    argv = [sys.executable, "-m", "devflow.cli.main", *args]
    if os.environ.get("DEVFLOW_TEST_CLI") == "spawn":
        return subprocess.run(argv, capture_output=True, text=True, input=input_text,
                              env=dict(env), cwd=cwd, timeout=timeout, check=False)
    scratch = Path(tempfile.mkdtemp(prefix="devflow-cmd-"))
    try:
        stdin = None
        if input_text is not None:
            stdin = scratch / "in"
            stdin.write_text(input_text, encoding="utf-8")
        out, err = scratch / "out", scratch / "err"
        child = shared().spawn(tuple(args), dict(env), cwd or Path.cwd(), out, err, stdin)
        code, stdout, stderr = _outcome(child, argv, timeout, out, err)
        return subprocess.CompletedProcess(argv, code, stdout, stderr)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _outcome(child: Forked, argv: list[str], timeout: float | None, out: Path,
             err: Path) -> tuple[int, str, str]:
    """The child's exit code and output once it ended; past ``timeout`` it is killed and
    ``subprocess.TimeoutExpired`` says what it had written."""
    try:
        code = child.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGKILL)
        child.wait()
        raise subprocess.TimeoutExpired(argv, timeout or 0, out.read_bytes(),
                                        err.read_bytes()) from None
    return (code, out.read_text(encoding="utf-8", errors="replace"),
            err.read_text(encoding="utf-8", errors="replace"))


class ForkedCli:
    """``run(*args)`` runs one devflow command in a forked child and waits for its end."""

    def __init__(self, env: dict[str, str], scratch: Path) -> None:
        self.env = env
        self.scratch = scratch
        self.count = 0
        self._server = ForkServer(env, scratch)

    def run(self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            input_text: str | None = None, timeout: float | None = None,
            replace_env: bool = False) -> Result:
        """The command's exit code and output; ``subprocess.TimeoutExpired`` (the command
        killed) when it runs longer than ``timeout``. ``replace_env``: ``env`` is the
        command's whole environment, not additions to the server's."""
        self.count += 1
        out = self.scratch / f"cmd-{self.count}.out"
        err = self.scratch / f"cmd-{self.count}.err"
        stdin = None
        if input_text is not None:
            stdin = self.scratch / f"cmd-{self.count}.in"
            stdin.write_text(input_text, encoding="utf-8")
        child = self._server.spawn(
            tuple(args), dict(env or {}) if replace_env else {**self.env, **(env or {})},
            cwd or self.scratch, out, err, stdin)
        return Result(tuple(args), *_outcome(child, ["devflow", *args], timeout, out, err))

    def close(self) -> None:
        self._server.close()

    def __enter__(self) -> ForkedCli:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


def cli_env(home: Path, database_url: str, workspace: Path,
            extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEVFLOW_")}
    env.update({"DEVFLOW_HOME": str(home), "DEVFLOW_DATABASE_URL": database_url,
                "DEVFLOW_WORKSPACE": str(workspace), "DEVFLOW_ACTOR": "tester",
                "DEVFLOW_LOG_FORMAT": "json"})
    env.update(extra or {})
    return env
