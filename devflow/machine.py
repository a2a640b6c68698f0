"""Faults of the machine, told apart from faults of the run (issue 20).

A full disk, a quota, a file size limit, a read-only file system, a git lock that a
live process holds (or that is not devflow's to remove), a git killed while it wrote:
none of these says anything about the run, and each goes away once a person (or time)
removes its cause. ``classify`` recognises them in an error (an ``OSError`` by its
errno; git by its exit signal and its own words, the only thing git gives) and says,
as a ``Blocked``, what is wrong, where, and what to do. The engine then pauses the run
with that reason instead of failing it; ``devflow run resume`` or the sweep continues
it once the cause is gone (``cleared``).
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from devflow import git, gitlocks
from devflow.errors import Code, DevflowError

#: errno -> kind of fault
_ERRNOS: Final = {errno.ENOSPC: "disk_full", errno.EDQUOT: "disk_full",
                  errno.EFBIG: "file_too_large", errno.EROFS: "read_only"}
#: what git says for each errno (C locale: ``git.run`` sets it)
_GIT_WORDS: Final = (("No space left on device", "disk_full"), ("Disk quota exceeded", "disk_full"),
                     ("File too large", "file_too_large"),
                     ("Read-only file system", "read_only"))
#: signals that end a git from outside its control (the OOM killer, a full disk under a
#: mapped file, kill -9), not by a person's request
_KILLERS: Final = frozenset({signal.SIGKILL, signal.SIGBUS, signal.SIGSEGV, signal.SIGABRT})
#: free space under which a disk counts as still full when the sweep looks again
ROOM_BYTES: Final = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Blocked:
    """What stops a run that is not the run's fault: ``kind`` (disk_full, file_too_large,
    read_only, git_lock, git_killed), the ``path`` it concerns, the ``message`` and the
    ``fix`` for a person."""

    kind: str
    path: str
    message: str
    fix: str

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "path": self.path, "message": self.message, "fix": self.fix}

    @classmethod
    def from_json(cls, value: Any) -> Blocked | None:
        if not isinstance(value, dict) or not isinstance(value.get("kind"), str):
            return None
        return cls(str(value["kind"]), str(value.get("path") or ""),
                   str(value.get("message") or ""), str(value.get("fix") or ""))


class MachineFault(DevflowError):
    """A fault of the machine devflow met (and could not repair): the run is paused."""

    def __init__(self, blocked: Blocked) -> None:
        super().__init__(Code.MACHINE_FAULT, blocked.message, hint=blocked.fix,
                         blocked=blocked.to_json())
        self.blocked = blocked


def classify(exc: BaseException, where: Path | None = None) -> Blocked | None:
    """The machine fault behind ``exc`` (or anything it was raised from), or None when it
    is not one. ``where``: the place the failed operation wrote to, when the error does
    not name it."""
    for error in _chain(exc):
        if isinstance(error, MachineFault):
            return error.blocked
        if isinstance(error, OSError) and error.errno in _ERRNOS:
            path = str(error.filename) if error.filename else str(where or "")
            return _space(_ERRNOS[error.errno], path, error.strerror or str(error))
        if isinstance(error, git.GitError):
            found = _from_git(error, where)
            if found is not None:
                return found
        if isinstance(error, DevflowError) and error.code in (Code.WORKTREE_FAILED,
                                                              Code.GIT_FAILED):
            found = _from_words(error.message, where)
            if found is not None:
                return found
    return None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        error = todo.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        yield error
        if isinstance(error, BaseExceptionGroup):
            todo += list(error.exceptions)
        todo += [e for e in (error.__cause__, error.__context__) if e is not None]


def _from_git(error: git.GitError, where: Path | None) -> Blocked | None:
    place = where if where is not None else error.cwd
    if error.returncode < 0:  # killed by a signal while it worked
        sig = -error.returncode
        if sig == signal.SIGXFSZ:
            return _space("file_too_large", str(place), "git was stopped by the file "
                          "size limit (SIGXFSZ) while it wrote")
        if sig not in _KILLERS:
            return None  # Ctrl-C or a stop asked for: the drive's own handling
        name = signal.Signals(sig).name
        return Blocked("git_killed", str(place), f"git was killed by {name} while it wrote "
                       f"in {place}",
                       "find what kills processes on this machine (the OOM killer, a limit); "
                       "devflow removes the lock files it left and tries again on "
                       "`devflow run resume`")
    return _from_words(error.stderr, place)


def _from_words(text: str, where: Path | None) -> Blocked | None:
    lock = gitlocks.in_message(text)
    if lock is not None:
        return lock_blocked(lock, [])
    for words, kind in _GIT_WORDS:
        if words in text:
            return _space(kind, str(where or ""), f"git: {words}")
    return None


def lock_blocked(lock: Path, holders: list[gitlocks.Holder]) -> Blocked:
    """A git lock devflow did not remove: held by a live process, or not devflow's."""
    if holders:
        who = ", ".join(h.describe() for h in holders[:3])
        return Blocked("git_lock", str(lock), f"the git lock {lock} is held by {who}",
                       f"let {'it' if len(holders) == 1 else 'them'} finish (or stop "
                       f"{'it' if len(holders) == 1 else 'them'}); then `devflow run resume` "
                       "(or the next `devflow sweep`) continues the run")
    return Blocked("git_lock", str(lock), f"the git lock {lock} is in the way, and it is not "
                   "one devflow may remove (not in the run's own worktree or branch)",
                   f"if no git is running in that repository, remove it (`rm '{lock}'`); "
                   "then `devflow run resume` (or the next `devflow sweep`) continues the run")


def _space(kind: str, path: str, what: str) -> Blocked:
    place = path or "the workspace or the repository"
    if kind == "disk_full":
        return Blocked(kind, path, f"the disk is full at {place} ({what})",
                       f"free space on the file system of {place} (`df -h '{path or '.'}'`); "
                       "then `devflow run resume` (or the next `devflow sweep`) continues "
                       "the run")
    if kind == "file_too_large":
        return Blocked(kind, path, f"a file size limit stopped a write at {place} ({what})",
                       "raise the limit (`ulimit -f unlimited`) for devflow's processes; "
                       "then `devflow run resume` continues the run")
    return Blocked(kind, path, f"the file system of {place} is read-only ({what})",
                   "make it writable again; then `devflow run resume` (or the next "
                   "`devflow sweep`) continues the run")


def cleared(blocked: Blocked) -> bool:
    """Whether the cause looks gone, as the sweep can tell from here: the disk has room
    again, the lock is gone or no live process holds it. A cause this cannot see (a
    limit of another process, a kill) counts as gone: the next attempt tells."""
    path = Path(blocked.path) if blocked.path else None
    if blocked.kind == "disk_full" and path is not None:
        existing = next((p for p in (path, *path.parents) if p.exists()), None)
        if existing is None:
            return True
        return shutil.disk_usage(existing).free >= ROOM_BYTES
    if blocked.kind == "read_only" and path is not None:
        existing = next((p for p in (path, *path.parents) if p.is_dir()), None)
        return existing is None or os.access(existing, os.W_OK)
    if blocked.kind == "git_lock" and path is not None:
        return not path.exists() or not gitlocks.holders(path, [path.parent])
    return True
