"""The daemon's process: ``python -P -m devflow.cli.forkserver HOME IDLE READY_FD``.

Started by ``devflow daemon start`` (``devflow.daemon.control``), never by anything else.
It leaves its starter at once (a fork, a session of its own), takes the home's lock,
stamps devflow's code, imports what commands use, listens, says ``ready PID`` on the
starter's pipe, and serves (``devflow.daemon.server``). A child it forks comes back here
with its request and runs ``devflow.cli.main.main`` as the console script would; its
``SystemExit`` ends the interpreter as a command's does. Importing is all the daemon does
before forking: no settings read, no database opened, no git run, no thread started
(each of those is the command's, in its child).
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import importlib
import os
import socket
import sys
import threading

from devflow.daemon import child, server, stamp, wire

#: the CLI's modules, then the libraries commands load where first used (a command
#: imports what is missing itself); ``devflow.app.preload`` imports the rest
PRELOAD = (
    "devflow.cli.main", "devflow.cli.output", "devflow.cli.progress", "devflow.cli.runs",
    "devflow.cli.decisions", "devflow.cli.defs", "devflow.cli.triggers", "devflow.cli.admin",
    "devflow.cli.checks", "devflow.cli.demo", "devflow.cli.daemon", "devflow.app",
    "jsonschema", "referencing", "yaml", "structlog", "rich.console", "rich.live",
    "rich.table", "filelock", "pathspec",
)


def main(argv: list[str]) -> None:
    home, idle, ready = argv[0], float(argv[1]), int(argv[2])
    if os.fork():  # the starter waits for this process only: the daemon is its child
        os._exit(0)
    os.setsid()
    try:
        served = _start(home, idle, ready)
    except Exception as exc:
        _say(ready, f"failed: {type(exc).__name__}: {exc}")
        raise
    if served is None:
        return
    request = served.serve()
    if request is None:
        return
    child.become(request.message, request.fds)
    from devflow.cli import main as entry
    entry.main(sys.argv[1:])


def _start(home: str, idle: float, ready: int) -> server.Server | None:
    dirfd = wire.open_run_dir(home)
    lockfd = os.open(wire.LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600, dir_fd=dirfd)
    try:
        fcntl.flock(lockfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        _say(ready, "running")
        return None
    code = stamp.code()  # before the imports: a file changed meanwhile is seen as changed
    preload()
    if threading.active_count() != 1:
        raise RuntimeError("importing devflow started a thread: the daemon cannot fork")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(wire.SOCKET, dir_fd=dirfd)  # a dead daemon's: the lock is ours
    umask = os.umask(0o177)
    try:
        listener.bind(wire.address(dirfd))
    finally:
        os.umask(umask)
    listener.listen(64)
    served = server.Server(home, idle, dirfd, lockfd, listener, code,
                           interpreter=stamp.interpreter(list(sys.path)))
    gc.freeze()  # what the imports made stays shared with the children, uncollected
    server.log(f"serving {home} (idle timeout {idle:g} s)")
    _say(ready, f"ready {os.getpid()}")
    return served


def preload() -> None:
    """Import what commands use; nothing else (no settings, no database, no process)."""
    for name in PRELOAD:
        importlib.import_module(name)
    from devflow import app
    app.preload()


def _say(fd: int, word: str) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, word.encode("utf-8") + b"\n")
        os.close(fd)


if __name__ == "__main__":
    main(sys.argv[1:])
