"""A run's worktree as devflow made it, never as its ``.git`` file says (DESIGN.md §3.6).

``git worktree add`` registers a worktree in the repository's common git directory,
``<common>/worktrees/<name>/`` (git picks the name: ``main``, ``main1``, …), whose
``gitdir`` file names the worktree's ``.git`` file. The agent can write its worktree,
``.git`` file included, but not the common directory (its sandbox mounts it
read-only). So devflow finds a run's admin directory from the ``gitdir`` files, names
it in every git command it runs there (``--git-dir`` and ``--work-tree``), and before
anything that writes checks what an agent could have changed:

- the ``.git`` file still says ``gitdir: <admin directory>``;
- HEAD is the symbolic ref ``refs/heads/<the run's branch>``;
- the run's branch is at the run's last checkpoint (an agent without the sandbox can
  move it; with it, the refs are read-only).

The checks read the files git keeps, without a git process (they are on the engine's
hot path); a ref kept where devflow does not read it (reftable) is asked of git.
``restore`` puts all three back, and touches no other ref.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from devflow import atomic, git

_SHA: Final = re.compile(r"[0-9a-f]{40}([0-9a-f]{24})?")


@dataclass(frozen=True, slots=True)
class Tree:
    """A run's worktree: its directory, git's directory for it, the repository's common
    git directory, and the run's branch (HEAD must be ``refs/heads/<branch>``)."""

    path: Path
    admin: Path
    common: Path
    branch: str

    @property
    def ref(self) -> str:
        return f"refs/heads/{self.branch}"

    def run(self, args: Sequence[str], *, check: bool = True,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """``git ARGS`` on this worktree, its git directory and work tree named."""
        return git.run(args, self.path, git_dir=self.admin, work_tree=self.path, check=check,
                       env=env)

    def out(self, args: Sequence[str], *, check: bool = True,
            env: Mapping[str, str] | None = None) -> str:
        return self.run(args, check=check, env=env).stdout.strip()


#: worktree directory -> its admin directory, checked again on each use (one file read)
_ADMINS: dict[Path, Path] = {}


def find(common: Path, path: Path, branch: str) -> Tree | None:
    """The worktree at ``path`` as git registered it in ``common``, or None when git has
    no worktree there (never made, removed, or pruned)."""
    where = path.resolve()
    admin = _ADMINS.get(where)
    if admin is None or not _registers(admin, where):
        admin = None
        with contextlib.suppress(OSError):
            admin = next((d for d in sorted((common / "worktrees").iterdir())
                          if _registers(d, where)), None)
        if admin is None:
            _ADMINS.pop(where, None)
            return None
        _ADMINS[where] = admin
    return Tree(path, admin, common, branch)


def _registers(admin: Path, where: Path) -> bool:
    """Whether git's ``admin`` directory is the one of the worktree at ``where``."""
    try:
        text = (admin / "gitdir").read_text(encoding="utf-8").strip()
    except OSError:
        return False
    dot_git = Path(os.path.normpath(admin / text))  # relative to it when git wrote it so
    return dot_git.name == ".git" and dot_git.parent.resolve() == where


# -- what an agent could have changed -----------------------------------------------------
def tampering(tree: Tree, tip: str | None) -> list[str]:
    """What differs from how devflow left the worktree's git: its ``.git`` file, HEAD, and
    (when ``tip`` is given) where the run's branch points. Empty when nothing does."""
    found = []
    if (dot_git := _dot_git_problem(tree)) is not None:
        found.append(dot_git)
    head = _head(tree)
    if head != f"ref: {tree.ref}":
        shown = "missing" if head is None else repr(head[:120])
        found.append(f"HEAD was changed to {shown}; devflow keeps it on {tree.ref}")
    if tip is not None:
        now = branch_tip(tree)
        if now != tip:
            where = "deleted" if now is None else f"moved to {now[:12]}"
            found.append(f"the run's branch {tree.branch} was {where}; its last checkpoint "
                         f"is {tip[:12]}")
    return found


def _dot_git_problem(tree: Tree) -> str | None:
    dot_git = tree.path / ".git"
    if dot_git.is_symlink() or dot_git.is_dir():
        kind = "a symbolic link" if dot_git.is_symlink() else "a directory"
        return f"the worktree's .git file was replaced by {kind}"
    try:
        text = dot_git.read_text(encoding="utf-8", errors="replace").strip()
    except FileNotFoundError:
        return "the worktree's .git file was deleted"
    except OSError as exc:
        return f"the worktree's .git file cannot be read ({exc.strerror})"
    named = text.removeprefix("gitdir:").strip() if text.startswith("gitdir:") else None
    if named is not None and (tree.path / named).resolve() == tree.admin.resolve():
        return None
    return (f"the worktree's .git file was changed to say {text[:200]!r}; devflow made it "
            f"say 'gitdir: {tree.admin}'")


def _head(tree: Tree) -> str | None:
    """What HEAD says (``ref: refs/heads/…``, or a sha when detached), None when it is
    missing; from its file, or from git when the refs are kept in a reftable."""
    if not (tree.common / "reftable").exists():
        text = _read(tree.admin / "HEAD")
        return None if text is None else text.strip()
    result = git.run(["symbolic-ref", "--quiet", "HEAD"], tree.path, git_dir=tree.admin,
                     check=False)
    if result.returncode == 0:
        return f"ref: {result.stdout.strip()}"
    return git.run(["rev-parse", "--verify", "--quiet", "HEAD"], tree.path,
                   git_dir=tree.admin, check=False).stdout.strip() or None


def branch_tip(tree: Tree) -> str | None:
    """The commit the run's branch points at (None when it does not exist), read from
    the ref files; asked of git when they hold it in a form this does not read."""
    loose = _read(tree.common / tree.ref)
    if loose is not None:
        if _SHA.fullmatch(loose.strip()):
            return loose.strip()
    elif not (tree.common / "reftable").exists():
        for line in (_read(tree.common / "packed-refs") or "").splitlines():
            sha, _, name = line.partition(" ")
            if name == tree.ref:
                if _SHA.fullmatch(sha):
                    return sha
                break
        else:
            return None
    result = git.run(["rev-parse", "--verify", "--quiet", "--end-of-options", tree.ref],
                     tree.path, git_dir=tree.admin, check=False)
    return result.stdout.strip() if result.returncode == 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


# -- putting it back ----------------------------------------------------------------------
def restore(tree: Tree, tip: str | None) -> list[str]:
    """Put the ``.git`` file, HEAD and (when ``tip`` is given) the run's branch back as
    devflow left them; returns what was found changed. No other ref is touched."""
    found = tampering(tree, tip)
    if not found:
        return found
    if _dot_git_problem(tree) is not None:
        _write_dot_git(tree)
    why = "devflow: put back what an agent changed"
    if _head(tree) != f"ref: {tree.ref}":
        if (tree.common / "reftable").exists():
            tree.run(["symbolic-ref", "-m", why, "HEAD", tree.ref])
        else:  # the file itself: git takes no directory without a valid HEAD for its own
            _write_file(tree.admin / "HEAD", f"ref: {tree.ref}\n")
    if tip is not None and branch_tip(tree) != tip:
        tree.run(["update-ref", "-m", why, "--no-deref", tree.ref, tip])
    return found


def _write_dot_git(tree: Tree) -> None:
    dot_git = tree.path / ".git"
    if dot_git.is_dir() and not dot_git.is_symlink():
        shutil.rmtree(dot_git)  # a repository the agent made in place of the file
    _write_file(dot_git, f"gitdir: {tree.admin}\n")


def _write_file(path: Path, text: str) -> None:
    """Replace ``path`` (a symbolic link itself, not its target) with ``text``, atomically."""
    atomic.write_text(path, text)

