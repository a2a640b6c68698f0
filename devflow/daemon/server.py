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

A request is read through the loop's selector, with ``REQUEST_TIMEOUT`` for it whole: a
slow or silent client delays only itself. An unexpected error while handling one client
drops that client, never the daemon. Descriptors a client sent are closed unless handed
to its child (more than three refuse the request at once).

It stops on ``stop``, SIGTERM or SIGINT, after ``idle`` seconds without a command, when
devflow's code changed (the request that found it is refused), or when its run directory
was removed or moved or its socket replaced (checked at each wake-up): it stops
listening (the socket removed, its lock released, so a new daemon may start), lets the
commands under way end, and exits.
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

from devflow.daemon import peer, stamp, wire

#: the longest a client may take to send its request, in all (then it is dropped): the
#: loop waits for no one, a slow client only delays itself
REQUEST_TIMEOUT: Final = 5.0
_WRITE_TIMEOUT: Final = 10.0
#: the longest one wait of the loop: select's timeout has a ceiling, and each wake-up
#: checks the home is still there
_LONGEST_WAIT: Final = 86400.0
#: how long the loop stops accepting when out of descriptors (instead of spinning)
_ACCEPT_PAUSE: Final = 0.5
_PR_SET_PDEATHSIG: Final = 1


@dataclass
class Child:
    pid: int
    conn: socket.socket | None
    channel: wire.Channel | None
    argv: list[str]


@dataclass
class Pending:
    """A connection whose request is coming in (read through the selector)."""

    conn: socket.socket | None
    channel: wire.Channel
    deadline: float


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
    pending: list[Pending] = field(default_factory=list)
    _paused_until: float = 0.0
    _last: float = 0.0
    _pid: int = 0
    _inode: int = 0
    _confinement: peer.Confinement = ()

    def __post_init__(self) -> None:
        self.started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        self._last = time.monotonic()
        self._pid = os.getpid()
        self._confinement = peer.confinement(self._pid)
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
            self._check_home()
            if self.stopping and not self.children:
                break
            self._expire()
            self._resume()
            if not self.children and not self.pending and not self.stopping \
                    and time.monotonic() >= self._last + self.idle:
                self.stop("idle")
                continue
            timeout = self._timeout()
            for key, _ in self._selector.select(timeout):
                try:
                    request = self._event(key)
                except Exception as exc:  # noqa: BLE001 - one client's, never the daemon's
                    if os.getpid() != self._pid:
                        os._exit(70)  # a child failing before its command: never a server
                    log(f"dropped a client on an unexpected {type(exc).__name__}: {exc}")
                    self._drop(key.data)
                    continue
                if request is not None:
                    return request
        log(f"stopped ({self.stopping}); {self.served} commands served")
        return None

    def _event(self, key: selectors.SelectorKey) -> Request | None:
        if key.fileobj is self.listener:
            self._accept()
        elif key.fileobj == self._wake_r:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_r, 512):
                    pass
            self._reap()
        elif isinstance(key.data, Pending):
            return self._from_pending(key.data)
        elif isinstance(key.data, Child):
            self._from_client(key.data)
        return None

    def _drop(self, data: object) -> None:
        """Forget a client whose event failed: its request, or its command's connection
        (the command gets SIGTERM, as when its client goes away)."""
        if isinstance(data, Pending):
            self._forget(data)
        elif isinstance(data, Child):
            self._client_gone(data)

    def _timeout(self) -> float:
        """The loop's next wait: until the idle timeout, the next request's deadline or
        the listener's pause, never longer than a day."""
        now = time.monotonic()
        ends = [pending.deadline for pending in self.pending]
        if not self.children and not self.stopping:
            ends.append(self._last + self.idle)
        if self._paused_until:
            ends.append(self._paused_until)
        return min([end - now for end in ends] + [_LONGEST_WAIT])

    def _check_home(self) -> None:
        """Stop when the home's run directory was removed or moved, or the socket
        replaced: no client can reach this daemon any more."""
        if self.stopping:
            return
        try:
            here = os.fstat(self.dirfd)
            there = os.stat(wire.run_dir(self.home))
            listening = os.stat(wire.SOCKET, dir_fd=self.dirfd).st_ino
        except OSError:
            self.stop("its run directory or socket is gone")
            return
        if here.st_nlink == 0 or (here.st_dev, here.st_ino) != (there.st_dev, there.st_ino):
            self.stop("its run directory was removed or moved")
        elif listening != self._inode:
            self.stop("its socket was replaced")

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
        if not self._paused_until:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(self.listener)
        self._paused_until = 0.0
        self.listener.close()
        for pending in list(self.pending):
            self._forget(pending)
        os.close(self.lockfd)  # a new daemon may start now
        self.lockfd = -1

    # -- requests ---------------------------------------------------------------------
    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except BlockingIOError:
            return
        except OSError as exc:
            # out of descriptors (EMFILE, ENFILE, ENOBUFS): the listener stays readable;
            # wait a little, through the select's timeout, rather than spin on it
            log(f"cannot accept: {type(exc).__name__}: {exc}; waiting {_ACCEPT_PAUSE:g} s")
            self._selector.unregister(self.listener)
            self._paused_until = time.monotonic() + _ACCEPT_PAUSE
            return
        if not self._peer_allowed(conn):
            conn.close()
            return
        conn.setblocking(False)
        pending = Pending(conn, wire.Channel(conn), time.monotonic() + REQUEST_TIMEOUT)
        self.pending.append(pending)
        self._selector.register(conn, selectors.EVENT_READ, pending)

    def _resume(self) -> None:
        """Listen again after a pause for want of descriptors."""
        if self._paused_until and time.monotonic() >= self._paused_until:
            self._paused_until = 0.0
            if not self.stopping:
                self._selector.register(self.listener, selectors.EVENT_READ, None)

    def _peer_allowed(self, conn: socket.socket) -> bool:
        """The one place a connection's peer is checked: this account's processes, confined
        as the daemon is (devflow/daemon/peer.py); another is answered nothing and runs
        its command in process, confined as it is."""
        pid, uid, _ = wire.peer(conn)
        if uid != os.getuid():
            log(f"refused a connection from uid {uid} (pid {pid}): not this account")
            return False
        why = peer.unlike(self._confinement, pid)
        if why is not None:
            self.refused += 1
            self.last_refusal = f"a client confined otherwise: {why}"
            log(f"refused a connection from pid {pid}: {why}")
            return False
        return True

    def _from_pending(self, pending: Pending) -> Request | None:
        """Read what came of a request; answer it once whole. The descriptors received
        are closed unless handed to a child, whatever happens."""
        conn = pending.conn
        if conn is None:
            return None
        try:
            try:
                alive = pending.channel.pump(max_fds=3)
            except BlockingIOError:
                return None
            message = pending.channel.take()
            if message is None:
                if not alive:
                    raise ConnectionError("closed before its request")
                return None
        except (OSError, ValueError) as exc:
            log(f"dropped a connection: {type(exc).__name__}: {exc}")
            self._forget(pending)
            return None
        self._unwatch(pending)
        pending.conn = None  # the answer's now: it closes the connection or hands it on
        try:
            conn.setblocking(True)
            conn.settimeout(_WRITE_TIMEOUT)
            return self._answer(conn, pending.channel, message)
        except Exception as exc:  # noqa: BLE001 - this client's request, never the daemon
            log(f"dropped a connection: {type(exc).__name__}: {exc}")
            conn.close()
            return None
        finally:
            if os.getpid() == self._pid:
                pending.channel.close_fds()

    def _expire(self) -> None:
        now = time.monotonic()
        for pending in [p for p in self.pending if p.deadline <= now]:
            log(f"dropped a connection: no whole request within {REQUEST_TIMEOUT:g} s")
            self._forget(pending)

    def _unwatch(self, pending: Pending) -> None:
        if pending in self.pending:
            self.pending.remove(pending)
        if pending.conn is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(pending.conn)

    def _forget(self, pending: Pending) -> None:
        self._unwatch(pending)
        pending.channel.close_fds()
        if pending.conn is not None:
            pending.conn.close()
            pending.conn = None

    def _answer(self, conn: socket.socket, channel: wire.Channel,
                message: dict[str, Any]) -> Request | None:
        op = message.get("op")
        if op in ("status", "stop"):
            channel.close_fds()
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
            channel.close_fds()
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
        # the signals a command gets wait until it has a fresh interpreter's handlers
        # (child.become): one sent right after the fork is not lost in the server's
        signal.pthread_sigmask(signal.SIG_BLOCK, wire.FORWARDED)
        try:
            pid = os.fork()
        finally:
            if os.getpid() == self._pid:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, wire.FORWARDED)
        if pid == 0:
            try:
                # the daemon's death is its client's too: the command must not go on unseen
                self._libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
                if os.getppid() != self._pid:  # the daemon died before prctl took effect
                    os._exit(128 + signal.SIGTERM)
                self._close_all()
                conn.close()
                return Request(message, list(channel.fds))
            except BaseException:  # noqa: BLE001 - a child never goes back to serving
                os._exit(70)
        channel.close_fds()
        self.served += 1
        self.children[pid] = child = Child(pid, conn, channel, list(message["argv"][1:2]))
        conn.setblocking(False)
        self._selector.register(conn, selectors.EVENT_READ, child)
        try:
            wire.send(conn, {"started": pid})
        except OSError:
            self._client_gone(child)
            return None
        try:
            self._pass_on(child, channel.messages())  # sent with the request, read with it
        except ValueError:
            self._client_gone(child)
        return None

    def _close_all(self) -> None:
        """In a child: leave the server's signal handling, close its descriptors (each
        through its owner, so that none is closed again later under a number the command
        reuses), other clients' received descriptors included."""
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
        self._selector.close()
        self.listener.close()
        for child in self.children.values():
            if child.conn is not None:
                child.conn.close()
        for pending in self.pending:
            pending.channel.close_fds()
            if pending.conn is not None:
                pending.conn.close()
        for fd in (self._wake_r, self._wake_w, self.dirfd, self.lockfd):
            if fd >= 0:
                os.close(fd)
        self.children.clear()
        self.pending.clear()

    # -- children ---------------------------------------------------------------------
    def _from_client(self, child: Child) -> None:
        if child.conn is None or child.channel is None:  # reaped earlier in this batch
            return
        try:
            alive = child.channel.pump()
            messages = child.channel.messages()
        except BlockingIOError:
            return
        except (OSError, ValueError):
            alive, messages = False, []
        self._pass_on(child, messages)
        if not alive:
            self._client_gone(child)

    def _pass_on(self, child: Child, messages: list[dict[str, Any]]) -> None:
        """The signals a client sends its command (an int of ``wire.PASSED_ON``, nothing
        else)."""
        for message in messages:
            signum = message.get("signal")
            if type(signum) is int and signum in wire.PASSED_ON \
                    and child.pid in self.children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signum)

    def _client_gone(self, child: Child) -> None:
        """The client went away before its answer: the command must not go on unseen."""
        if child.conn is not None:
            with contextlib.suppress(KeyError, ValueError):
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
            conn, child.conn, child.channel = child.conn, None, None
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(conn)
            with contextlib.suppress(OSError):
                conn.setblocking(True)
                conn.settimeout(_WRITE_TIMEOUT)
                wire.send(conn, {"exit": status})
            conn.close()

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
        signum = os.WTERMSIG(status)
        try:
            return f"killed by {signal.Signals(signum).name}"
        except ValueError:  # a real-time signal has no name here
            return f"killed by signal {signum}"
    return f"exit {os.waitstatus_to_exitcode(status)}"


def log(line: str) -> None:
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    print(f"{now} devflow daemon [{os.getpid()}]: {line}", file=sys.stderr, flush=True)
