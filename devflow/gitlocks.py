"""Git's lock files in devflow's way, and whether a live process holds one.

Git changes a file by creating ``<file>.lock`` exclusively, writing it and renaming it
over the file. A git killed on the way (kill -9, a full disk, a file size limit, a
reboot) leaves the lock behind, and every later git that needs the file refuses with
"Unable to create '…/index.lock': File exists". ``in_message`` finds the lock git
names; ``holders`` finds the live processes that may hold it; ``remove`` removes one
that none holds.

Git does not keep a lock's file open while it holds it (it writes, closes, and renames
later), so an open descriptor (``/proc/<pid>/fd``) is not the only sign: any git
process working in one of the places given (its working directory there, or the place
in its arguments) counts as a holder too. Processes whose ``/proc`` entries cannot be
read (another user's) cannot be checked and are not counted.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

_LOCK_IN_MESSAGE: Final = re.compile(r"Unable to create '([^'\n]+\.lock)': File exists")


@dataclass(frozen=True, slots=True)
class Holder:
    pid: int
    command: str

    def describe(self) -> str:
        return f"pid {self.pid} ({self.command[:120]})"


def in_message(text: str) -> Path | None:
    """The lock file git says it could not create, from its message; None if none."""
    found = _LOCK_IN_MESSAGE.search(text)
    return Path(found.group(1)) if found else None


def holders(lock: Path, places: Sequence[Path]) -> list[Holder]:
    """Live processes that hold ``lock`` or may: those with it open, and git processes at
    work in one of ``places`` (directories). Never this process."""
    wanted = str(lock)
    roots = [str(p) for p in places]
    found = []
    with os.scandir("/proc") as entries:
        pids = [int(e.name) for e in entries if e.name.isdigit()]
    for pid in pids:
        if pid == os.getpid():
            continue
        argv = _argv(pid)
        if argv is None:
            continue
        shown = [a for a in argv if not a.startswith(("--git-dir=", "--work-tree="))]
        command = " ".join(shown) or f"[{_comm(pid)}]"
        if _has_open(pid, wanted) or (_is_git(pid, argv) and _works_in(pid, argv, roots)):
            found.append(Holder(pid, command))
    return found


def _argv(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""


def _has_open(pid: int, wanted: str) -> bool:
    with contextlib.suppress(OSError), os.scandir(f"/proc/{pid}/fd") as fds:
        for fd in fds:
            with contextlib.suppress(OSError):
                if os.readlink(fd.path) == wanted:
                    return True
    return False


def _is_git(pid: int, argv: list[str]) -> bool:
    name = os.path.basename(argv[0]) if argv else ""
    return name == "git" or name.startswith("git-") or _comm(pid) in ("git",) \
        or _comm(pid).startswith("git-")


def _within(path: str, roots: Sequence[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def _works_in(pid: int, argv: list[str], roots: Sequence[str]) -> bool:
    with contextlib.suppress(OSError):
        if _within(os.readlink(f"/proc/{pid}/cwd"), roots):
            return True
    return any(_within(a.partition("=")[2] if a.startswith("--") else a, roots) for a in argv)


def remove(lock: Path) -> dict[str, Any] | None:
    """Remove a lock no process holds (the caller checked); what was removed, or None
    when it was gone already."""
    try:
        age = max(time.time() - lock.stat().st_mtime, 0.0)
        lock.unlink()
    except FileNotFoundError:
        return None
    return {"path": str(lock), "age_seconds": round(age, 1)}
