"""Many ``devflow`` commands, each in a process of its own, at a fraction of the start-up.

A server process imports devflow's CLI once, then forks a child per command: the
child sets the command's environment, points its stdout and stderr at files and runs
``devflow.cli.main.main`` with the arguments; its exit status is the command's. That is
the real entry point in a real process with real exit codes and output (no click test
runner), without paying the interpreter and the imports for each of the ~100 commands
a walk over every command runs. The server has no threads, so forking it is safe.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

_SERVER = r"""
import json, os, sys
import devflow.app
import devflow.cli.main as entry
from devflow.cli import admin, decisions, defs, demo, runs  # noqa: F401 - imported once here
print("ready", flush=True)
for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        for fd, name in ((1, request["out"]), (2, request["err"])):
            target = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(target, fd)
            os.close(target)
        sys.argv = ["devflow", *request["args"]]
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
                                        stdout=subprocess.PIPE, text=True, env=env,
                                        cwd=str(scratch))
        assert self._server.stdout is not None
        ready = self._server.stdout.readline().strip()
        assert ready == "ready", f"the fork server did not start: {ready!r}"

    def run(self, *args: str, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> Result:
        assert self._server.stdin is not None and self._server.stdout is not None
        self.count += 1
        out = self.scratch / f"cmd-{self.count}.out"
        err = self.scratch / f"cmd-{self.count}.err"
        request = {"args": list(args), "env": {**self.env, **(env or {})},
                   "cwd": str(cwd or self.scratch), "out": str(out), "err": str(err)}
        self._server.stdin.write(json.dumps(request) + "\n")
        self._server.stdin.flush()
        answer = json.loads(self._server.stdout.readline())
        return Result(tuple(args), int(answer["code"]), out.read_text(encoding="utf-8"),
                      err.read_text(encoding="utf-8"))

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
