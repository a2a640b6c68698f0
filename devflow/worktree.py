"""Git worktrees of runs: create, re-create, checkpoint, evidence, summary, remove.

Every git call goes through ``devflow.git`` (scrubbed environment, no hooks, no
filters). ``git worktree add`` on one repository is serialized across processes by a
lock file in the repository's git directory, and retried while another git holds
``config.lock`` or ``index.lock``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from devflow import git
from devflow.errors import Code, DevflowError

if TYPE_CHECKING:
    import filelock

_LOCK_RETRIES: Final = 20


@dataclass(frozen=True, slots=True)
class Commit:
    sha: str
    subject: str


@dataclass(frozen=True, slots=True)
class FileStat:
    path: str
    added: int | None
    deleted: int | None


def locate(path: Path, base: str) -> tuple[Path, str]:
    """The top of the git repository at ``path`` and the commit ``base`` names there (a
    branch, remote branch or tag): ``not_a_git_repo`` or ``base_branch_not_found``.

    One git process: it also says where the repository's common git directory is, which
    the worktree lock needs next.
    """
    if not path.is_dir():
        raise DevflowError(Code.NOT_A_GIT_REPO, f"{path} is not a directory",
                           hint="pass --repo the path of a git repository")
    verify = ["--verify", "--quiet", "--end-of-options", f"{base}^{{commit}}"]
    if "\n" in str(path):  # git prints paths unquoted, a line each: one question at a time
        top, common = (_rev_parse(path, [question]) for question in
                       ("--show-toplevel", "--git-common-dir"))
        sha = _rev_parse(path, verify) if top is not None else None
    else:
        result = git.run(["rev-parse", "--show-toplevel", "--git-common-dir", *verify], path,
                         check=False)
        lines = result.stdout.splitlines() if result.returncode in (0, 1) else []
        top, common = (lines[0], lines[1]) if len(lines) >= 2 else (None, None)
        sha = lines[2] if result.returncode == 0 and len(lines) == 3 else None
    if not top or not common:  # not a repository (or a bare one): git printed nothing
        raise DevflowError(Code.NOT_A_GIT_REPO, f"{path} is not a git repository",
                           hint="pass --repo the path of a git repository (`git init` makes one)")
    repo = Path(top).resolve()
    if not sha or base.startswith("-"):
        branches = git.run(["for-each-ref", "--format=%(refname:short)", "--count=10",
                            "refs/heads"], repo, check=False).stdout.split()
        raise DevflowError(Code.BASE_BRANCH_NOT_FOUND, f"{repo} has no branch {base!r}",
                           hint=f"branches there: {', '.join(branches) or 'none (no commit yet?)'}",
                           base=base)
    _COMMON_DIRS[repo] = (path / common).resolve()
    return repo, sha


def _rev_parse(path: Path, args: list[str]) -> str | None:
    """What ``git rev-parse ARGS`` prints in ``path`` (one value, newlines and all), or None."""
    result = git.run(["rev-parse", *args], path, check=False)
    return result.stdout.removesuffix("\n") if result.returncode == 0 else None


def branch_exists(repo: Path, branch: str) -> bool:
    return git.run(["rev-parse", "--verify", "--quiet", f"refs/heads/{branch}"], repo,
                   check=False).returncode == 0


#: repository top -> its common git directory (shared by its worktrees; it never moves);
#: a process meets few repositories, a worker at most those of its runs
_COMMON_DIRS: dict[Path, Path] = {}


def _common_dir(repo: Path) -> Path:
    if (known := _COMMON_DIRS.get(repo)) is None:
        known = _COMMON_DIRS[repo] = (repo / git.out(["rev-parse", "--git-common-dir"],
                                                     repo)).resolve()
    return known


def _lock(repo: Path) -> filelock.FileLock:
    import filelock  # noqa: PLC0415 - only where worktrees are made (a read needs none)
    return filelock.FileLock(str(_common_dir(repo) / "devflow-worktree.lock"), timeout=300)


def add(repo: Path, path: Path, branch: str, start: str) -> bool:
    """``git worktree add`` at ``path``: a new ``branch`` from ``start``, or ``branch`` itself
    when it exists (re-creating a run's worktree). Returns whether ``branch`` existed.

    The common case costs one git process: what would need more (a branch that exists, a
    stale registration of ``path``, another git holding a lock) is learnt from git's
    refusal, in the C locale ``git.run`` sets.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    existed, pruned = False, False
    with _lock(repo):
        if path.exists() and not any(path.iterdir()):
            path.rmdir()
        attempt = 0
        while True:
            args = (["worktree", "add", "--quiet", str(path), branch] if existed else
                    ["worktree", "add", "--quiet", "-b", branch, str(path), start])
            result = git.run(args, repo, check=False)
            if result.returncode == 0:
                return existed
            err = result.stderr
            if not existed and f"a branch named '{branch}' already exists" in err:
                existed = True
                continue
            if not existed and branch_exists(repo, branch):
                # git made the branch before it failed: do not leave it in the user's repo
                git.run(["branch", "-D", branch], repo, check=False)
            if "missing but already registered worktree" in err and not pruned:
                git.run(["worktree", "prune"], repo)  # its directory was deleted by hand
                pruned = True
                continue
            attempt += 1
            if ".lock" in err and attempt < _LOCK_RETRIES:
                time.sleep(0.05 * attempt)
                continue
            raise DevflowError(Code.WORKTREE_FAILED,
                               f"git worktree add {path} failed: {err.strip()}",
                               hint="see git's message; `git worktree list` in the repository "
                                    "shows what is registered")


def copy_included(repo: Path, target: Path) -> list[str]:
    """Copy the untracked files that ``.worktreeinclude`` names from ``repo`` into ``target``.

    ``.worktreeinclude`` holds gitignore-style patterns (``.env``, ``.claude/``); only
    files git does not track are copied (tracked ones are in the worktree already).
    """
    spec_file = repo / ".worktreeinclude"
    if not spec_file.is_file():
        return []
    lines = spec_file.read_text(encoding="utf-8", errors="replace").splitlines()
    import pathspec  # noqa: PLC0415 - as filelock above
    spec = pathspec.GitIgnoreSpec.from_lines(lines)
    nested = any("/" in line.strip().rstrip("/") for line in lines
                 if line.strip() and not line.startswith("#"))
    listed = git.out(["ls-files", "--others", "--directory", "--no-empty-directory", "-z"],
                     repo).split("\0")
    copied: list[str] = []
    for entry in filter(None, listed):
        source = repo / entry
        if spec.match_file(entry):
            _copy(source, target / entry)
            copied.append(entry)
        elif entry.endswith("/") and nested:
            for inner in sorted(source.rglob("*")):
                rel = inner.relative_to(repo).as_posix()
                if inner.is_file() and spec.match_file(rel):
                    _copy(inner, target / rel)
                    copied.append(rel)
    return copied


def _copy(source: Path, destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, destination, symlinks=True, dirs_exist_ok=True)
    else:
        shutil.copy2(source, destination, follow_symlinks=False)


def remove(repo: Path, path: Path, *, branch: str | None = None) -> None:
    with _lock(repo):
        if path.exists():
            result = git.run(["worktree", "remove", "--force", "--force", str(path)], repo,
                             check=False)
            if result.returncode != 0:
                shutil.rmtree(path, ignore_errors=True)
        git.run(["worktree", "prune"], repo, check=False)
        if branch and branch_exists(repo, branch):
            git.run(["branch", "-D", branch], repo)


def head(worktree: Path) -> str:
    return git.out(["rev-parse", "HEAD"], worktree)


def head_and_tree(worktree: Path) -> tuple[str, str]:
    """HEAD and its tree, in one git call (the worktree's tree when nothing differs from
    HEAD, as right after ``checkpoint``)."""
    head_sha, tree = git.out(["rev-parse", "HEAD", "HEAD^{tree}"], worktree).split()
    return head_sha, tree


def rev(repo: Path, name: str) -> str:
    return git.out(["rev-parse", "--verify", "--end-of-options", name], repo)


def blob(repo: Path, commit: str, path: str, max_bytes: int) -> bytes | None:
    """The bytes of ``path`` at ``commit`` (None when it is not there or too large)."""
    spec = f"{commit}:{path}"
    size = git.run(["cat-file", "-s", spec], repo, check=False)
    if size.returncode != 0 or int(size.stdout.strip() or 0) > max_bytes:
        return None
    result = subprocess.run(["git", *git.config_args(repo), "cat-file", "blob", spec], cwd=repo,
                            capture_output=True, env=git.clean_env(), check=False, timeout=60)
    return result.stdout if result.returncode == 0 else None


def head_and_clean(worktree: Path) -> tuple[str, bool]:
    """HEAD and whether nothing differs from it (untracked files count), in one git call."""
    text = git.out(["status", "--porcelain=v2", "--branch", "--untracked-files=all"], worktree)
    head, clean = "", True
    for line in text.splitlines():
        if line.startswith("# branch.oid "):
            head = line.split()[2]
        elif not line.startswith("#"):
            clean = False
    return head, clean


def is_clean(worktree: Path) -> bool:
    return not git.out(["status", "--porcelain", "--untracked-files=all"], worktree)


def tree_sha(worktree: Path) -> str:
    """The tree of the worktree as it is on disk, tracked and untracked files included."""
    if is_clean(worktree):
        return git.out(["rev-parse", "HEAD^{tree}"], worktree)
    with tempfile.TemporaryDirectory(prefix="devflow-index-") as tmp:
        index = Path(tmp) / "index"
        real = Path(git.out(["rev-parse", "--git-path", "index"], worktree))
        if not real.is_absolute():
            real = worktree / real
        if real.exists():
            shutil.copyfile(real, index)
        env = {"GIT_INDEX_FILE": str(index)}
        git.run(["add", "--all", "--", "."], worktree, env=env)
        return git.out(["write-tree"], worktree, env=env)


def checkpoint(worktree: Path, message: str) -> str | None:
    """Commit everything in the worktree as devflow; None when there is nothing to commit.

    Idempotent: when HEAD already is this checkpoint and nothing changed since, its sha
    is returned, so a driver that crashed after committing does not commit twice.
    """
    git.run(["add", "--all", "--", "."], worktree)
    args = ["commit", "--no-verify", "--quiet", "--no-gpg-sign", "-m", message]
    committed = git.run(args, worktree, env=git.AUTHOR, check=False)
    if committed.returncode != 0:  # nothing to commit, or a real failure
        if not is_clean(worktree):
            raise git.GitError(args, worktree, committed)
        subject = git.out(["log", "-1", "--format=%s"], worktree, check=False)
        return head(worktree) if subject == message else None
    return head(worktree)


def reset(worktree: Path, sha: str) -> None:
    """Put the worktree back at ``sha``, dropping what an interrupted attempt left."""
    git.run(["reset", "--hard", "--quiet", sha], worktree)
    git.run(["clean", "-fd", "--quiet"], worktree)


def commits(repo: Path, base_sha: str, branch: str) -> list[Commit]:
    text = git.out(["log", "--format=%H%x1f%s", f"{base_sha}..refs/heads/{branch}", "--"], repo,
                   check=False)
    return [Commit(*line.split("\x1f", 1)) for line in text.splitlines() if "\x1f" in line]


def diffstat(repo: Path, base_sha: str, branch: str) -> list[FileStat]:
    text = git.out(["diff", "--numstat", "--no-ext-diff", "--no-textconv", "--no-renames",
                    base_sha, f"refs/heads/{branch}", "--"], repo, check=False)
    stats = []
    for line in text.splitlines():
        added, deleted, path = line.split("\t", 2)
        stats.append(FileStat(path, None if added == "-" else int(added),
                              None if deleted == "-" else int(deleted)))
    return stats


def disk_usage(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += (Path(root) / name).lstat().st_size
    return total
