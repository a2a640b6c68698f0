"""Where a home's daemon listens, and how messages and file descriptors cross its socket.

The socket is ``$DEVFLOW_HOME/run/daemon.sock``: inside devflow's home (which an agent's
sandbox hides), in a directory of the account's own that no one else may enter (0700),
itself 0600; never an abstract socket (those are reachable from any process sharing the
network namespace) and never under /tmp. Both ends reach it through the directory's
descriptor (``/proc/self/fd/N/daemon.sock``): the directory is checked once, on the
descriptor that is then used, and a long home still fits a socket address.

A message is a 4-byte length and JSON (lone surrogates, as undecodable bytes of argv and
the environment come to Python, survive its escapes); a request's first message carries
the client's stdin, stdout and stderr (SCM_RIGHTS). Standard library only: the thin client
imports this module.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import time

TYPE_CHECKING = False  # typing is not imported: the console script imports this module
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any, Final

RUN_DIR: Final = "run"
SOCKET: Final = "daemon.sock"
LOCK: Final = "daemon.lock"
LOG: Final = "daemon.log"
#: the protocol's version: a client and a server of different versions do not talk
VERSION: Final = 1
#: the signals a client forwards to its command (and the server passes on)
FORWARDED: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                    signal.SIGUSR1, signal.SIGUSR2)
#: what the server passes on to a command: those, and a suspended client's stop and continue
PASSED_ON: Final = (*FORWARDED, signal.SIGSTOP, signal.SIGCONT)
_MAX: Final = 16 * 1024 * 1024
_HEADER: Final = struct.Struct(">I")


class Unsafe(Exception):
    """The run directory is not the account's own, or not private to it."""


def home_for(env: Mapping[str, str], cwd: str) -> str:
    """The home a devflow command run with ``env`` in ``cwd`` uses: ``Settings.load``'s
    rule (DEVFLOW_HOME, else ``~/.devflow``; ``~`` expanded; resolved), on a given
    environment and directory instead of the process's own."""
    value = env.get("DEVFLOW_HOME") or os.path.join(_expand("~", env), ".devflow")
    return os.path.realpath(os.path.join(cwd, _expand(value, env)))


def _expand(path: str, env: Mapping[str, str]) -> str:
    """``os.path.expanduser`` with HOME taken from ``env``."""
    if not path.startswith("~"):
        return path
    cut = path.find("/", 1)
    cut = len(path) if cut < 0 else cut
    user = path[1:cut]
    if not user and "HOME" in env:
        base = env["HOME"]
    else:
        import pwd  # noqa: PLC0415 - rare: a home named by account, or no HOME
        try:
            base = (pwd.getpwnam(user) if user else pwd.getpwuid(os.getuid())).pw_dir
        except KeyError:
            return path
    return (base.rstrip("/") + path[cut:]) or "/"


def run_dir(home: str) -> str:
    return os.path.join(home, RUN_DIR)


def open_run_dir(home: str, *, create: bool = False) -> int:
    """A descriptor of the home's run directory, checked: a directory (not a link), owned
    by this account, which no one else may enter. ``FileNotFoundError`` when it is not
    there (and not ``create``); ``Unsafe`` when it is not private."""
    path = run_dir(home)
    if create:
        os.makedirs(home, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
    fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    info = os.fstat(fd)
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        os.close(fd)
        raise Unsafe(f"{path} must be a directory of this account's that no one else may "
                     f"enter (mode 0700); it is owned by uid {info.st_uid}, mode "
                     f"{info.st_mode & 0o777:04o}")
    return fd


def address(dirfd: int) -> str:
    return f"/proc/self/fd/{dirfd}/{SOCKET}"


def connect(home: str, timeout: float | None = None) -> socket.socket | None:
    """A connection to the home's daemon, checked to be this account's process; None when
    none answers (the usual case: one failed ``open`` of the run directory), or none
    accepts within ``timeout`` seconds (the socket keeps that timeout)."""
    try:
        dirfd = open_run_dir(home)
    except (OSError, Unsafe):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(address(dirfd))
        if peer(sock)[1] != os.getuid():
            raise ConnectionRefusedError("the socket's server is another account's")
    except OSError:
        sock.close()
        return None
    finally:
        os.close(dirfd)
    return sock


def peer(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end, from the kernel (SO_PEERCRED)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def send(sock: socket.socket, message: Mapping[str, Any], fds: Sequence[int] = ()) -> None:
    body = json.dumps(message, separators=(",", ":")).encode("ascii")
    data = _HEADER.pack(len(body)) + body
    if fds:
        sent = socket.send_fds(sock, [data], list(fds))
        data = data[sent:]
    if data:
        sock.sendall(data)


class Channel:
    """The messages coming in on one connection, and the descriptors sent with them."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fds: list[int] = []
        self._buffer = b""

    def read(self, *, max_fds: int = 0, deadline: float | None = None) -> dict[str, Any] | None:
        """The next message (blocking); None at the end of the connection. With a
        ``deadline`` (``time.monotonic``), ``TimeoutError`` when it has not come by then."""
        while (message := self.take()) is None:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no message in time")
                self.sock.settimeout(left)
            if not self.pump(max_fds=max_fds):
                return None
        return message

    def pump(self, *, max_fds: int = 0) -> bool:
        """Read what is there (once); False at the end of the connection. ``ValueError``
        when more than ``max_fds`` descriptors came in all (those that came are in
        ``fds``, for the caller to close)."""
        if max_fds:
            data, fds, flags, _ = socket.recv_fds(self.sock, 65536, max_fds,
                                                  socket.MSG_CMSG_CLOEXEC)
            self.fds.extend(fds)
            if flags & socket.MSG_CTRUNC or len(self.fds) > max_fds:
                raise ValueError("more descriptors than asked for")
        else:
            data = self.sock.recv(65536)
        self._buffer += data
        if len(self._buffer) > _MAX + _HEADER.size:
            raise ValueError("message too long")
        return bool(data)

    def messages(self) -> list[dict[str, Any]]:
        """The whole messages read so far."""
        found = []
        while (message := self.take()) is not None:
            found.append(message)
        return found

    def close_fds(self) -> None:
        """Close the descriptors received and not handed on."""
        fds, self.fds = self.fds, []
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    def take(self) -> dict[str, Any] | None:
        """The next whole message read so far, if any. ``ValueError`` for one that is
        not a JSON object (nested too deeply included)."""
        if len(self._buffer) < _HEADER.size:
            return None
        (size,) = _HEADER.unpack_from(self._buffer)
        if size > _MAX:
            raise ValueError("message too long")
        end = _HEADER.size + size
        if len(self._buffer) < end:
            return None
        body, self._buffer = self._buffer[_HEADER.size:end], self._buffer[end:]
        try:
            message = json.loads(body)
        except RecursionError as exc:
            raise ValueError("a message nested too deeply") from exc
        if not isinstance(message, dict):
            raise ValueError("a message is a JSON object")
        return message
