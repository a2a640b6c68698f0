"""devflow/daemon/peer.py: a client confined otherwise than the daemon is told apart."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from devflow.daemon import peer

#: says "ready" once running (after setpriv or unshare did their part), then waits
SLEEP = [sys.executable, "-c", "import sys; print('ready', flush=True); sys.stdin.read()"]


@contextmanager
def _process(argv: list[str]) -> Iterator[int]:
    """A process that waits on its stdin (no sleep to outlast): its pid once it runs
    confined as ``argv`` says, then it ends."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        yield proc.pid
    finally:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        proc.wait(30)
        proc.stdout.close()


def test_a_process_confined_as_this_one_is_served() -> None:
    mine = peer.confinement(os.getpid())
    assert dict(mine)["NoNewPrivs"] in ("0", "1")
    with _process(SLEEP) as pid:
        assert peer.unlike(mine, pid) is None


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
def test_no_new_privs_as_landlock_and_seccomp_sandboxes_set_it_is_refused() -> None:
    mine = peer.confinement(os.getpid())
    if dict(mine)["NoNewPrivs"] == "1":
        pytest.skip("this test runs under no_new_privs itself")
    with _process(["setpriv", "--no-new-privs", *SLEEP]) as pid:
        why = peer.unlike(mine, pid)
    assert why is not None and "NoNewPrivs" in why


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)")
def test_another_namespace_is_refused() -> None:
    mine = peer.confinement(os.getpid())
    for flags in (["--net"], ["--user", "--map-root-user"], ["--user"]):
        probe = subprocess.run(["unshare", *flags, "true"], capture_output=True, check=False)
        if probe.returncode == 0:
            break
    else:
        pytest.skip("no namespace can be unshared here")
    with _process(["unshare", *flags, *SLEEP]) as pid:
        why = peer.unlike(mine, pid)
    assert why is not None and "namespace" in why


def test_a_process_that_is_gone_is_refused() -> None:
    mine = peer.confinement(os.getpid())
    with _process(SLEEP) as pid:
        pass
    why = peer.unlike(mine, pid)
    assert why is not None and "cannot be looked at" in why
