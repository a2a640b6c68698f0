"""The daemon's loop: accept a request, check it, fork a child for it, report its end.

One thread, no other before a fork. Each connection's peer is checked by the kernel's
credentials (SO_PEERCRED): another account's is refused and logged. A command is served
only when the client's interpreter is the daemon's (``stamp.interpreter``), its home (as
its environment and directory make it) is the daemon's, and devflow's code is what the
daemon imported (``stamp.code``, re-taken before each fork: on a change the request is
refused, the client runs the command itself, and the daemon stops). Refused, a client
runs the command in process: a refusal never changes what a command does.

A child gets the client's descriptors and attributes (``child.become``) and returns from
``Server.serve`` with its request, to run the command outside the loop's frames and end
as an interpreter does (atexit handlers, flushed streams). The server forwards the
client's signals (SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2; SIGSTOP and SIGCONT
when the client is suspended and continued) to the child, sends SIGTERM when the client
goes away without its answer, and the kernel sends it when the daemon dies
(PR_SET_PDEATHSIG): a command never outlives its client silently. It reaps children and
tells each client how its child ended (the raw wait status: an exit code, or the signal
that killed it).

It stops on ``stop``, SIGTERM or SIGINT, after ``idle`` seconds without a command, or when
devflow's code changed: it stops listening (the socket removed, its lock released, so a
new daemon may start), lets the commands under way end, and exits.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import os
import selectors
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Final

from devflow.daemon import stamp, wire

_READ_TIMEOUT: Final = 10.0
_PR_SET_PDEATHSIG: Final = 1


@dataclass
class Child:
    pid: int
    conn: socket.socket | None
    channel: wire.Channel | None
    argv: list[str]


@dataclass
class Request:
    """What a forked child runs: the client's message and descriptors."""

    message: dict[str, Any]
    fds: list[int]


@dataclass
class Server:
    home: str
    idle: float
    dirfd: int
    lockfd: int
    listener: socket.socket
    code: tuple[tuple[str, int, int], ...]
    interpreter: dict[str, Any] = field(default_factory=dict)
    started: str = ""
    served: int = 0
    refused: int = 0
    stopping: str = ""
    last_refusal: str = ""
    children: dict[int, Child] = field(default_factory=dict)
    _last: float = 0.0
    _pid: int = 0
    _inode: int = 0

    def __post_init__(self) -> None:
        self.started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        self._last = time.monotonic()
        self._pid = os.getpid()
        self._inode = os.stat(wire.SOCKET, dir_fd=self.dirfd).st_ino
        # prctl, for a child to get SIGTERM when the daemon dies: the C library of this
        # process, loaded before any fork (ctypes.util's search would start ldconfig)
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    # -- the loop ---------------------------------------------------------------------
    def serve(self) -> Request | None:
        """Serve until stopped and every child ended (None); in a forked child, return
        its request."""
        signal.set_wakeup_fd(self._wake_w)
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._signalled)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        self._selector.register(self.listener, selectors.EVENT_READ, None)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        while self.children or not self.stopping:
            timeout = None
            if not self.children and not self.stopping:
                timeout = self._last + self.idle - time.monotonic()
                if timeout <= 0:
                    self.stop("idle")
                    continue
            for key, _ in self._selector.select(timeout):
                if key.fileobj is self.listener:
                    request = self._accept()
                    if request is not None:
                        return request
                elif key.fileobj == self._wake_r:
                    with contextlib.suppress(BlockingIOError):
                        while os.read(self._wake_r, 512):
                            pass
                    self._reap()
                else:
                    self._from_client(key.data)
        log(f"stopped ({self.stopping}); {self.served} commands served")
        return None

    def _signalled(self, signum: int, frame: object) -> None:
        if os.getpid() != self._pid:  # a child, before it left the server's handlers
            return
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.stop(signal.Signals(signum).name)

    def stop(self, why: str) -> None:
        """Stop listening; the loop ends once the commands under way ended."""
        if self.stopping:
            return
        self.stopping = why
        log(f"stopping: {why}")
        with contextlib.suppress(OSError):
            if os.stat(wire.SOCKET, dir_fd=self.dirfd).st_ino == self._inode:
                os.unlink(wire.SOCKET, dir_fd=self.dirfd)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(self.listener)
        self.listener.close()
        os.close(self.lockfd)  # a new daemon may start now
        self.lockfd = -1

    # -- requests ---------------------------------------------------------------------
    def _accept(self) -> Request | None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return None
        try:
            pid, uid, _ = wire.peer(conn)
            if uid != os.getuid():
                log(f"refused a connection from uid {uid} (pid {pid}): not this account")
                conn.close()
                return None
            conn.settimeout(_READ_TIMEOUT)
            channel = wire.Channel(conn)
            message = channel.read(max_fds=3)
            if message is None:
                raise ConnectionError("closed before its request")
            return self._answer(conn, channel, message)
        except (OSError, ValueError) as exc:
            log(f"dropped a connection: {type(exc).__name__}: {exc}")
            conn.close()
            return None

    def _answer(self, conn: socket.socket, channel: wire.Channel,
                message: dict[str, Any]) -> Request | None:
        op = message.get("op")
        if op in ("status", "stop"):
            for fd in channel.fds:
                os.close(fd)
            if op == "stop":
                self.stop(f"asked by pid {wire.peer(conn)[0]}")
            wire.send(conn, {"status": self.status()})
            conn.close()
            return None
        why = self._refusal(message, channel.fds)
        if why is not None:
            self.refused += 1
            self.last_refusal = why
            log(f"refused a command: {why}")
            for fd in channel.fds:
                os.close(fd)
            with contextlib.suppress(OSError):
                wire.send(conn, {"refused": why})
            conn.close()
            return None
        return self._fork(conn, channel, message)

    def _refusal(self, message: dict[str, Any],  # noqa: PLR0911 - one check a line
                 fds: list[int]) -> str | None:
        if message.get("version") != wire.VERSION or message.get("op") != "run":
            return "another version of devflow's client"
        if self.stopping:
            return f"the daemon is stopping ({self.stopping})"
        if len(fds) != 3:
            return "the request did not carry stdin, stdout and stderr"
        if not _wellformed(message):
            return "a malformed request"
        home = wire.home_for(message["env"], message["cwd"])
        if home != self.home:
            return f"the command's home is {home}, not the daemon's"
        if message.get("interpreter") != self.interpreter:
            return "the client's interpreter is not the daemon's (executable, flags or path)"
        if threading.active_count() != 1:
            return "the daemon has a thread: it does not fork"
        if stamp.code() != self.code:
            self.stop("devflow's code changed")
            return "devflow's code changed since the daemon started"
        return None

    def _fork(self, conn: socket.socket, channel: wire.Channel,
              message: dict[str, Any]) -> Request | None:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        pid = os.fork()
        if pid == 0:
            # the daemon's death is its client's too: the command must not go on unseen
            self._libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
            if os.getppid() != self._pid:  # the daemon died before prctl took effect
                os._exit(128 + signal.SIGTERM)
            self._close_all()
            conn.close()
            return Request(message, list(channel.fds))
        for fd in channel.fds:
            os.close(fd)
        self.served += 1
        self.children[pid] = child = Child(pid, conn, channel, list(message["argv"][1:2]))
        conn.setblocking(False)
        self._selector.register(conn, selectors.EVENT_READ, child)
        try:
            wire.send(conn, {"started": pid})
        except OSError:
            self._client_gone(child)
        return None

    def _close_all(self) -> None:
        """In a child: leave the server's signal handling, close its descriptors (each
        through its owner, so that none is closed again later under a number the command
        reuses)."""
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
        self._selector.close()
        self.listener.close()
        for child in self.children.values():
            if child.conn is not None:
                child.conn.close()
        for fd in (self._wake_r, self._wake_w, self.dirfd, self.lockfd):
            if fd >= 0:
                os.close(fd)
        self.children.clear()

    # -- children ---------------------------------------------------------------------
    def _from_client(self, child: Child) -> None:
        assert child.channel is not None
        try:
            alive = child.channel.pump()
            messages = child.channel.messages()
        except (OSError, ValueError):
            alive, messages = False, []
        for message in messages:
            signum = message.get("signal")
            if signum in wire.PASSED_ON and child.pid in self.children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signum)
        if not alive:
            self._client_gone(child)

    def _client_gone(self, child: Child) -> None:
        """The client went away before its answer: the command must not go on unseen."""
        if child.conn is not None:
            self._selector.unregister(child.conn)
            child.conn.close()
            child.conn = child.channel = None
        if child.pid in self.children:
            log(f"the client of pid {child.pid} went away: SIGTERM")
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGTERM)
                os.kill(child.pid, signal.SIGCONT)  # a command its client had suspended

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            self._last = time.monotonic()
            if child is None:
                continue
            if child.conn is None:
                log(f"pid {pid} ended ({_ended(status)}) after its client went away")
                continue
            self._selector.unregister(child.conn)
            with contextlib.suppress(OSError):
                child.conn.setblocking(True)
                child.conn.settimeout(_READ_TIMEOUT)
                wire.send(child.conn, {"exit": status})
            child.conn.close()

    def status(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "home": self.home,
                "socket": os.path.join(wire.run_dir(self.home), wire.SOCKET),
                "started": self.started, "idle_timeout": self.idle, "served": self.served,
                "refused": self.refused, "last_refusal": self.last_refusal or None,
                "running": len(self.children), "stopping": self.stopping or None,
                "executable": sys.executable}


def _wellformed(message: dict[str, Any]) -> bool:
    """The request's fields have the types a child applies (checked before forking)."""
    env, argv, stdio = message.get("env"), message.get("argv"), message.get("stdio")
    return (isinstance(env, dict) and all(isinstance(k, str) and isinstance(v, str)
                                          for k, v in env.items())
            and isinstance(argv, list) and bool(argv) and all(isinstance(a, str) for a in argv)
            and isinstance(message.get("cwd"), str) and isinstance(message.get("umask"), int)
            and isinstance(stdio, list) and len(stdio) == 3
            and all(isinstance(s, dict) and isinstance(s.get("encoding"), str)
                    and isinstance(s.get("errors"), str) for s in stdio))


def _ended(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit {os.waitstatus_to_exitcode(status)}"


def log(line: str) -> None:
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    print(f"{now} devflow daemon [{os.getpid()}]: {line}", file=sys.stderr, flush=True)
