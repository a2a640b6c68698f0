"""A repository's own configuration cannot make devflow run a program (DESIGN.md §3.6):
fsmonitor, hooks (core.hooksPath and .git/hooks), filter drivers (one of them in a file
only the run worktrees' git directories include), diff drivers and commit signing are all
configured to write a marker; a whole run leaves no marker. Each configuration level on
its own: ``test_git_config_levels.py``."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from devflow import git
from devflow.app import App
from tests.conftest import make_repo
from tests.integration.helpers import quick, report_of

HOOKS = ("pre-commit", "prepare-commit-msg", "commit-msg", "post-commit", "post-checkout",
         "reference-transaction", "post-index-change", "pre-auto-gc", "post-rewrite")


def _marker_script(path: Path, marker: Path, kind: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\necho "{kind} $0 $*" >> "{marker}"\nexit 1\n', encoding="utf-8")
    path.chmod(0o755)
    return path


def _booby_trapped_repo(tmp_path: Path, marker: Path) -> Path:
    repo = make_repo(tmp_path / "trapped", files={
        "README.md": "# trapped\n",
        "src/app.py": "print('hi')\n",
        ".gitattributes": "* filter=x diff=x\n*.md filter=y\n",
    })
    scripts = tmp_path / "scripts"
    config = {
        "core.fsmonitor": _marker_script(scripts / "fsmonitor", marker, "fsmonitor"),
        "core.hooksPath": scripts / "hooks",
        "filter.x.process": _marker_script(scripts / "filter-process", marker, "filter"),
        "filter.x.clean": _marker_script(scripts / "filter-clean", marker, "filter"),
        "filter.x.smudge": _marker_script(scripts / "filter-smudge", marker, "filter"),
        "diff.x.textconv": _marker_script(scripts / "textconv", marker, "textconv"),
        "diff.external": _marker_script(scripts / "external-diff", marker, "diff"),
        "gpg.program": _marker_script(scripts / "gpg", marker, "gpg"),
        "commit.gpgSign": "true",
    }
    for hook in HOOKS:
        _marker_script(scripts / "hooks" / hook, marker, "hooksPath")
        _marker_script(repo / ".git" / "hooks" / hook, marker, "git-hooks")
    # a filter only the run worktrees' git directories see (not the common one)
    only_worktrees = tmp_path / "worktrees.gitconfig"
    config[f"includeIf.gitdir:{(repo / '.git').resolve()}/worktrees/.path"] = only_worktrees
    for key, value in config.items():
        # plain git on purpose, with the caller's environment: this is the user's own setup
        subprocess.run(["git", "config", key, str(value)], cwd=repo, check=True)
    for key in ("clean", "smudge", "process"):
        subprocess.run(["git", "config", "--file", str(only_worktrees), f"filter.y.{key}",
                        _marker_script(scripts / f"y-{key}", marker, "filter-y")], check=True)
    subprocess.run(["git", "config", "--file", str(only_worktrees), "filter.y.required", "true"],
                   check=True)
    return repo


def _plain_git(args: list[str], cwd: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(git.AUTHOR)
    subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, check=False,
                   timeout=60)


def test_repository_config_cannot_make_devflow_run_a_program(app: App, tmp_path: Path) -> None:
    marker = tmp_path / "marker.txt"
    repo = _booby_trapped_repo(tmp_path, marker)

    view = app.start(quick(repo))
    assert view.run.state == "completed", view.run.failure_reason
    assert not marker.exists(), marker.read_text(encoding="utf-8")
    # the run really did what would have triggered them: worktree checkout, git add of
    # edited files under a filter, commits, branch updates, a diff for the report
    body = report_of(view)
    assert [c["subject"] for c in body["git"]["commits"]] == [
        "devflow(review): attempt 1", "devflow(implement): attempt 1"]
    assert "README.md" in {f["path"] for f in body["git"]["files"]}
    assert body["git"]["error"] is None

    # control: the same repository with plain git does run them
    tree = Path(view.run.worktree)
    (tree / "README.md").write_text("# changed\n", encoding="utf-8")
    _plain_git(["status"], tree)  # the fsmonitor
    _plain_git(["add", "README.md"], tree)  # the filter (git then fails: it is no filter)
    _plain_git(["-c", "filter.x.process=", "-c", "filter.x.clean=", "-c", "filter.x.smudge=",
                "commit", "--allow-empty", "-m", "by hand"], tree)  # the hooks
    (tree / "src" / "app.py").write_text("print('changed')\n", encoding="utf-8")
    _plain_git(["add", "src/app.py"], tree)
    seen = {line.split()[0] for line in marker.read_text(encoding="utf-8").splitlines()}
    assert {"fsmonitor", "filter", "filter-y", "hooksPath"} <= seen, seen
