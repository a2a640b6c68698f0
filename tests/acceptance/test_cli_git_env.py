"""git's repository-local variables in the caller's environment (``GIT_DIR``,
``GIT_WORK_TREE``, ``GIT_INDEX_FILE``, ``GIT_OBJECT_DIRECTORY``, ``GIT_CONFIG_*``) do not
redirect the git that devflow runs (DESIGN.md §3.6)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

from devflow import git
from tests.conftest import as_json, make_repo
from tests.integration.helpers import QUICK_CLI_BINDS, branches, requirements_file, worktrees

Cli = Callable[..., subprocess.CompletedProcess[str]]


def test_caller_git_variables_do_not_redirect_devflow(cli: Cli, repo: Path,
                                                      tmp_path: Path) -> None:
    decoy = make_repo(tmp_path / "decoy", files={"DECOY.md": "decoy\n"}, branch="trunk")
    decoy_head = git.out(["rev-parse", "HEAD"], decoy)
    marker = tmp_path / "hook-ran"
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    for name in ("pre-commit", "post-checkout", "reference-transaction"):
        (hooks / name).write_text(f'#!/bin/sh\ntouch "{marker}"\n', encoding="utf-8")
        (hooks / name).chmod(0o755)
    env = {
        "GIT_DIR": str(decoy / ".git"), "GIT_WORK_TREE": str(decoy),
        "GIT_INDEX_FILE": str(decoy / ".git" / "index"),
        "GIT_OBJECT_DIRECTORY": str(decoy / ".git" / "objects"),
        "GIT_COMMON_DIR": str(decoy / ".git"),
        "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "core.hooksPath",
        "GIT_CONFIG_VALUE_0": str(hooks),
        "GIT_CONFIG_PARAMETERS": f"'core.hooksPath'='{hooks}'",
    }
    # no --base: the current branch is asked of git too (main here, trunk in the decoy)
    result = cli("run", "start", "--repo", str(repo), "--template", "quick@1",
                 "--requirements", str(requirements_file(tmp_path)), *QUICK_CLI_BINDS,
                 "--json", env=env, check=0)
    run = as_json(result)["run"]
    assert run["state"] == "completed", run.get("failure")
    assert run["repo"] == str(repo.resolve())
    assert run["base"] == "main"
    assert run["branch"] in branches(repo)
    subjects = git.out(["log", "--format=%s", f"main..{run['branch']}"], repo).splitlines()
    assert subjects == ["devflow(review): attempt 1", "devflow(implement): attempt 1"]
    assert Path(run["worktree"]).resolve() in [p.resolve() for p in worktrees(repo)]
    # the decoy is untouched: same branches, same head, no worktree, no new objects used
    assert branches(decoy) == ["trunk"]
    assert git.out(["rev-parse", "HEAD"], decoy) == decoy_head
    assert [p.resolve() for p in worktrees(decoy)] == [decoy.resolve()]
    assert git.out(["status", "--porcelain"], decoy) == ""
    assert not marker.exists()
