"""A forked child taking on its client's process: what ``devflow`` would have had if the
client had run the command itself.

The client's stdin, stdout and stderr (the descriptors themselves: a terminal stays a
terminal, a pipe a pipe), its environment (and through it the time zone and the
locale), its working directory, umask and argv; Python's standard streams made again as
the client's interpreter made them (encoding, errors, line buffering); the signal
dispositions and the empty signal mask a fresh interpreter has (whatever the client's
were: a signal its shell made it ignore is not ignored here). The server's own
descriptors are closed before this runs (``server``).
"""

from __future__ import annotations

import contextlib
import io
import locale
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any, TextIO

from devflow.daemon import wire

#: a fresh interpreter's dispositions: the default for what the server handles or a
#: command is sent, Python's own for SIGINT, SIGPIPE and SIGXFSZ (ignored, so that a
#: write fails with an error instead of killing the process)
_FRESH: tuple[tuple[int, Callable[[int, FrameType | None], Any] | int], ...] = (
    *((signum, signal.SIG_DFL) for signum in (
        *wire.PASSED_ON, signal.SIGCHLD, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU)
      if signum not in (signal.SIGKILL, signal.SIGSTOP, signal.SIGINT)),
    (signal.SIGINT, signal.default_int_handler), (signal.SIGPIPE, signal.SIG_IGN),
    (signal.SIGXFSZ, signal.SIG_IGN),
)


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
    # the server forked with the signals a command is sent blocked: they come now, to
    # the handlers just set (an interpreter starts with no signal blocked)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _stream(fd: int, mode: str, how: dict[str, Any]) -> TextIO:
    raw = io.FileIO(fd, mode, closefd=False)
    buffered = io.BufferedReader(raw) if mode == "r" else io.BufferedWriter(raw)
    return io.TextIOWrapper(buffered, encoding=how["encoding"], errors=how["errors"],
                            newline="\n", line_buffering=bool(how["line_buffering"]),
                            write_through=bool(how["write_through"]))

