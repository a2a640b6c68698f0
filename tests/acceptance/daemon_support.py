"""A real ``devflow daemon`` on a test's home, and commands run through the real console
script (``.venv/bin/devflow``: the thin client), each a process of its own."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from devflow.settings import Settings
from tests.integration.helpers import cli_env

DEVFLOW = str(Path(sys.executable).parent / "devflow")


#: a command's environment for this test's settings, as every CLI test builds it
env_for = cli_env


@dataclass
class Daemon:
    env: dict[str, str]
    pid: int

    def run(self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            input_text: str | None = None, check: int | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``devflow ARGS`` through the console script (the daemon takes it when it can)."""
        done = subprocess.run([DEVFLOW, *args], capture_output=True, text=True,
                              input=input_text, env={**self.env, **(env or {})}, cwd=cwd,
                              timeout=timeout, check=False,
                              stdin=None if input_text is not None else subprocess.DEVNULL)
        if check is not None:
            assert done.returncode == check, (
                f"devflow {' '.join(args)} exited {done.returncode}, wanted {check}\n"
                f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}")
        return done

    def status(self) -> dict[str, Any] | None:
        done = self.run("daemon", "status", "--json", check=0)
        return json.loads(done.stdout)["daemon"]  # type: ignore[no-any-return]

    def served(self) -> int:
        status = self.status()
        assert status is not None, "the daemon is not running"
        return int(status["served"])

    def children(self) -> list[psutil.Process]:
        return psutil.Process(self.pid).children()

    def log(self) -> str:
        return (Path(self.env["DEVFLOW_HOME"]) / "run" / "daemon.log").read_text()

    def stop(self) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.run("daemon", "stop", timeout=60)
        with contextlib.suppress(psutil.NoSuchProcess):
            process = psutil.Process(self.pid)
            try:
                process.wait(30)
            except psutil.TimeoutExpired:
                process.kill()


def start_daemon(env: dict[str, str], *args: str) -> Daemon:
    done = subprocess.run([DEVFLOW, "daemon", "start", "--json", *args], capture_output=True,
                          text=True, env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    body = json.loads(done.stdout)
    assert body["started"] is True, body
    return Daemon(env, int(body["daemon"]["pid"]))


@contextlib.contextmanager
def running(settings: Settings, *args: str,
            extra: dict[str, str] | None = None) -> Iterator[Daemon]:
    daemon = start_daemon(env_for(settings, extra), *args)
    try:
        yield daemon
    finally:
        daemon.stop()
