"""Many ``devflow`` commands, each in a process of its own, at a fraction of the start-up.

A server process imports devflow's CLI once, then forks a child per command: the
child sets the command's environment, points its stdout and stderr at files and runs
``devflow.cli.main.main`` with the arguments; its exit status is the command's. That is
the real entry point in a real process with real exit codes and output (no click test
runner), without paying the interpreter and the imports for each of the ~100 commands
a walk over every command runs. The server has no threads, so forking it is safe.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

_SERVER = r"""
import io, json, os, sys
import devflow.app
import devflow.cli.main as entry
from devflow.cli import admin, decisions, defs, demo, runs  # noqa: F401 - imported once here
print("ready", flush=True)
for line in iter(sys.stdin.readline, ""):
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        source = os.open(request.get("in") or os.devnull, os.O_RDONLY)
        os.dup2(source, 0)
        os.close(source)
        sys.stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)),
                                     encoding=sys.stdin.encoding, errors=sys.stdin.errors)
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
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"code": os.waitstatus_to_exitcode(status)}), flush=True)
"""


@dataclass(frozen=True)
class Result:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


class ForkedCli:
    """``run(*args)`` runs one devflow command in a forked child of the server."""

    def __init__(self, env: dict[str, str], scratch: Path) -> None:
        self.env = env
        self.scratch = scratch
        self.count = 0
        self._server = subprocess.Popen([sys.executable, "-c", _SERVER], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, bufsize=0, env=env,
                                        cwd=str(scratch))
        self._buffer = b""
        ready = self._line(None)
        assert ready == "ready", f"the fork server did not start: {ready!r}"

    def _line(self, timeout: float | None) -> str | None:
        """The server's next line; None when none came within ``timeout``."""
        assert self._server.stdout is not None
        fd = self._server.stdout.fileno()
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"the fork server ended: {self._buffer!r}")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode("utf-8").strip()

    def run(self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            input_text: str | None = None, timeout: float | None = None,
            replace_env: bool = False) -> Result:
        """The command's exit code and output; ``subprocess.TimeoutExpired`` (the command
        killed) when it runs longer than ``timeout``. ``replace_env``: ``env`` is the
        command's whole environment, not additions to the server's."""
        assert self._server.stdin is not None and self._server.stdout is not None
        self.count += 1
        out = self.scratch / f"cmd-{self.count}.out"
        err = self.scratch / f"cmd-{self.count}.err"
        stdin = None
        if input_text is not None:
            stdin = self.scratch / f"cmd-{self.count}.in"
            stdin.write_text(input_text, encoding="utf-8")
        request = {"args": list(args),
                   "env": dict(env or {}) if replace_env else {**self.env, **(env or {})},
                   "cwd": str(cwd or self.scratch), "out": str(out), "err": str(err),
                   "in": str(stdin) if stdin else None}
        self._server.stdin.write((json.dumps(request) + "\n").encode("utf-8"))
        self._server.stdin.flush()
        child = int(json.loads(self._line(None) or "{}")["pid"])
        line = self._line(timeout)
        if line is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
            self._line(None)  # its exit, once killed
            raise subprocess.TimeoutExpired(["devflow", *args], timeout or 0,
                                            out.read_bytes(), err.read_bytes())
        answer = json.loads(line)
        return Result(tuple(args), int(answer["code"]),
                      out.read_text(encoding="utf-8", errors="replace"),
                      err.read_text(encoding="utf-8", errors="replace"))

    def close(self) -> None:
        if self._server.stdin is not None:
            self._server.stdin.close()
        self._server.wait(30)
        if self._server.stdout is not None:
            self._server.stdout.close()

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
