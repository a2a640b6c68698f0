"""Git worktrees of runs: create, re-create, checkpoint, evidence, summary, remove.

Every git call goes through ``devflow.git`` (scrubbed environment, no hooks, no
filters). Those on a run's worktree name its git directory and work tree
(``runtree.Tree``); those on the repository name its common git directory. Nothing
that writes runs before ``runtree`` found the worktree's ``.git``, HEAD and branch as
devflow left them, so devflow's git only ever moves the run's own branch.

``git worktree add`` on one repository is serialized across processes by a lock file
in the repository's git directory, and retried while another git holds
``config.lock`` or ``index.lock``.

A git lock that stops devflow's git on a run's worktree (``index.lock`` in its admin
directory, a ``.lock`` under ``refs/heads/devflow/<run>/``) and that no live process
holds was left by a git that was killed: it is removed, said in the list the caller
records as ``git.lock_removed`` events, and git runs again. A lock a live process
holds, or one elsewhere, is a ``machine.MachineFault`` naming it. Before a reset drops
what an interrupted attempt left, ``salvage`` commits it to
``refs/heads/devflow/<run>/salvage-<n>``.
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
from typing import TYPE_CHECKING, Any, Final

from devflow import git, gitlocks, machine, model, runtree
from devflow.errors import Code, DevflowError
from devflow.runtree import Tree

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


def current_branch(path: Path) -> str:
    """The branch checked out in the repository at ``path``, a run's base when none is
    named: ``invalid_input`` when HEAD is detached; what ``locate`` says of a path that
    is no repository."""
    if not path.is_dir():
        locate(path, "HEAD")  # says what is wrong with the path
    result = git.run(["symbolic-ref", "--quiet", "--short", "HEAD"], path, check=False)
    if result.returncode == 0 and result.stdout.strip():
        return result.stdout.strip()
    if result.returncode == 1:  # --quiet: HEAD is not a symbolic ref
        raise DevflowError(Code.INVALID_INPUT, f"HEAD of {path} is detached: there is no "
                           "current branch to start from", hint="pass --base BRANCH")
    locate(path, "HEAD")  # says what is wrong with the repository
    raise git.GitError(["symbolic-ref", "HEAD"], path, result)


def top_of(path: Path) -> str:
    """The repository a run started at ``path`` records: the top of the one containing
    ``path``; a path that is no repository (any more) stands for itself."""
    resolved = path.expanduser().resolve()
    if resolved.is_dir():
        found = git.run(["rev-parse", "--show-toplevel"], resolved, check=False)
        if found.returncode == 0 and found.stdout.strip():
            return str(Path(found.stdout.rstrip("\n")).resolve())
    return str(resolved)


def _rev_parse(path: Path, args: list[str]) -> str | None:
    """What ``git rev-parse ARGS`` prints in ``path`` (one value, newlines and all), or None."""
    result = git.run(["rev-parse", *args], path, check=False)
    return result.stdout.removesuffix("\n") if result.returncode == 0 else None


def branch_exists(repo: Path, branch: str) -> bool:
    return _git(repo, ["rev-parse", "--verify", "--quiet", f"refs/heads/{branch}"],
                check=False).returncode == 0


def _git(repo: Path, args: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``git ARGS`` on the repository's common git directory (its refs and objects), named."""
    return git.run(args, repo, git_dir=_common_dir(repo), check=check)


#: repository top -> its common git directory (shared by its worktrees; it never moves);
#: a process meets few repositories, a worker at most those of its runs
_COMMON_DIRS: dict[Path, Path] = {}


def _common_dir(repo: Path) -> Path:
    """``repo``'s common git directory: read from its ``.git`` (a repository's top, as a
    run records it, has one), else asked of git."""
    if (known := _COMMON_DIRS.get(repo)) is None:
        known = git.common_dir_at(repo) or (
            repo / git.out(["rev-parse", "--git-common-dir"], repo)).resolve()
        _COMMON_DIRS[repo] = known
    return known


def find(repo: Path, path: Path, branch: str) -> Tree | None:
    """The worktree at ``path`` as git registered it in ``repo``, or None (not made yet,
    removed, pruned, its directory deleted, or the repository not on this machine)."""
    if not repo.is_dir() or not path.is_dir():
        return None
    return runtree.find(_common_dir(repo), path, branch)


def of_run(run: model.Run) -> Tree:
    """The run's worktree as git registered it; ``worktree_failed`` when there is none."""
    found = find(Path(run.repo), Path(run.worktree), run.branch)
    if found is None:
        raise DevflowError(Code.WORKTREE_FAILED,
                           f"{run.worktree} is not a worktree of {run.repo} (run {run.id})",
                           hint="`devflow run drive` re-creates a missing worktree; "
                                "`git worktree list` in the repository shows what is there")
    return found


def ready(repo: Path, path: Path, branch: str,
          removed: list[dict[str, Any]] | None = None) -> bool:
    """Whether the worktree at ``path`` is there: registered with git, its directory
    present, checked out (a checkout a crash interrupted is done now; stale locks it
    removed on the way are added to ``removed``)."""
    tree = find(repo, path, branch)
    if tree is None:
        return False
    check_out_if_interrupted(tree, removed)
    return True


def check_out_if_interrupted(tree: Tree, removed: list[dict[str, Any]] | None = None) -> None:
    """Finish a check-out that a crash or a fault of the machine cut short (the worktree
    has no index yet): its files as the run's branch has them, before anyone reads or
    commits them (a half-made worktree would commit the missing files as deleted)."""
    if not (tree.admin / "index").exists():
        _check_out(tree, removed)


def common_dir(repo: Path) -> Path:
    """The repository's common git directory: its refs, objects and config."""
    return _common_dir(repo)


def _lock(repo: Path) -> filelock.FileLock:
    import filelock  # noqa: PLC0415 - only where worktrees are made (a read needs none)
    return filelock.FileLock(str(_common_dir(repo) / "devflow-worktree.lock"), timeout=300)


def add(repo: Path, path: Path, branch: str, start: str,
        removed: list[dict[str, Any]] | None = None) -> bool:
    """``git worktree add`` at ``path``: a new ``branch`` from ``start``, or ``branch`` itself
    when it exists (re-creating a run's worktree). Returns whether ``branch`` existed.

    The common case costs two git processes: the worktree is added without a checkout,
    then checked out by a command that names its git directory (so the filters git
    would see for it are those neutralized). What would need more (a branch that
    exists, a stale registration of ``path``, another git holding a lock) is learnt
    from git's refusal, in the C locale ``git.run`` sets.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    existed = _add(repo, path, branch, start)
    tree = find(repo, path, branch)
    if tree is None:
        raise DevflowError(Code.WORKTREE_FAILED, f"git worktree add {path} registered nothing",
                           hint="`git worktree list` in the repository shows what is there")
    _check_out(tree, removed)
    return existed


def _check_out(tree: Tree, removed: list[dict[str, Any]] | None = None) -> None:
    runtree.restore(tree, None)  # HEAD must name the run's branch before a reset reads it
    run_unlocked(tree, ["reset", "--hard", "--quiet"], [] if removed is None else removed)


def _add(repo: Path, path: Path, branch: str, start: str) -> bool:
    existed, pruned = False, False
    with _lock(repo):
        if path.exists() and not any(path.iterdir()):
            path.rmdir()
        attempt = 0
        while True:
            args = ["worktree", "add", "--quiet", "--no-checkout",
                    *([str(path), branch] if existed else ["-b", branch, str(path), start])]
            result = _git(repo, args, check=False)
            if result.returncode == 0:
                return existed
            err = result.stderr
            if not existed and f"a branch named '{branch}' already exists" in err:
                existed = True
                continue
            if not existed and branch_exists(repo, branch):
                # git made the branch before it failed: do not leave it in the user's repo
                _git(repo, ["branch", "-D", branch], check=False)
            if "missing but already registered worktree" in err and not pruned:
                _git(repo, ["worktree", "prune"])  # its directory was deleted by hand
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
    """Remove the worktree at ``path`` (and ``branch``); a worktree whose repository is
    gone from this machine is only a directory, deleted as such."""
    if not repo.is_dir():
        shutil.rmtree(path, ignore_errors=True)
        return
    with _lock(repo):
        if path.exists():
            result = _git(repo, ["worktree", "remove", "--force", "--force", str(path)],
                          check=False)
            if result.returncode != 0:
                shutil.rmtree(path, ignore_errors=True)
        _git(repo, ["worktree", "prune"], check=False)
        if branch and branch_exists(repo, branch):
            _git(repo, ["branch", "-D", branch])


def salvage_refs(repo: Path, branch: str) -> list[str]:
    """The run's salvage refs (``salvage`` makes them), oldest first."""
    prefix = f"refs/heads/{Path(branch).parent.as_posix()}/salvage-"
    found = _git(repo, ["for-each-ref", "--format=%(refname)", prefix.rsplit("/", 1)[0]],
                 check=False).stdout.split()
    refs = [r for r in found if r.startswith(prefix) and r.removeprefix(prefix).isdigit()]
    return sorted(refs, key=lambda r: int(r.removeprefix(prefix)))


def delete_refs(repo: Path, refs: list[str]) -> None:
    """Delete the refs (a prune's salvage refs) in one git process."""
    if not refs:
        return
    with _lock(repo):
        commands = "".join(f"delete {ref}\n" for ref in refs)
        git.run(["update-ref", "--stdin"], repo, git_dir=_common_dir(repo), input_text=commands)


def unsaved(tree: Tree) -> tuple[list[str], list[str]]:
    """What removing the worktree would lose: the files that differ from HEAD (staged or
    not) and the untracked files. Ignored files are not counted (git status hides them)."""
    text = tree.run(["status", "--porcelain=v1", "-z", "--untracked-files=all",
                     "--no-renames"]).stdout
    changed: list[str] = []
    untracked: list[str] = []
    for entry in filter(None, text.split("\0")):
        (untracked if entry.startswith("??") else changed).append(entry[3:])
    return changed, untracked


def head(tree: Tree) -> str:
    return tree.out(["rev-parse", "HEAD"])


def head_and_tree(tree: Tree) -> tuple[str, str]:
    """HEAD and its tree, in one git call (the worktree's tree when nothing differs from
    HEAD, as right after ``checkpoint``)."""
    head_sha, tree_id = tree.out(["rev-parse", "HEAD", "HEAD^{tree}"]).split()
    return head_sha, tree_id


def rev(repo: Path, name: str) -> str:
    return _git(repo, ["rev-parse", "--verify", "--end-of-options", name]).stdout.strip()


def blob(repo: Path, commit: str, path: str, max_bytes: int) -> bytes | None:
    """The bytes of ``path`` at ``commit`` (None when it is not there or too large)."""
    spec = f"{commit}:{path}"
    size = _git(repo, ["cat-file", "-s", spec], check=False)
    if size.returncode != 0 or int(size.stdout.strip() or 0) > max_bytes:
        return None
    argv = git.command(["cat-file", "blob", spec], repo, git_dir=_common_dir(repo))
    result = subprocess.run(argv, cwd=repo, capture_output=True, env=git.clean_env(),
                            check=False, timeout=60)
    return result.stdout if result.returncode == 0 else None


def head_and_clean(tree: Tree) -> tuple[str, bool]:
    """HEAD and whether nothing differs from it (untracked files count), in one git call."""
    text = tree.out(["status", "--porcelain=v2", "--branch", "--untracked-files=all"])
    head, clean = "", True
    for line in text.splitlines():
        if line.startswith("# branch.oid "):
            head = line.split()[2]
        elif not line.startswith("#"):
            clean = False
    return head, clean


def is_clean(tree: Tree) -> bool:
    return not tree.out(["status", "--porcelain", "--untracked-files=all"])


def tree_sha(tree: Tree) -> str:
    """The tree of the worktree as it is on disk, tracked and untracked files included."""
    if is_clean(tree):
        return tree.out(["rev-parse", "HEAD^{tree}"])
    with tempfile.TemporaryDirectory(prefix="devflow-index-") as tmp:
        index = Path(tmp) / "index"
        if (tree.admin / "index").exists():
            shutil.copyfile(tree.admin / "index", index)
        env = {"GIT_INDEX_FILE": str(index)}
        tree.run(["add", "--all", "--", "."], env=env)
        return tree.out(["write-tree"], env=env)


def guard(tree: Tree, tip: str | None) -> None:
    """``agent_tampered`` unless the worktree's ``.git`` file, HEAD and the run's branch
    (at ``tip``, the run's last checkpoint) are as devflow left them."""
    found = runtree.tampering(tree, tip)
    if found:
        raise DevflowError(Code.AGENT_TAMPERED,
                           f"the worktree {tree.path} is not as devflow left it: "
                           + "; ".join(found),
                           hint="devflow puts its .git file, HEAD and the run's branch back "
                                "before the next attempt")


def checkpoint(tree: Tree, message: str, tip: str | None,
               removed: list[dict[str, Any]] | None = None) -> str | None:
    """Commit everything in the worktree onto the run's branch as devflow; None when there
    is nothing to commit. ``tip`` is the run's last checkpoint: when the branch is not
    there, or ``.git`` or HEAD were changed, nothing is written (``agent_tampered``).
    Stale locks removed on the way are added to ``removed``."""
    guard(tree, tip)
    removed = [] if removed is None else removed
    run_unlocked(tree, ["add", "--all", "--", "."], removed)
    args = ["commit", "--no-verify", "--quiet", "--no-gpg-sign", "-m", message]
    committed = run_unlocked(tree, args, removed, env=git.AUTHOR, check=False)
    if committed.returncode != 0:  # nothing to commit, or a real failure
        if not is_clean(tree):
            raise git.GitError(args, tree.path, committed)
        return None
    return runtree.branch_tip(tree)


def reset(tree: Tree, sha: str, removed: list[dict[str, Any]] | None = None) -> list[str]:
    """Put the worktree and the run's branch back at ``sha``, dropping what an interrupted
    attempt left (``salvage`` keeps it first). Its ``.git`` file and HEAD are put back
    first when they were changed (what was found is returned), so only the run's branch
    moves. Stale locks removed on the way are added to ``removed``."""
    removed = [] if removed is None else removed
    found = runtree.restore(tree, None)
    run_unlocked(tree, ["reset", "--hard", "--quiet", sha], removed)
    run_unlocked(tree, ["clean", "-fd", "--quiet"], removed)
    return found


def salvage(tree: Tree, sha: str, removed: list[dict[str, Any]] | None = None,
            ) -> dict[str, Any] | None:
    """Commit what a reset to ``sha`` would drop (files changed or added since, and a
    commit on the branch no checkpoint recorded) to the next
    ``refs/heads/devflow/<run>/salvage-<n>``; what was kept, or None when nothing differs.

    The worktree's index is not touched (a temporary one is), and the run's branch does
    not move. Call it with ``.git`` and HEAD as devflow left them (``runtree.restore``).
    """
    removed = [] if removed is None else removed
    now, clean = head_and_clean(tree)
    if clean and now == sha:
        return None
    status = tree.run(["status", "--porcelain", "--untracked-files=all", "--no-renames"])
    files = [line[3:] for line in status.stdout.splitlines()][:50]
    commit = now
    if not clean:
        commit = tree.out(["commit-tree", tree_sha(tree), "-p", now or sha, "-m",
                           f"devflow: salvaged before the worktree was reset to {sha[:12]}"],
                          env=git.AUTHOR)
    prefix = f"refs/heads/{Path(tree.branch).parent.as_posix()}/salvage-"
    taken = tree.out(["for-each-ref", "--format=%(refname)", prefix.rsplit("/", 1)[0]])
    numbers = [int(r.removeprefix(prefix)) for r in taken.splitlines()
               if r.startswith(prefix) and r.removeprefix(prefix).isdigit()]
    ref = f"{prefix}{max(numbers, default=0) + 1}"
    run_unlocked(tree, ["update-ref", "-m", "devflow: salvage", ref, commit, ""], removed)
    return {"ref": ref, "sha": commit, "head": now, "files": files}


def run_unlocked(tree: Tree, args: list[str], removed: list[dict[str, Any]], *,
                 env: dict[str, str] | None = None,
                 check: bool = True) -> subprocess.CompletedProcess[str]:
    """``git ARGS`` on the run's worktree; a stale lock of the run's own that stops it is
    removed (added to ``removed``) and git runs again. A lock a live process holds, or
    one that is not the run's, is a ``MachineFault`` naming it and the fix."""
    for _ in range(8):
        result = tree.run(args, env=env, check=False)
        lock = gitlocks.in_message(result.stderr) if result.returncode != 0 else None
        if lock is None:
            break
        if not _owns(tree, lock):
            raise machine.MachineFault(machine.lock_blocked(lock, []))
        held = gitlocks.holders(lock, [tree.path, tree.admin])
        if held:
            raise machine.MachineFault(machine.lock_blocked(lock, held))
        gone = gitlocks.remove(lock)
        if gone is not None:
            removed.append(gone)
    if check and result.returncode != 0:
        raise git.GitError(args, tree.path, result)
    return result


def _owns(tree: Tree, lock: Path) -> bool:
    """Whether ``lock`` is the run's own: in its worktree's admin directory, or a ref
    under ``refs/heads/devflow/<run>/``."""
    lock = Path(os.path.normpath(lock))
    if lock.parent == Path(os.path.normpath(tree.admin)):
        return True
    refs = Path(os.path.normpath(tree.common / "refs" / "heads" / Path(tree.branch).parent))
    return lock.is_relative_to(refs)


def commits(repo: Path, base_sha: str, branch: str) -> list[Commit]:
    text = git.shown(_git(repo, ["log", "--format=%H%x1f%s", f"{base_sha}..refs/heads/{branch}",
                                 "--"], check=False).stdout.strip())
    return [Commit(*line.split("\x1f", 1)) for line in text.splitlines() if "\x1f" in line]


def diffstat(repo: Path, base_sha: str, branch: str) -> list[FileStat]:
    text = _git(repo, ["diff", "--numstat", "--no-ext-diff", "--no-textconv", "--no-renames",
                       base_sha, f"refs/heads/{branch}", "--"], check=False).stdout.strip()
    stats = []
    for line in text.splitlines():
        added, deleted, path = line.split("\t", 2)
        stats.append(FileStat(path, None if added == "-" else int(added),
                              None if deleted == "-" else int(deleted)))
    return stats


def diff(repo: Path, base_sha: str, branch: str, max_bytes: int) -> tuple[str, bool] | None:
    """The branch's change against the base commit, as a patch: (text, cut at max_bytes);
    None when git cannot tell (the branch or the base is gone)."""
    result = _git(repo, ["diff", "--no-ext-diff", "--no-textconv", "--no-color", "--stat",
                         "--patch", base_sha, f"refs/heads/{branch}", "--"], check=False)
    if result.returncode != 0:
        return None
    raw = result.stdout.encode("utf-8", errors="surrogateescape")  # git's bytes again
    # what is not UTF-8 (a Latin-1 file, a character the cut split) is shown as U+FFFD
    return raw[:max_bytes].decode("utf-8", errors="replace"), len(raw) > max_bytes


def disk_usage(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += (Path(root) / name).lstat().st_size
    return total
