"""No configuration level can make devflow's git run a program (DESIGN.md §3.6).

One test per level git reads: the system file (``GIT_CONFIG_SYSTEM``), the global one
(``GIT_CONFIG_GLOBAL``, and ``~/.gitconfig`` through ``HOME``), the common config, the
main worktree's and the run worktree's per-worktree config (``extensions.worktreeConfig``),
a file named by ``include.path`` (through a second, relative include) and one named by
``includeIf "gitdir:…"`` that applies only to the run worktrees' git directories. At each
level a filter driver (clean, smudge, process, ``required``), a hooks directory, an
fsmonitor, a textconv, an external diff and commit signing all write a marker when they
run. devflow's worktree add, evidence, checkpoint, reset and report summary leave no
marker; plain git with the same configuration does write one (the trap is real).

These are git-level tests: no run, so no database. The run-level tests are in
``test_git_hygiene.py`` and ``test_hostile_git.py``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from devflow import git, memo, runtree, worktree
from devflow.errors import Code, DevflowError
from tests.conftest import make_repo

BRANCH = "devflow/r1/main"
HOOKS = ("pre-commit", "prepare-commit-msg", "commit-msg", "post-commit", "post-checkout",
         "reference-transaction", "post-index-change", "pre-auto-gc", "post-rewrite")
LEVELS = ("system", "global", "home", "common", "main-worktree", "worktree", "include",
          "include-if")


def _marker_script(path: Path, marker: Path, kind: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\necho "{kind} $0 $*" >> "{marker}"\nexit 1\n', encoding="utf-8")
    path.chmod(0o755)
    return str(path)


def _traps(scripts: Path, marker: Path) -> dict[str, str]:
    """Every key that would make git run a program, each program writing ``marker``."""
    for hook in HOOKS:
        _marker_script(scripts / "hooks" / hook, marker, "hook")
    return {
        "filter.trap.clean": _marker_script(scripts / "clean", marker, "filter"),
        "filter.trap.smudge": _marker_script(scripts / "smudge", marker, "filter"),
        "filter.trap.process": _marker_script(scripts / "process", marker, "filter"),
        "filter.trap.required": "true",
        "core.hooksPath": str(scripts / "hooks"),
        "core.fsmonitor": _marker_script(scripts / "fsmonitor", marker, "fsmonitor"),
        "diff.trap.textconv": _marker_script(scripts / "textconv", marker, "textconv"),
        "diff.external": _marker_script(scripts / "external-diff", marker, "diff"),
        "gpg.program": _marker_script(scripts / "gpg", marker, "gpg"),
        "commit.gpgSign": "true",
        "log.showSignature": "true",
    }


def _write(config: Path, values: dict[str, str]) -> None:
    """Set ``values`` in the config file ``config`` (plain git: this is a person's setup)."""
    config.parent.mkdir(parents=True, exist_ok=True)
    for key, value in values.items():
        subprocess.run(["git", "config", "--file", str(config), key, value], check=True,
                       env=_plain_env())


def _plain_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("GIT_") or k in ("GIT_CONFIG_SYSTEM", "GIT_CONFIG_GLOBAL")}
    env.update(git.AUTHOR)
    return env


def _plain_git(args: list[str], cwd: Path) -> None:
    subprocess.run(["git", *args], cwd=cwd, env=_plain_env(), capture_output=True, check=False,
                   timeout=60)


def _set_level(level: str, traps: dict[str, str], repo: Path, tmp_path: Path,
               monkeypatch: pytest.MonkeyPatch) -> None:
    common = repo / ".git"
    if level == "system":
        monkeypatch.setenv("GIT_CONFIG_SYSTEM", str(tmp_path / "etc" / "gitconfig"))
        _write(tmp_path / "etc" / "gitconfig", traps)
    elif level == "global":
        monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "global.gitconfig"))
        _write(tmp_path / "global.gitconfig", traps)
    elif level == "home":
        monkeypatch.delenv("GIT_CONFIG_GLOBAL", raising=False)
        monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
        _write(tmp_path / "home" / ".gitconfig", traps)
    elif level == "common":
        _write(common / "config", traps)
    elif level == "main-worktree":  # the user's own worktree: what `worktree add` sees
        _write(common / "config", {"extensions.worktreeConfig": "true"})
        _write(common / "config.worktree", traps)
    elif level == "include":  # an included file that includes another, relatively
        _write(tmp_path / "includes" / "first.gitconfig", {"include.path": "nested/second"})
        _write(tmp_path / "includes" / "nested" / "second", traps)
        _write(common / "config", {"include.path": str(tmp_path / "includes" / "first.gitconfig")})
    elif level == "include-if":  # applies to the run worktrees' git dirs, not to the common dir
        _write(tmp_path / "only-worktrees.gitconfig", traps)
        _write(common / "config", {f"includeIf.gitdir:{common.resolve()}/worktrees/.path":
                                   str(tmp_path / "only-worktrees.gitconfig")})


@pytest.fixture(autouse=True)
def _isolated_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine's own git configuration stays out of these tests."""
    monkeypatch.setenv("GIT_CONFIG_SYSTEM", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)


def _trapped_repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo", files={
        "README.md": "# trapped\n",
        "src/app.py": "print('hi')\n",
        ".gitattributes": "* filter=trap diff=trap\n",
    })


def _devflow_git(repo: Path, path: Path, marker: Path, *,
                 configure: tuple[dict[str, str], Path] | None = None) -> runtree.Tree:
    """Everything devflow's git does to a run's worktree, start to end; ``configure``
    sets the traps in the run worktree's own config once it exists."""
    worktree.add(repo, path, BRANCH, "main")
    tree = worktree.find(repo, path, BRANCH)
    assert tree is not None
    if configure is not None:
        traps, common = configure
        _write(common / "config", {"extensions.worktreeConfig": "true"})
        _write(tree.admin / "config.worktree", traps)
    base = runtree.branch_tip(tree)
    assert base is not None and (path / "src" / "app.py").is_file()
    (path / "README.md").write_text("# changed by the agent\n", encoding="utf-8")
    (path / "new.txt").write_text("new\n", encoding="utf-8")
    assert worktree.head_and_clean(tree) == (base, False)  # evidence: status
    dirty_tree = worktree.tree_sha(tree)  # evidence: a tree of what is on disk
    sha = worktree.checkpoint(tree, "devflow(implement): attempt 1", base)
    assert sha is not None and worktree.tree_sha(tree) == dirty_tree
    assert worktree.commits(repo, base, BRANCH)[0].sha == sha  # the report's summary
    assert {f.path for f in worktree.diffstat(repo, base, BRANCH)} == {"README.md", "new.txt"}
    (path / "README.md").write_text("# an interrupted attempt\n", encoding="utf-8")
    (path / "left-over.txt").write_text("x\n", encoding="utf-8")
    assert worktree.reset(tree, base) == []  # recovery: back to the checkpoint
    assert (path / "README.md").read_text(encoding="utf-8") == "# trapped\n"
    assert not (path / "left-over.txt").exists()
    assert worktree.is_clean(tree) and worktree.head(tree) == base
    assert not marker.exists(), marker.read_text(encoding="utf-8")
    return tree


@pytest.mark.parametrize("level", LEVELS)
def test_no_config_level_makes_devflows_git_run_a_program(
        level: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "marker.txt"
    repo = _trapped_repo(tmp_path)
    traps = _traps(tmp_path / "scripts", marker)
    path = tmp_path / "ws" / "r1" / "main"
    if level == "worktree":
        _devflow_git(repo, path, marker, configure=(traps, repo / ".git"))
    else:
        _set_level(level, traps, repo, tmp_path, monkeypatch)
        _devflow_git(repo, path, marker)

    # control: plain git with the same configuration runs them (in the user's worktree for
    # its own per-worktree config, in the run's worktree for the others)
    where = repo if level == "main-worktree" else path
    (where / "README.md").write_text("# changed by hand\n", encoding="utf-8")
    _plain_git(["status"], where)
    _plain_git(["add", "README.md"], where)
    _plain_git(["-c", "filter.trap.required=false", "-c", "filter.trap.clean=",
                "-c", "filter.trap.process=", "commit", "--allow-empty", "-m", "by hand"], where)
    seen = {line.split()[0] for line in marker.read_text(encoding="utf-8").splitlines()}
    assert {"fsmonitor", "filter", "hook"} <= seen, seen


@pytest.mark.parametrize("late", ["worktree", "include"])
def test_a_filter_configured_after_devflows_git_ran_is_neutralized_too(
        late: str, tmp_path: Path) -> None:
    """The neutralizing options are cached by the stat of the files they came from: a
    file that appears or changes later (a per-worktree config, an include's target that
    did not exist yet) is seen at the next command."""
    marker = tmp_path / "marker.txt"
    repo = _trapped_repo(tmp_path)
    traps = _traps(tmp_path / "scripts", marker)
    included = tmp_path / "later.gitconfig"
    _write(repo / ".git" / "config", {"include.path": str(included),
                                      "extensions.worktreeConfig": "true"})
    path = tmp_path / "ws" / "r1" / "main"
    worktree.add(repo, path, BRANCH, "main")
    tree = worktree.find(repo, path, BRANCH)
    assert tree is not None
    base = runtree.branch_tip(tree)
    assert worktree.is_clean(tree)  # the cache is warm now
    _write(tree.admin / "config.worktree" if late == "worktree" else included, traps)
    (path / "README.md").write_text("# changed\n", encoding="utf-8")
    assert worktree.checkpoint(tree, "devflow(implement): attempt 1", base) is not None
    (path / "README.md").write_text("# again\n", encoding="utf-8")
    worktree.reset(tree, base)
    assert not marker.exists(), marker.read_text(encoding="utf-8")
    _plain_git(["status"], path)  # control
    assert marker.exists()


def test_a_filter_driver_devflow_cannot_name_is_refused(tmp_path: Path) -> None:
    """``-c filter.a=b.clean=`` would set ``filter.a``: such a driver is refused, not run."""
    marker = tmp_path / "marker.txt"
    repo = make_repo(tmp_path / "repo", files={"README.md": "x\n",
                                               ".gitattributes": "* filter=a=b\n"})
    _write(repo / ".git" / "config",
           {"filter.a=b.clean": _marker_script(tmp_path / "clean", marker, "filter")})
    with pytest.raises(DevflowError) as caught:
        git.run(["add", "--all"], repo)
    assert caught.value.code is Code.GIT_FAILED
    assert "'a=b'" in caught.value.message
    assert not marker.exists()


def _another_process(kept: Path) -> None:
    """What a new devflow process starts with: no answer in memory, the memo's file."""
    git._SEEN.clear()
    git.configure(memo=memo.Memo(kept))


def _drivers(args: tuple[str, ...]) -> set[str]:
    return {a.split(".")[1] for a in args if a.startswith("filter.")}


def test_the_configuration_is_asked_once_between_processes_while_its_files_hold(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The neutralizing options are remembered between processes under the same stamps:
    a later command asks git nothing; a changed config file, or another branch checked out
    (an ``includeIf "onbranch:…"`` follows it), is asked again."""
    repo = make_repo(tmp_path / "repo", files={"README.md": "x\n"})
    _write(tmp_path / "on-other.gitconfig", {"filter.other.clean": "cat"})
    _write(repo / ".git" / "config", {"filter.one.clean": "cat",
                                      "includeIf.onbranch:other.path":
                                          str(tmp_path / "on-other.gitconfig")})
    kept = tmp_path / "memo.json"
    real_run = subprocess.run
    asked: list[list[str]] = []

    def counted(argv: list[str], *args: object, **kwargs: object) -> object:
        asked.append(argv)
        return real_run(argv, *args, **kwargs)  # type: ignore[call-overload]
    monkeypatch.setattr(subprocess, "run", counted)
    def answer() -> tuple[tuple[str, ...], int]:
        """A new process's answer, and how many times it asked git for it."""
        _another_process(kept)
        before = len(asked)
        args = git.config_args(repo)
        git._memo[0].save()  # as the app does when it closes
        return args, len(asked) - before
    try:
        first, times = answer()
        assert _drivers(first) == {"one"} and times >= 1
        assert answer() == (first, 0)  # git not asked
        _write(repo / ".git" / "config", {"filter.two.clean": "cat"})  # the file changed
        args, times = answer()
        assert _drivers(args) == {"one", "two"} and times >= 1
        assert answer() == (args, 0)
        _plain_git(["checkout", "-q", "-b", "other"], repo)  # HEAD moved: the include
        args, times = answer()                              # applies now
        assert _drivers(args) == {"one", "two", "other"} and times >= 1
        assert answer() == (args, 0)
        # another git (an upgrade, another PATH) follows includes of its own: asked again
        other_git = tmp_path / "bin" / "git"
        other_git.parent.mkdir()
        real_git = shutil.which("git")
        assert real_git is not None
        other_git.write_text(f'#!/bin/sh\nexec {real_git} "$@"\n')
        other_git.chmod(0o755)
        monkeypatch.setenv("PATH", f"{other_git.parent}:{os.environ['PATH']}")
        git._git_binary.cache_clear()
        assert answer()[1] >= 1
    finally:
        git._git_binary.cache_clear()
        monkeypatch.undo()
        git._SEEN.clear()
        git.configure()
