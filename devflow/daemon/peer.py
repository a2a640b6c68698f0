"""Whether the process at the other end of the daemon's socket is confined as the daemon is.

Only this account can reach the socket (its directory is 0700, SO_PEERCRED names the
uid), but processes of one account can be confined by other means: bubblewrap (an
agent's sandbox), Codex's Landlock and seccomp sandbox, a container, an unshared
namespace, fewer groups or capabilities. A command the daemon forks runs with the
daemon's confinement, not its client's, so serving a confined client would let it do
what it could not do itself (write the database its sandbox keeps read-only, decide a
gate). The daemon therefore serves only a client confined exactly as the daemon itself:
the same namespaces, the same ``no_new_privs`` and seccomp mode (Landlock and seccomp
filters need one of them), the same groups and capabilities, the same security label.
Any other client is answered "refused" and runs its command in process, confined as it
is.

Read from ``/proc/PID`` for the pid SO_PEERCRED gave at connect time; the process
start time is read before and after, so a client that exited (its pid reused by
another process in between) is refused, not mistaken for the newcomer.
"""

from __future__ import annotations

import os
from typing import Final

#: the namespaces a client must share with the daemon
NAMESPACES: Final = ("mnt", "pid", "net", "user", "ipc", "uts", "cgroup", "time")
#: the lines of /proc/PID/status that must be the daemon's
STATUS: Final = ("Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb",
                 "NoNewPrivs", "Seccomp")

Confinement = tuple[tuple[str, str], ...]


def confinement(pid: int) -> Confinement:
    """What confines process ``pid``, as (what, value) pairs; OSError when it cannot
    be read (the process is gone, or hidden from us)."""
    started = _start_time(pid)
    found: list[tuple[str, str]] = []
    for name in NAMESPACES:
        try:
            found.append((f"{name} namespace", os.readlink(f"/proc/{pid}/ns/{name}")))
        except FileNotFoundError:  # a namespace this kernel does not have
            found.append((f"{name} namespace", "-"))
    with open(f"/proc/{pid}/status", encoding="utf-8") as status:
        fields = dict(line.rstrip("\n").partition(":")[::2] for line in status)
    found += [(name, fields.get(name, "-").strip()) for name in STATUS]
    try:
        with open(f"/proc/{pid}/attr/current", "rb") as label:
            found.append(("security label", label.read().rstrip(b"\0\n").decode(
                "utf-8", "replace")))
    except OSError:  # no security module that keeps one
        found.append(("security label", "-"))
    if _start_time(pid) != started:
        raise ProcessLookupError(f"process {pid} ended while it was looked at")
    return tuple(found)


def unlike(mine: Confinement, pid: int) -> str | None:
    """Why the client ``pid`` is not confined as ``mine`` says (None: it is)."""
    try:
        theirs = dict(confinement(pid))
    except OSError as exc:
        return f"its process {pid} cannot be looked at ({type(exc).__name__})"
    for what, value in mine:
        if theirs.get(what) != value:
            return f"it runs with another {what} than the daemon (a sandbox or container)"
    return None


def _start_time(pid: int) -> str:
    with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
        # the fields after the command name, which is in parentheses and may hold any
        # character; the start time is the 22nd field, the 20th after the name
        return stat.read().rpartition(")")[2].split()[19]
