"""``DEVFLOW_PAUSE_AT``: a real process stops itself at a named point, once, and the test
that started it learns of it from ``waitpid`` (no sleep, no polling)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

_CHILD = ("from devflow import faults\n"
          "faults.point('other'); faults.point('here'); print('after', flush=True)\n"
          "faults.point('here'); print('again', flush=True)\n")


def test_a_process_pauses_once_at_its_point_and_goes_on_when_continued(tmp_path: Path) -> None:
    marker = tmp_path / "paused"
    env = {**os.environ, "DEVFLOW_PAUSE_AT": "here", "DEVFLOW_PAUSE_MARKER": str(marker)}
    child = subprocess.Popen([sys.executable, "-c", _CHILD], env=env, stdout=subprocess.PIPE,
                             text=True)
    try:
        _, status = os.waitpid(child.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status) and os.WSTOPSIG(status) == signal.SIGSTOP
        assert marker.read_text(encoding="utf-8").split() == ["here", str(child.pid)]
        os.kill(child.pid, signal.SIGCONT)
        out, _ = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 0
    assert out.split() == ["after", "again"]  # the second time through, no pause


def test_without_the_variable_a_point_does_nothing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEVFLOW_")}
    done = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert (done.returncode, done.stdout.split()) == (0, ["after", "again"])
