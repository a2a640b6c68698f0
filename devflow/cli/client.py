"""The ``devflow`` console script: hands the command to its home's daemon when one runs
(``devflow daemon start``), else runs it here, as ``devflow.cli.main`` always did.

Only the standard library's basics are imported before the choice (no click, no
settings): a home without a daemon costs one failed ``open`` of its run directory.
Handed over, the command is the same command: the daemon's child gets this process's
argv, environment, working directory, umask and its stdin, stdout and stderr themselves;
this process forwards the signals it gets (Ctrl-C, SIGTERM, SIGHUP, ..., Ctrl-Z) and ends as
the child ended: its exit code, or killed by the same signal. Refused (another
interpreter, another home, devflow's code changed), or with ``DEVFLOW_DAEMON=off``, the
command runs here. ``python -m devflow.cli.main`` always runs in process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

TYPE_CHECKING = False  # typing is not imported: this module runs before every command
if TYPE_CHECKING:
    from typing import Any, NoReturn

OFF = ("off", "0", "no", "false")
#: how long a client waits for the daemon to accept and start its command before running
#: it here (the daemon reads a request within 5 s, then forks at once)
ANSWER_TIMEOUT = 10.0


def main() -> None:
    if os.environ.get("DEVFLOW_DAEMON", "").strip().lower() not in OFF and \
            sys.argv[1:2] != ["daemon"]:  # `devflow daemon ...` speaks to it from outside
        _through_daemon()  # returns only when no daemon took the command
    from devflow.cli.main import main as in_process
    in_process()


def _through_daemon() -> None:
    from devflow.daemon import stamp, wire
    try:
        cwd = os.getcwd()
        for fd in (0, 1, 2):
            os.fstat(fd)
    except OSError:
        return  # no working directory, or a standard stream closed: in process
    import time
    deadline = time.monotonic() + ANSWER_TIMEOUT
    sock = _connect(wire, cwd)
    if sock is None:
        return
    umask = os.umask(0o022)
    os.umask(umask)
    request = {"version": wire.VERSION, "op": "run", "argv": sys.argv, "env": dict(os.environ),
               "cwd": cwd, "umask": umask, "stdio": _stdio(),
               "interpreter": stamp.interpreter(sys.path[1:])}
    channel = wire.Channel(sock)
    early: list[int] = []  # Ctrl-Z before the daemon's answer: passed on once it is known

    def waiting(signum: int, frame: object) -> None:
        if signum == signal.SIGTSTP:
            early.append(signum)
            return
        # a signal that ends a process: this one ends now, by it (its connection closed,
        # the daemon drops its request, or SIGTERMs the command it just forked)
        _die_by(signum)

    before = _catch(waiting, wire)
    answer = _first_answer(wire, channel, request, deadline)
    if answer is None or "started" not in answer:
        sock.close()
        for signum, handler in before.items():
            signal.signal(signum, handler)
        for signum in early:  # as if they came now, to the command run here
            os.kill(os.getpid(), signum)
        return
    sock.settimeout(None)  # the command takes as long as it takes
    forward = _forward(sock, wire)
    for signum in early:
        forward(signum, None)
    try:
        answer = channel.read()
        while answer is not None and "exit" not in answer:
            answer = channel.read()
    except (OSError, ValueError):
        answer = None
    if answer is None:
        os.write(2, b"devflow: the daemon ended during the command, whose end is unknown; "
                    b"see its log in $DEVFLOW_HOME/run/daemon.log\n")
        os._exit(1)
    _end_as(int(answer["exit"]))


def _first_answer(wire: Any, channel: Any, request: dict[str, Any],
                  deadline: float) -> dict[str, Any] | None:
    """The daemon's answer to the request: started, or refused; None when it did not
    answer by ``deadline`` (said on stderr) or the connection failed."""
    try:
        wire.send(channel.sock, request, fds=(0, 1, 2))
        return channel.read(deadline=deadline)  # type: ignore[no-any-return]
    except TimeoutError:
        os.write(2, b"devflow: the daemon did not answer in time; running the command here\n")
    except (OSError, ValueError):
        pass
    return None


def _connect(wire: Any, cwd: str) -> Any:
    try:
        home = wire.home_for(os.environ, cwd)
    except ValueError:  # a NUL in DEVFLOW_HOME: the command says so itself
        return None
    return wire.connect(home, timeout=ANSWER_TIMEOUT)


def _stdio() -> list[dict[str, Any]]:
    """How this interpreter made its standard streams: the child makes them the same."""
    return [{"encoding": s.encoding, "errors": s.errors, "line_buffering": s.line_buffering,
             "write_through": getattr(s, "write_through", False)}
            for s in (sys.stdin, sys.stdout, sys.stderr)]


def _catch(handler: Any, wire: Any) -> dict[int, Any]:
    """``handler`` for the signals passed on to a command (not those this process ignores,
    as a command started with them ignored would ignore them too); the handlers before."""
    before = {}
    for signum in (*wire.FORWARDED, signal.SIGTSTP):
        current = signal.getsignal(signum)
        if current != signal.SIG_IGN:
            before[signum] = current
            signal.signal(signum, handler)
    return before


def _forward(sock: Any, wire: Any) -> Any:
    """Pass the signals this process gets on to the command. Suspended (Ctrl-Z), it stops
    the command, then itself; continued, it continues the command."""
    def send(signum: int) -> None:
        with contextlib.suppress(OSError):
            wire.send(sock, {"signal": signum})

    def forward(signum: int, frame: object) -> None:
        if signum != signal.SIGTSTP:
            send(signum)
            return
        send(signal.SIGSTOP)
        signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTSTP)  # stopped here until continued
        signal.signal(signal.SIGTSTP, forward)
        send(signal.SIGCONT)

    _catch(forward, wire)
    return forward


def _end_as(status: int) -> NoReturn:
    """Exit as the child did: its code, or the signal that ended it (which a shell shows
    as 128 + its number)."""
    if os.WIFSIGNALED(status):
        _die_by(os.WTERMSIG(status))
    os._exit(os.waitstatus_to_exitcode(status))


def _die_by(signum: int) -> NoReturn:
    """End this process by ``signum`` (its default action), or exit 128 + its number for
    a signal whose default does not end a process."""
    if signum != signal.SIGKILL:  # which has no handler to reset, and is never blocked
        with contextlib.suppress(OSError, ValueError):
            signal.signal(signum, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [signum])
    with contextlib.suppress(OSError):
        os.kill(os.getpid(), signum)
    os._exit(128 + signum)
