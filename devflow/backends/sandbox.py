"""The sandbox around one agent: bubblewrap's command line, and whether bubblewrap works here.

An agent sees (``Spec``, turned into ``bwrap`` options by ``command``):

- the system, read-only: ``/usr``, ``/etc``, ``/opt`` and ``/bin``, ``/sbin``, ``/lib*`` (as
  the links or directories they are here); what in ``/etc`` only privileged accounts may
  read is hidden;
- its own ``/proc`` (a PID namespace of its own: no process of devflow's is there, nor
  their environments), ``/proc/sys`` read-only, a minimal ``/dev``, an empty ``/tmp``;
  the rest of its root is read-only and holds only what is listed here;
- read-only: the programs its backend runs, each with what it runs on (``exposure``), the
  run's prompts, the repository's common git directory, the persona's ``read_only``;
- writable: the worktree, its own HOME, the persona's ``writable``;
- never: the paths in ``hidden`` (devflow's home, workspace, database, config). Where a
  wider path would show one, it is masked, and the run's own pieces are bound over the
  mask. The worktree's ``.git`` file is bound read-only over itself, so the agent cannot
  point the worktree at another git directory.

Namespaces: PID, IPC, UTS, cgroup (where the kernel allows), and the network with
``network: none``. ``--die-with-parent`` and the PID namespace make the whole tree end
with the sandbox: when the agent's main process exits, PID 1 of the namespace exits and
the kernel kills everything left in it (``setsid`` daemons, double forks); when the
outer ``bwrap`` dies (killed, or its devflow process died) the namespace dies with it.
As root, every capability is dropped (bubblewrap keeps them for root otherwise), and
bubblewrap sets ``no_new_privs``, so nothing the agent executes gets them back.
"""

from __future__ import annotations

import functools
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from devflow import memo as memos
from devflow.backends.exposure import SYSTEM_DIRS, Exposure, covered, expose, inside
from devflow.definitions import Persona
from devflow.errors import Code, DevflowError
from devflow.settings import Settings

#: the merged-/usr links, recreated as links (the system's directories are
#: ``exposure.SYSTEM_DIRS``)
SYSTEM_LINKS: Final = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_PROBE_TIMEOUT: Final = 10.0
#: what decides whether this account may make the namespaces a sandbox needs, besides
#: bwrap itself: the boot, and the switches distributions use to restrict them
_NAMESPACE_SWITCHES: Final = (
    "/proc/sys/kernel/random/boot_id", "/proc/sys/kernel/unprivileged_userns_clone",
    "/proc/sys/user/max_user_namespaces",
    "/proc/sys/kernel/apparmor_restrict_unprivileged_userns")
_MAX_HOPS: Final = 40


@dataclass(frozen=True, slots=True)
class Probe:
    """What ``bwrap`` is here: its path and version, or why it cannot be used."""

    path: str | None
    version: str | None = None
    reason: str = ""

    @property
    def works(self) -> bool:
        return self.path is not None and not self.reason


@dataclass(frozen=True, slots=True)
class Spec:
    """What one agent may see and write."""

    worktree: Path
    home: Path
    #: programs and files the backend runs or reads (each shown with what it runs on)
    tools: tuple[Path, ...] = ()
    #: the persona's paths, shown read-only, then writable, when they exist
    read_only: tuple[Path, ...] = ()
    writable: tuple[Path, ...] = ()
    #: read-only whatever else is writable: the run's prompts, the common git directory
    locked: tuple[Path, ...] = ()
    #: never visible, whatever else is
    hidden: tuple[Path, ...] = ()
    network: str = "host"
    #: the agent's PATH, to find what ``#!/usr/bin/env NAME`` runs
    path_env: str = os.defpath


# -- is bubblewrap here, and does it work ------------------------------------------------
#: where each name was found on each PATH: an attempt asks, and searching PATH was half
#: of the time its plan took; only what was found is kept, so an install is seen at once
_FOUND: dict[tuple[str, str | None], str] = {}
#: where a bwrap that works is remembered between processes (``configure``)
_memo: list[memos.Memo] = []


def configure(*, memo: memos.Memo | None = None) -> None:
    _memo[:] = [memo] if memo is not None else []


def probe(bwrap: str = "bwrap") -> Probe:
    """Whether ``bwrap`` (a name on PATH or a path) runs a sandbox here: cached per program.

    Trying costs two processes and a sandbox (a tenth of a second, more on a busy
    machine), so a bwrap that works is remembered between processes while it is the same
    file, this account, the same boot and the same namespace switches of the kernel
    (``_NAMESPACE_SWITCHES``); one that does not is tried again by every process, so it
    is used as soon as it works."""
    if sys.platform != "linux":
        return Probe(None, reason=f"bubblewrap runs on Linux only (this is {sys.platform})")
    where = (bwrap, os.environ.get("PATH"))
    path = _FOUND.get(where)
    stamp = memos.file_stamp(path) if path else None
    if stamp is None:  # not looked for yet, or gone since it was found
        path = shutil.which(bwrap)
        stamp = memos.file_stamp(path) if path else None
    if path is None or stamp is None:
        _FOUND.pop(where, None)
        return Probe(None, reason=f"{bwrap!r} is not installed (Debian and Ubuntu: "
                                  f"apt-get install bubblewrap)")
    _FOUND[where] = path
    key = memos.key("bwrap-works", stamp, str(os.geteuid()),
                    *map(_read, _NAMESPACE_SWITCHES)) if _memo else None
    known = _memo[0].get(key) if key else None
    if isinstance(known, dict):
        return Probe(path, known.get("version"))
    found = _probe(path, stamp)
    if key and found.works:
        _memo[0].put(key, {"version": found.version})
        _memo[0].save()
    return found


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return "-"


@functools.cache
def _probe(path: str, _stamp: str | None) -> Probe:
    try:
        version = subprocess.run([path, "--version"], capture_output=True, text=True,
                                 timeout=_PROBE_TIMEOUT, check=False).stdout.strip() or None
        with tempfile.TemporaryDirectory(prefix="devflow-bwrap-") as scratch:
            here = Path(scratch)
            trial = subprocess.run(
                [*command(Spec(worktree=here, home=here), path), "true"], capture_output=True,
                text=True, timeout=_PROBE_TIMEOUT, check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        return Probe(path, reason=f"{path} could not be run: {exc}")
    if trial.returncode != 0:
        said = (trial.stderr.strip().splitlines() or [f"exit {trial.returncode}"])[-1]
        return Probe(path, version, reason=f"{path} cannot make a sandbox here: {said[:300]}")
    return Probe(path, version)


# -- the command line --------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Host:
    """What ``command`` reads of this machine for one spec, each time: the same facts give
    the same command, which is then remembered (``_command``)."""

    root: bool
    #: where /etc/resolv.conf leads when it is a link to something that exists
    resolv: Path | None
    exposure: Exposure
    #: for each of the spec's hidden paths: "dir", "file", or "" when it does not exist
    hidden: tuple[str, ...]
    #: whether the worktree's ``.git`` is a file (a linked worktree's)
    dot_git: bool


def command(spec: Spec, bwrap: str) -> list[str]:
    """``bwrap`` and its options for ``spec``, up to and including ``--``: the agent's argv
    follows. What the machine shows is read at every call (``_Host``; the system's
    directories and links once per process, as ``_etc_secrets``), the options built from
    it once per spec and facts: an attempt's sandbox is planned at every attempt."""
    host = _Host(os.geteuid() == 0, _resolv(), expose(spec.tools, spec.path_env),
                 tuple(_kind(h) for h in spec.hidden), (spec.worktree / ".git").is_file())
    return list(_command(spec, bwrap, host))


@functools.lru_cache(maxsize=64)
def _command(spec: Spec, bwrap: str, host: _Host) -> tuple[str, ...]:
    """Later mounts win over earlier ones, so the order is the policy: the system, the
    tools and the persona's paths; then what stays read-only whatever those made
    writable; then the masks over devflow's own files; then the run's own pieces."""
    argv = [bwrap, "--die-with-parent", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try"]
    if spec.network == "none":
        argv.append("--unshare-net")
    if host.root:
        argv += ["--cap-drop", "ALL"]
    system, system_bound = _system()
    argv += system
    bound = list(system_bound)  # what is visible so far, to know what the masks must cover
    if host.resolv is not None and not covered(host.resolv, bound):
        argv += ["--ro-bind", str(host.resolv), str(host.resolv)]
        bound.append(host.resolv)
    argv += ["--proc", "/proc", "--ro-bind-try", "/proc/sys", "/proc/sys",
             "--ro-bind-try", "/proc/sysrq-trigger", "/proc/sysrq-trigger",
             "--dev", "/dev", "--tmpfs", "/tmp"]  # noqa: S108 - the sandbox's own, empty
    exposure = host.exposure
    shown: list[tuple[str, Path]] = [("--ro-bind", p) for p in exposure.roots]
    shown += [("--ro-bind-try", p) for p in spec.read_only]
    shown += [("--bind-try", p) for p in spec.writable]
    shown += [("--ro-bind", p) for p in spec.locked]
    for flag, path in shown:
        argv += [flag, str(path), str(path)]
    bound += [path for _, path in shown]
    for link, target in exposure.links:
        if not covered(link, bound):
            argv += ["--symlink", target, str(link)]
    masks = [(h, kind) for h, kind in zip(spec.hidden, host.hidden, strict=True)
             if kind and covered(h, bound)]
    for hidden, kind in masks:
        argv += ["--tmpfs", str(hidden)] if kind == "dir" else \
            ["--ro-bind", "/dev/null", str(hidden)]
    # a tool the persona needs, or a piece of the run, inside a mask comes back over it;
    # a persona's own extra paths never do: they cannot show devflow's files again
    persona = {*spec.read_only, *spec.writable}
    for flag, path in shown:
        if path not in persona and any(inside(path, mask) and path != mask
                                       for mask, _ in masks):
            argv += [flag, str(path), str(path)]
    argv += ["--bind", str(spec.worktree), str(spec.worktree),
             "--bind", str(spec.home), str(spec.home)]
    if host.dot_git:
        dot_git = str(spec.worktree / ".git")
        argv += ["--ro-bind", dot_git, dot_git]
    # the sandbox's own root is read-only too: nothing lands outside what was bound
    return (*argv, "--remount-ro", "/", "--chdir", str(spec.worktree), "--")


def _kind(path: Path) -> str:
    """"dir", "file" (anything else that exists), or "" (links followed, as bwrap does)."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return ""
    return "dir" if stat.S_ISDIR(mode) else "file"


def _resolv() -> Path | None:
    resolv = Path("/etc/resolv.conf")
    return resolv.resolve() if resolv.is_symlink() and resolv.exists() else None


@functools.cache
def _system() -> tuple[tuple[str, ...], tuple[Path, ...]]:
    """The system's options, and what they show: read once per process (the layout of
    the root and what in /etc is private do not change under a running devflow)."""
    argv: list[str] = []
    bound: list[Path] = []
    for name in SYSTEM_DIRS:
        if os.path.isdir(name):
            argv += ["--ro-bind", name, name]
            bound.append(Path(name))
    for name in SYSTEM_LINKS:
        if os.path.islink(name):
            argv += ["--symlink", os.readlink(name), name]
        elif os.path.isdir(name):
            argv += ["--ro-bind", name, name]
            bound.append(Path(name))
    for secret in _etc_secrets():
        argv += ["--tmpfs", secret] if os.path.isdir(secret) else \
            ["--ro-bind", "/dev/null", secret]
    return tuple(argv), tuple(bound)


@functools.cache
def _etc_secrets() -> tuple[str, ...]:
    """What in /etc others may not read (shadow files, private keys): hidden from agents,
    which run as the account devflow runs as, root included."""
    found: list[str] = []
    pending = ["/etc"]
    while pending:  # scandir: a link is told by its entry's type, one lstat for the rest
        try:
            with os.scandir(pending.pop()) as entries:
                listed = list(entries)
        except OSError:
            continue
        for entry in listed:
            try:
                if entry.is_symlink():
                    continue
                mode = entry.stat(follow_symlinks=False).st_mode
            except OSError:
                continue
            if not mode & 0o004:
                found.append(entry.path)  # hidden whole: what is inside is not looked at
            elif stat.S_ISDIR(mode):
                pending.append(entry.path)
    return tuple(sorted(found))


# -- whether an agent runs in one --------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Plan:
    """How a persona's agent runs here: in bubblewrap (``bwrap`` is its path) or not, and
    a line saying so for the binding, the events and ``backends list``."""

    bwrap: str | None
    label: str

    @property
    def sandboxed(self) -> bool:
        return self.bwrap is not None


def plan(persona: Persona, settings: Settings) -> Plan:
    """The sandbox of ``persona``'s agent on this machine: ``sandbox_unavailable`` where it
    needs bubblewrap, bubblewrap cannot run here and ``allow_unsandboxed`` is not set."""
    box = persona.sandbox
    if not box.enabled:
        return Plan(None, "none: the persona says `sandbox: none`")
    found = probe(settings.bwrap)
    if found.works:
        return Plan(found.path, f"{found.version or 'bubblewrap'}, network {box.network}")
    if settings.allow_unsandboxed:
        return Plan(None, f"none: {found.reason}; allowed by allow_unsandboxed")
    raise DevflowError(
        Code.SANDBOX_UNAVAILABLE,
        f"persona {persona.ref} runs its agent in a sandbox, and none can be made here: "
        f"{found.reason}",
        hint="install bubblewrap (apt-get install bubblewrap); or, knowing the agent then "
             "sees all your account can, set allow_unsandboxed: true in config.yaml "
             "(DEVFLOW_ALLOW_UNSANDBOXED=1) or give the persona `sandbox: none`",
        persona=persona.ref)
