"""Where a run starts: the repository's top and the base commit, from one git process."""

from __future__ import annotations

from pathlib import Path

import pytest

from devflow import git, worktree
from devflow.errors import Code, DevflowError
from tests.conftest import make_repo


def _error(path: Path, base: str) -> DevflowError:
    with pytest.raises(DevflowError) as caught:
        worktree.locate(path, base)
    return caught.value


def test_from_a_subdirectory_it_finds_the_top_the_base_and_the_lock(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    head = git.out(["rev-parse", "main"], repo)
    worktree._COMMON_DIRS.clear()

    assert worktree.locate(repo / "src" / "sample", "main") == (repo.resolve(), head)
    # git named the common directory relative to the subdirectory (../../.git); the lock
    # takes it from there without asking git again
    assert {repo.resolve(): (repo / ".git").resolve()} == worktree._COMMON_DIRS
    lock = Path(worktree._lock(repo.resolve()).lock_file)
    assert lock == (repo / ".git" / "devflow-worktree.lock").resolve()


def test_a_tag_or_an_abbreviated_commit_is_a_base(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    git.run(["tag", "v1"], repo)
    head = git.out(["rev-parse", "main"], repo)

    assert worktree.locate(repo, "v1") == (repo.resolve(), head)
    assert worktree.locate(repo, head[:10]) == (repo.resolve(), head)


def test_a_newline_in_the_path_does_not_split_the_answer(tmp_path: Path) -> None:
    """git prints the paths unquoted, one a line: such a path is asked about apart."""
    repo = make_repo(tmp_path / "odd\nname")
    head = git.out(["rev-parse", "main"], repo)

    assert worktree.locate(repo / "src", "main") == (repo.resolve(), head)
    assert worktree._COMMON_DIRS[repo.resolve()] == (repo / ".git").resolve()
    assert _error(repo, "nope").code is Code.BASE_BRANCH_NOT_FOUND


def test_a_linked_worktree_is_its_own_top_and_shares_the_lock(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    linked = tmp_path / "linked"
    git.run(["worktree", "add", "--quiet", "-b", "side", str(linked), "main"], repo)

    top, sha = worktree.locate(linked, "side")

    assert top == linked.resolve()
    assert sha == git.out(["rev-parse", "main"], repo)
    lock = Path(worktree._lock(top).lock_file)
    assert lock == (repo / ".git" / "devflow-worktree.lock").resolve()


def test_a_missing_base_names_the_branches_there(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    git.run(["branch", "feature"], repo)

    for base in ("nope", "-h", "--all"):
        error = _error(repo, base)
        assert error.code is Code.BASE_BRANCH_NOT_FOUND, base
        assert error.hint == "branches there: feature, main"


def test_a_repository_without_commits_has_no_base(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    git.run(["init", "--quiet", "--initial-branch=main"], empty)

    error = _error(empty, "main")

    assert error.code is Code.BASE_BRANCH_NOT_FOUND
    assert error.hint == "branches there: none (no commit yet?)"


def test_a_directory_outside_git_or_a_missing_one_is_not_a_repository(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()

    assert _error(plain, "main").code is Code.NOT_A_GIT_REPO
    assert _error(tmp_path / "missing", "main").code is Code.NOT_A_GIT_REPO
