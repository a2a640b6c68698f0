"""Agent processes: started from an argv list, in their own process group, never outliving devflow.

- ``start_new_session`` puts the agent in its own session and process group, so a
  timeout or an abort signals the whole group (TERM, then KILL after a grace period),
  children included; once the agent's main process exits, what is left of its group
  is killed too.
- ``PR_SET_PDEATHSIG`` (Linux) makes the kernel kill the agent when the devflow
  process that started it dies. It is set by ``setpriv --pdeathsig KILL`` (util-linux)
  exec'ed in front of the agent when it is installed: no Python runs in the child,
  and without a ``preexec_fn`` Python can ``vfork`` (measured here: 4.5 ms a spawn
  from a 150 MB process, against 12 ms with ``preexec_fn``). Otherwise a
  ``preexec_fn`` calls ``prctl``. The signal follows the *thread* that forked, so
  agents are started from the event loop's thread, never from a worker thread.
- stdout and stderr are streamed to log files (0600), capped in size; stdout lines
  are handed to a callback for live progress.
- A process is known by its pid *and its start time* (``/proc/<pid>/stat``, field 22),
  recorded with the invocation: after the pid was reused, the pair names nobody, so
  ``stop`` (the sweep, an abort from another process) leaves the new owner alone. It
  signals through a pidfd opened and then checked, so the signal reaches the process
  that was checked. The driver waits for its agent without reaping it (``waitid`` with
  ``WNOWAIT``): until it kills what is left of the group, the unreaped leader keeps the
  group's number from being reused.
"""

from __future__ import annotations

import errno
import functools
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

import anyio

from devflow import memo as memos

_PR_SET_PDEATHSIG: Final = 1
_LOG_CAP: Final = 50 * 1024 * 1024
#: where what setpriv can do is remembered between processes (``configure``)
_memo: list[memos.Memo] = []


def configure(*, memo: memos.Memo | None = None) -> None:
    _memo[:] = [memo] if memo is not None else []


@functools.cache
def _libc() -> Any:
    """The C library, for ``prctl`` (loaded in the parent: never after a fork; and only
    where setpriv is missing: finding it runs ldconfig)."""
    import ctypes  # noqa: PLC0415 - see the docstring
    import ctypes.util  # noqa: PLC0415 - as above
    return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True) \
        if sys.platform == "linux" else None


@dataclass(frozen=True, slots=True)
class Spawn:
    argv: Sequence[str]
    cwd: Path
    env: Mapping[str, str]
    stdout_log: Path
    stderr_log: Path
    timeout: float
    stdin_file: Path | None = None
    grace: float = 5.0
    log_cap: int = _LOG_CAP


@dataclass(frozen=True, slots=True)
class Started:
    """A process just started: what identifies it, for the invocation's record."""

    pid: int
    pgid: int
    #: its start time in clock ticks since boot (``/proc/<pid>/stat`` field 22), or None
    #: where there is no /proc
    start: int | None


@dataclass(frozen=True, slots=True)
class Exit:
    pid: int
    pgid: int
    exit_code: int | None
    signal: int | None
    duration_ms: int
    timed_out: bool
    truncated: bool


@functools.cache
def _setpriv() -> str | None:
    """setpriv, when it has ``--pdeathsig`` (asked once per version of its executable)."""
    if sys.platform != "linux":
        return None
    path = shutil.which("setpriv")
    stamp = memos.file_stamp(path) if path else None
    if path is None or stamp is None:
        return None
    key = memos.key("setpriv-pdeathsig", stamp)
    if _memo and _memo[0].get(key):
        return path
    probe = subprocess.run([path, "--pdeathsig", "KILL", "--", "true"], capture_output=True,
                           check=False)
    if probe.returncode != 0:
        return None
    if _memo:
        _memo[0].put(key, True)
        _memo[0].save()
    return path


def _child_setup(parent: int) -> Callable[[], None]:
    libc = _libc()

    def setup() -> None:
        if libc is not None:
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != parent:  # the parent died before prctl took effect
                os._exit(137)
    return setup


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> bool:
    """Signal a process group; False when it no longer exists. Only for a group whose
    leader the caller holds (unreaped) or has just checked: see ``stop``."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name, or None (no such process)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    # "pid (comm) state ppid pgrp ...": comm may hold spaces, so split after the last ")"
    return text[text.rfind(")") + 2:].split()


def start_time(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot; None when it does not exist."""
    fields = _stat(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


def group_alive(pgid: int) -> bool:
    """Whether a process of the group still lives (zombies, dead but unreaped, do not)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat(int(entry.name))
        if fields and len(fields) > 2 and int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def alive(pid: int, start: int) -> bool:
    """Whether the process that started at ``start`` with this pid still lives (not a zombie)."""
    fields = _stat(pid)
    return fields is not None and len(fields) > 19 and int(fields[19]) == start \
        and fields[0] != "Z"


def remains(pid: int, pgid: int, start: int, marks: Mapping[str, str] | None = None) -> bool:
    """Whether the process with this pid and start time lives, or a member of its group
    that carries ``marks`` (see ``stop``)."""
    if alive(pid, start):
        return True
    return marks is not None and any(_carries(p, marks) for p in _members(pgid))


def stop(pid: int, pgid: int, start: int | None, *, marks: Mapping[str, str] | None = None,
         sig: int = signal.SIGKILL) -> str:
    """Signal an agent that a record names, and only it.

    ``gone``: neither it nor its group is left; ``signalled``: the process with this pid
    and start time got ``sig``, and so did its group (for a sandboxed agent, the outer
    ``bwrap``: its namespace ends with it); ``reused``: the pid now belongs to another
    process, which is left alone; ``unknown``: no start time was recorded, nothing is
    signalled. A leader already gone may have left members in its group: those still
    carrying ``marks`` in their environment (the run and attempt devflow gave them) are
    signalled one by one; any other process of that group number is left alone.
    """
    if start is None:
        return "unknown"
    leader = _signal_if(pid, start, sig)
    if leader == "signalled":
        kill_group(pgid, sig)
        return leader
    orphans = [p for p in _members(pgid) if marks and _carries(p, marks)]
    for member in orphans:
        member_start = start_time(member)
        if member_start is not None and member_start >= start:
            _signal_if(member, member_start, sig)
    if orphans:
        return "signalled"
    return leader


def _signal_if(pid: int, start: int, sig: int) -> str:
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return "gone"
    except (AttributeError, OSError):
        fd = None  # no pidfd here: check, then signal by pid
    try:
        # checked after the pidfd was opened: the pidfd now names the process checked
        fields = _stat(pid)
        if not fields or len(fields) <= 19 or fields[0] == "Z":
            return "gone"
        if int(fields[19]) != start:
            return "reused"
        try:
            if fd is not None:
                signal.pidfd_send_signal(fd, sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            return "gone"
        return "signalled"
    finally:
        if fd is not None:
            os.close(fd)


def _members(pgid: int) -> list[int]:
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    found = []
    for entry in proc.iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields and len(fields) > 2 and int(fields[2]) == pgid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def _carries(pid: int, marks: Mapping[str, str]) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    wanted = {f"{k}={v}".encode() for k, v in marks.items()}
    return wanted <= set(environ)


async def run(spawn: Spawn, *, on_start: Callable[[Started], Awaitable[None]] | None = None,
              on_line: Callable[[str], None] | None = None) -> Exit:
    """Run the process to its end, its timeout, or the caller's cancellation."""
    for log in (spawn.stdout_log, spawn.stderr_log):
        log.parent.mkdir(parents=True, exist_ok=True)
    stdin: IO[bytes] | int = subprocess.DEVNULL
    if spawn.stdin_file is not None:
        stdin = open(spawn.stdin_file, "rb")  # noqa: SIM115 - closed right after the fork
    started = time.monotonic()
    try:
        wrapper = _setpriv()
        argv = [wrapper, "--pdeathsig", "KILL", "--", *spawn.argv] if wrapper else list(spawn.argv)
        proc = subprocess.Popen(
            argv, cwd=spawn.cwd, env=dict(spawn.env), stdin=stdin,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
            preexec_fn=None if wrapper else _child_setup(os.getpid()),  # noqa: PLW1509 - prctl
            close_fds=True)
    finally:
        if not isinstance(stdin, int):
            stdin.close()
    pgid = proc.pid
    watch = _Watch(proc)
    timed_out = False
    truncated: list[bool] = []
    assert proc.stdout is not None and proc.stderr is not None
    try:
        if on_start is not None:
            await on_start(Started(proc.pid, pgid, start_time(proc.pid)))
        async with anyio.create_task_group() as pumps:
            done = [anyio.Event(), anyio.Event()]
            pumps.start_soon(_pump, proc.stdout, spawn.stdout_log, spawn.log_cap, on_line,
                             truncated, done[0])
            pumps.start_soon(_pump, proc.stderr, spawn.stderr_log, spawn.log_cap, None,
                             truncated, done[1])
            with anyio.move_on_after(spawn.timeout) as scope:
                await watch.wait()
            if scope.cancelled_caught:
                timed_out = True
                with anyio.CancelScope(shield=True):
                    await _stop_group(watch, pgid, spawn.grace)
            # Whatever the agent left behind in its group goes with it (the leader is not
            # reaped yet, so the group's number is still its own); a descendant that left
            # the group could hold the pipes open, so stop reading after the grace.
            kill_group(pgid)
            with anyio.move_on_after(spawn.grace):
                for event in done:
                    await event.wait()
            pumps.cancel_scope.cancel()
    except BaseException:
        with anyio.CancelScope(shield=True):
            await _stop_group(watch, pgid, spawn.grace)
        raise
    finally:
        watch.reap()
    code = proc.returncode
    return Exit(pid=proc.pid, pgid=pgid, exit_code=code if code is not None and code >= 0 else None,
                signal=-code if code is not None and code < 0 else None,
                duration_ms=round((time.monotonic() - started) * 1000), timed_out=timed_out,
                truncated=bool(truncated))


class _Watch:
    """Waits for the process to exit without reaping it (``waitid`` on a pidfd, ``WNOWAIT``),
    so its pid and group stay its own until ``reap``; polls where there is no pidfd."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        try:
            self.fd: int | None = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            self.fd = None

    def exited(self) -> bool:
        if self.fd is None:
            return self.proc.poll() is not None
        try:
            return os.waitid(os.P_PIDFD, self.fd,
                             os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True
        except OSError:  # a kernel without P_PIDFD: poll from now on
            os.close(self.fd)
            self.fd = None
            return self.proc.poll() is not None

    async def wait(self) -> None:
        while not self.exited():
            if self.fd is None:
                await anyio.sleep(0.02)
            else:
                await anyio.wait_readable(self.fd)

    def reap(self) -> None:
        if self.exited():
            self.proc.wait()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


async def _stop_group(watch: _Watch, pgid: int, grace: float) -> None:
    if not watch.exited():
        kill_group(pgid, signal.SIGTERM)
        with anyio.move_on_after(grace):
            await watch.wait()
    kill_group(pgid, signal.SIGKILL)
    if not watch.exited():
        await watch.wait()


async def _pump(stream: IO[bytes], log: Path, cap: int, on_line: Callable[[str], None] | None,
                truncated: list[bool], done: anyio.Event) -> None:
    fd = stream.fileno()
    os.set_blocking(fd, False)
    written, pending = 0, b""
    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while True:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                await anyio.wait_readable(fd)
                continue
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise
            if not chunk:
                break
            if written < cap:
                part = chunk[: cap - written]
                os.write(out, part)
                written += len(part)
                if written >= cap and len(chunk) > len(part):
                    truncated.append(True)
                    os.write(out, f"\n[devflow: output cut at {cap} bytes]\n".encode())
            if on_line is not None:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    on_line(line.decode("utf-8", errors="replace"))
        if on_line is not None and pending:
            on_line(pending.decode("utf-8", errors="replace"))
    finally:
        os.close(out)
        stream.close()
        done.set()
