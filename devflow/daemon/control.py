"""``devflow daemon start|status|stop``: the daemon of a home, asked through its socket.

``start`` runs ``python -P -m devflow.cli.forkserver`` detached (its own session, its
parent gone at once, output to ``run/daemon.log``) and waits for its word on a pipe:
ready, or another already serving this home (the lock ``run/daemon.lock`` decides), or
why it failed. ``stop`` asks it to stop and waits until its process ended when no command
is under way (those are let finish).
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from typing import Any, Final

from devflow.daemon import wire
from devflow.errors import Code, DevflowError

#: the longest a start may take: the daemon imports devflow (about a second here)
_START_TIMEOUT: Final = 120.0
_STOP_TIMEOUT: Final = 30.0


def ask(home: str, op: str) -> dict[str, Any] | None:
    """The daemon's answer to ``status`` or ``stop``; None when no daemon answers."""
    sock = wire.connect(home)
    if sock is None:
        return None
    with sock:
        sock.settimeout(_STOP_TIMEOUT)
        try:
            wire.send(sock, {"version": wire.VERSION, "op": op})
            answer = wire.Channel(sock).read()
        except (OSError, ValueError):
            return None
    return None if answer is None else dict(answer["status"])


def start(home: str, idle: float) -> tuple[bool, dict[str, Any]]:
    """(started now, its status): False when a daemon already served this home."""
    running = ask(home, "status")
    if running is not None:
        return False, running
    try:
        dirfd = wire.open_run_dir(home, create=True)
    except (OSError, wire.Unsafe) as exc:
        raise DevflowError(Code.DAEMON_FAILED, f"cannot make the daemon's directory: {exc}",
                           hint="the run directory of devflow's home must be the account's "
                                "own, mode 0700") from exc
    read, write = os.pipe()
    try:
        log = os.open(wire.LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600,
                      dir_fd=dirfd)
        try:
            subprocess.run([sys.executable, "-P", "-m", "devflow.cli.forkserver", home,
                            repr(float(idle)), str(write)], pass_fds=(write,),
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                           cwd="/", check=True, timeout=_START_TIMEOUT)
        finally:
            os.close(log)
            os.close(write)
        said = _read_all(read)
    except (OSError, subprocess.SubprocessError) as exc:
        raise DevflowError(Code.DAEMON_FAILED, f"the daemon did not start: {exc}",
                           hint=f"see {wire.run_dir(home)}/{wire.LOG}") from exc
    finally:
        os.close(read)
        os.close(dirfd)
    word, _, _pid = said.partition(" ")
    if word not in ("ready", "running"):
        raise DevflowError(Code.DAEMON_FAILED, f"the daemon did not start: {said or 'no word'}",
                           hint=f"see {wire.run_dir(home)}/{wire.LOG}")
    status = ask(home, "status")
    # "running": another start took the lock first and may not listen yet (it imports
    # devflow before it binds its socket): wait for it
    deadline = time.monotonic() + _START_TIMEOUT
    while status is None and word == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
        status = ask(home, "status")
    if status is None:
        raise DevflowError(Code.DAEMON_FAILED, "the daemon started but does not answer",
                           hint=f"see {wire.run_dir(home)}/{wire.LOG}")
    return word == "ready", status


def _read_all(fd: int) -> str:
    """What the daemon writes on its pipe until it closes it (its word, one line)."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + _START_TIMEOUT
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise subprocess.TimeoutExpired("devflow daemon", _START_TIMEOUT)
        chunk = os.read(fd, 4096)
        if not chunk:
            return b"".join(chunks).decode("utf-8", "replace").strip()
        chunks.append(chunk)


def stop(home: str) -> dict[str, Any] | None:
    """Stop the home's daemon; its last status, or None when none was running. Waits for
    its process to end unless commands are under way (it ends after them)."""
    status = ask(home, "stop")
    if status is None or status.get("running"):
        return status
    try:
        pidfd = os.pidfd_open(int(status["pid"]))
    except ProcessLookupError:
        return status
    try:
        select.select([pidfd], [], [], _STOP_TIMEOUT)
    finally:
        os.close(pidfd)
    return status
