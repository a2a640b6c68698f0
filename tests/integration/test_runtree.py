"""A run's worktree as devflow made it (``devflow.runtree``), on real git repositories: its
git directory found from the common dir whatever ``.git`` says, every way ``.git``, HEAD
or the run's branch can be changed is seen and put back, and nothing else moves."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from devflow import git, runtree, worktree
from devflow.errors import Code, DevflowError
from tests.conftest import make_repo

BRANCH = "devflow/r1/main"


@pytest.fixture
def made(tmp_path: Path) -> tuple[Path, runtree.Tree, str]:
    repo = make_repo(tmp_path / "repo")
    git.run(["branch", "other"], repo)
    path = tmp_path / "ws" / "r1" / "main"
    worktree.add(repo, path, BRANCH, "main")
    tree = worktree.find(repo, path, BRANCH)
    assert tree is not None
    tip = runtree.branch_tip(tree)
    assert tip is not None
    return repo, tree, tip


def _refs(repo: Path) -> str:
    return git.out(["for-each-ref", "--format=%(refname) %(objectname) %(symref)"], repo)


def _user_commit(repo: Path) -> str:
    (repo / "USER.md").write_text("mine\n", encoding="utf-8")
    git.run(["add", "USER.md"], repo)
    git.run(["commit", "--quiet", "--no-verify", "-m", "mine"], repo, env=git.AUTHOR)
    return git.out(["rev-parse", "main"], repo)


def test_the_git_dir_is_found_from_the_common_dir_not_from_dot_git(
        made: tuple[Path, runtree.Tree, str], tmp_path: Path) -> None:
    repo, tree, _ = made
    assert tree.admin.parent == (repo / ".git" / "worktrees").resolve()
    other = tmp_path / "ws" / "r2" / "main"
    worktree.add(repo, other, "devflow/r2/main", "main")  # admin "main1": not guessed
    second = worktree.find(repo, other, "devflow/r2/main")
    assert second is not None and second.admin != tree.admin
    (tree.path / ".git").write_text(f"gitdir: {second.admin}\n", encoding="utf-8")
    again = worktree.find(repo, tree.path, BRANCH)
    assert again is not None and again.admin == tree.admin
    assert worktree.find(repo, tmp_path / "ws", BRANCH) is None  # not a worktree
    git.run(["worktree", "remove", "--force", str(other)], repo)
    assert worktree.find(repo, other, "devflow/r2/main") is None


Change = Callable[[Path, runtree.Tree, str], None]


def _dot_git_common(repo: Path, tree: runtree.Tree, tip: str) -> None:
    (tree.path / ".git").write_text(f"gitdir: {tree.common}\n", encoding="utf-8")


def _dot_git_deleted(repo: Path, tree: runtree.Tree, tip: str) -> None:
    (tree.path / ".git").unlink()


def _dot_git_a_repository(repo: Path, tree: runtree.Tree, tip: str) -> None:
    (tree.path / ".git").unlink()
    git.run(["init", "--quiet"], tree.path)


def _dot_git_a_symlink(repo: Path, tree: runtree.Tree, tip: str) -> None:
    (tree.path / ".git").unlink()
    os.symlink(tree.common, tree.path / ".git")


def _head_to_main(repo: Path, tree: runtree.Tree, tip: str) -> None:
    (tree.admin / "HEAD").write_text("ref: refs/heads/main\n", encoding="utf-8")


def _head_detached(repo: Path, tree: runtree.Tree, tip: str) -> None:
    (tree.admin / "HEAD").write_text(f"{tip}\n", encoding="utf-8")


def _head_garbage(repo: Path, tree: runtree.Tree, tip: str) -> None:
    (tree.admin / "HEAD").write_text("not a ref\n", encoding="utf-8")


def _head_deleted(repo: Path, tree: runtree.Tree, tip: str) -> None:
    (tree.admin / "HEAD").unlink()


def _branch_moved(repo: Path, tree: runtree.Tree, tip: str) -> None:
    git.run(["update-ref", tree.ref, git.out(["rev-parse", "main"], repo)], repo)


def _branch_deleted(repo: Path, tree: runtree.Tree, tip: str) -> None:
    git.run(["update-ref", "-d", tree.ref], repo)


def _branch_a_symref_to_main(repo: Path, tree: runtree.Tree, tip: str) -> None:
    git.run(["symbolic-ref", tree.ref, "refs/heads/main"], repo)


def _branch_packed_and_moved(repo: Path, tree: runtree.Tree, tip: str) -> None:
    git.run(["pack-refs", "--all", "--prune"], repo)
    assert not (tree.common / tree.ref).exists()
    _branch_moved(repo, tree, tip)
    git.run(["pack-refs", "--all", "--prune"], repo)


CHANGES: dict[str, tuple[Change, str]] = {
    "dot-git-common": (_dot_git_common, ".git file was changed"),
    "dot-git-deleted": (_dot_git_deleted, ".git file was deleted"),
    "dot-git-repository": (_dot_git_a_repository, "replaced by a directory"),
    "dot-git-symlink": (_dot_git_a_symlink, "replaced by a symbolic link"),
    "head-to-main": (_head_to_main, "HEAD was changed to 'ref: refs/heads/main'"),
    "head-detached": (_head_detached, "HEAD was changed to"),
    "head-garbage": (_head_garbage, "HEAD was changed to 'not a ref'"),
    "head-deleted": (_head_deleted, "HEAD was changed to missing"),
    "branch-moved": (_branch_moved, "was moved to"),
    "branch-deleted": (_branch_deleted, "was deleted"),
    "branch-symref-to-main": (_branch_a_symref_to_main, "was moved to"),
    "branch-packed-and-moved": (_branch_packed_and_moved, "was moved to"),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_change_is_seen_refused_and_put_back_touching_nothing_else(
        made: tuple[Path, runtree.Tree, str], change: str) -> None:
    repo, tree, tip = made
    user_sha = _user_commit(repo)
    (tree.path / "work.txt").write_text("the agent's work\n", encoding="utf-8")
    do, says = CHANGES[change]
    do(repo, tree, tip)
    found = runtree.tampering(tree, tip)
    assert len(found) == 1 and says in found[0], found
    with pytest.raises(DevflowError) as caught:
        worktree.checkpoint(tree, "devflow(x): attempt 1", tip)
    assert caught.value.code is Code.AGENT_TAMPERED
    assert git.out(["rev-parse", "main"], repo) == user_sha  # nothing was committed anywhere

    before = {line for line in _refs(repo).splitlines() if f" {tree.ref} " not in line
              and not line.startswith(f"{tree.ref} ")}
    assert runtree.restore(tree, tip) == found
    assert runtree.tampering(tree, tip) == []
    after = {line for line in _refs(repo).splitlines() if not line.startswith(f"{tree.ref} ")}
    assert after == before
    assert git.out(["rev-parse", "main"], repo) == user_sha
    assert (tree.path / "work.txt").read_text(encoding="utf-8") == "the agent's work\n"
    sha = worktree.checkpoint(tree, "devflow(x): attempt 2", tip)
    assert sha is not None and git.out(["rev-parse", f"{sha}^"], repo) == tip
    assert git.out(["rev-parse", BRANCH], repo) == sha
    assert git.out(["rev-parse", "main"], repo) == user_sha


def test_the_reset_puts_dot_git_and_head_back_first(
        made: tuple[Path, runtree.Tree, str]) -> None:
    repo, tree, tip = made
    user_sha = _user_commit(repo)
    (tree.path / "work.txt").write_text("left over\n", encoding="utf-8")
    _dot_git_common(repo, tree, tip)
    _head_to_main(repo, tree, tip)
    found = worktree.reset(tree, tip)
    assert [f.split()[0:3] for f in found] == [["the", "worktree's", ".git"],
                                               ["HEAD", "was", "changed"]]
    assert runtree.tampering(tree, tip) == []
    assert not (tree.path / "work.txt").exists()
    assert git.out(["rev-parse", "main"], repo) == user_sha
    assert git.out(["status", "--porcelain"], repo) == ""
    assert (repo / "USER.md").is_file()


def test_the_tip_of_a_packed_branch_is_read_without_git(
        made: tuple[Path, runtree.Tree, str]) -> None:
    repo, tree, tip = made
    git.run(["pack-refs", "--all", "--prune"], repo)
    assert not (tree.common / tree.ref).exists()
    assert runtree.branch_tip(tree) == tip
    assert runtree.tampering(tree, tip) == []


def test_a_checkout_a_crash_interrupted_is_done_by_the_next_drive(
        made: tuple[Path, runtree.Tree, str]) -> None:
    """`worktree add --no-checkout` registered it, then the process died: no index, no
    files. The next ``ready`` checks it out, on the run's branch even if HEAD was moved."""
    repo, tree, tip = made
    user_sha = _user_commit(repo)
    (tree.admin / "index").unlink()
    for child in tree.path.iterdir():
        if child.name != ".git":
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()
    _head_to_main(repo, tree, tip)
    assert worktree.ready(repo, tree.path, BRANCH)
    assert (tree.path / "README.md").is_file() and not (tree.path / "USER.md").exists()
    assert runtree.tampering(tree, tip) == []
    assert worktree.is_clean(tree)
    assert git.out(["rev-parse", "main"], repo) == user_sha
    assert worktree.ready(repo, tree.path, BRANCH)  # and then it is simply there
