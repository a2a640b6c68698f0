"""A forked child taking on its client's process: what ``devflow`` would have had if the
client had run the command itself.

The client's stdin, stdout and stderr (the descriptors themselves: a terminal stays a
terminal, a pipe a pipe), its environment (and through it the time zone and the
locale), its working directory, umask and argv; Python's standard streams made again as
the client's interpreter made them (encoding, errors, line buffering); the signal
dispositions a fresh interpreter has. The server's own descriptors are closed before
this runs (``server``).
"""

from __future__ import annotations

import contextlib
import io
import locale
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

#: a fresh interpreter's dispositions for what the server handles itself
_FRESH = ((signal.SIGCHLD, signal.SIG_DFL), (signal.SIGTERM, signal.SIG_DFL),
          (signal.SIGHUP, signal.SIG_DFL), (signal.SIGINT, signal.default_int_handler),
          (signal.SIGPIPE, signal.SIG_IGN))


def become(request: dict[str, Any], fds: Sequence[int]) -> None:
    """Apply the client's process attributes to this (forked) process."""
    signal.set_wakeup_fd(-1)
    for signum, handler in _FRESH:
        signal.signal(signum, handler)
    os.umask(int(request["umask"]))
    os.environ.clear()
    os.environ.update(request["env"])
    time.tzset()
    with contextlib.suppress(locale.Error):
        locale.setlocale(locale.LC_CTYPE, "")  # what the interpreter does at its start
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    streams = [_stream(fd, mode, request["stdio"][fd])
               for fd, mode in ((0, "r"), (1, "w"), (2, "w"))]
    sys.stdin, sys.stdout, sys.stderr = streams
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = streams  # type: ignore[misc,assignment]
    sys.argv = list(request["argv"])
    os.chdir(request["cwd"])


def _stream(fd: int, mode: str, how: dict[str, Any]) -> TextIO:
    raw = io.FileIO(fd, mode, closefd=False)
    buffered = io.BufferedReader(raw) if mode == "r" else io.BufferedWriter(raw)
    return io.TextIOWrapper(buffered, encoding=how["encoding"], errors=how["errors"],
                            newline="\n", line_buffering=bool(how["line_buffering"]),
                            write_through=bool(how["write_through"]))

