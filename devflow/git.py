"""Running git: the one place devflow starts a git process (DESIGN.md §3.6).

Every git child gets:

- an environment without git's repository-local variables (those ``git rev-parse
  --local-env-vars`` lists: ``GIT_DIR``, ``GIT_WORK_TREE``, ``GIT_INDEX_FILE``, …) and
  without ``GIT_CONFIG_*``, so a caller's environment cannot redirect it;
- ``-c`` options that stop a repository's own configuration from making git run a
  program: no hooks, no fsmonitor, no commit signing, no background gc, and every
  filter driver the repository configures neutralized (a ``process`` filter runs a
  program on ``git add``).

GitPython is not used to start git: it copies ``os.environ`` into every child and
can add variables but never remove one, which is the leak this module closes.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from devflow import memo as memos
from devflow.errors import Code, DevflowError

_FALLBACK_LOCAL_VARS: Final = (
    "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_CONFIG", "GIT_CONFIG_PARAMETERS",
    "GIT_CONFIG_COUNT", "GIT_OBJECT_DIRECTORY", "GIT_DIR", "GIT_WORK_TREE",
    "GIT_IMPLICIT_WORK_TREE", "GIT_GRAFT_FILE", "GIT_INDEX_FILE", "GIT_NO_REPLACE_OBJECTS",
    "GIT_REPLACE_REF_BASE", "GIT_PREFIX", "GIT_INTERNAL_SUPER_PREFIX", "GIT_SHALLOW_FILE",
    "GIT_COMMON_DIR",
)
SAFE_CONFIG: Final = (
    "-c", "core.fsmonitor=false",
    "-c", "core.hooksPath=/dev/null",
    "-c", "commit.gpgSign=false",
    "-c", "tag.gpgSign=false",
    "-c", "gc.auto=0",
    "-c", "maintenance.auto=false",
    "-c", "core.pager=cat",
    "-c", "credential.helper=",
    "-c", "advice.detachedHead=false",
)
AUTHOR: Final = {"GIT_AUTHOR_NAME": "devflow", "GIT_AUTHOR_EMAIL": "devflow@localhost",
                 "GIT_COMMITTER_NAME": "devflow", "GIT_COMMITTER_EMAIL": "devflow@localhost"}


#: where answers about the git executable are remembered between processes (``configure``)
_memo: list[memos.Memo] = []


def configure(*, memo: memos.Memo | None = None) -> None:
    """Where to remember what git says of itself (called by the app)."""
    _memo[:] = [memo] if memo is not None else []


@functools.cache
def local_env_vars() -> frozenset[str]:
    """The variables git treats as repository-local, asked of git itself once per version
    of its executable (remembered between processes when ``configure`` says where)."""
    program = shutil.which("git")
    stamp = memos.file_stamp(program) if program else None
    key = memos.key("git-local-env-vars", stamp) if stamp and _memo else None
    known = _memo[0].get(key) if key else None
    if known is not None:
        return frozenset(known) | frozenset(_FALLBACK_LOCAL_VARS)
    try:
        out = subprocess.run(["git", "rev-parse", "--local-env-vars"], capture_output=True,
                             text=True, env=_strip(os.environ, _FALLBACK_LOCAL_VARS),
                             check=True, timeout=30, cwd="/").stdout
    except (OSError, subprocess.SubprocessError):
        return frozenset(_FALLBACK_LOCAL_VARS)
    if key:
        _memo[0].put(key, sorted(out.split()))
        _memo[0].save()
    return frozenset(out.split()) | frozenset(_FALLBACK_LOCAL_VARS)


def _strip(env: Mapping[str, str], names: Sequence[str] | frozenset[str]) -> dict[str, str]:
    return {k: v for k, v in env.items()
            if k not in names and not k.startswith(("GIT_CONFIG_KEY_", "GIT_CONFIG_VALUE_"))}


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = _strip(os.environ, local_env_vars())
    env.update({"GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C", "GIT_OPTIONAL_LOCKS": "0"})
    if extra:
        env.update(extra)
    return env


@functools.lru_cache(maxsize=256)
def _filter_overrides(git_dir: str, config_mtime: float) -> tuple[str, ...]:
    del config_mtime  # part of the cache key only: the config changed, ask again
    out = subprocess.run(
        ["git", "--git-dir", git_dir, *SAFE_CONFIG, "config", "--get-regexp", r"^filter\."],
        capture_output=True, text=True, env=clean_env(), check=False, timeout=30).stdout
    drivers = sorted({line.split()[0].split(".")[1] for line in out.splitlines() if line.strip()})
    args: list[str] = []
    for driver in drivers:
        for key in ("clean", "smudge", "process"):
            args += ["-c", f"filter.{driver}.{key}="]
    return tuple(args)


def _common_dir(repo: Path) -> Path | None:
    dot_git = repo / ".git"
    if dot_git.is_dir():
        return dot_git
    if dot_git.is_file():  # a worktree: "gitdir: <main>/.git/worktrees/<name>"
        text = dot_git.read_text(encoding="utf-8", errors="replace").strip()
        if text.startswith("gitdir:"):
            gitdir = (repo / text.split(":", 1)[1].strip()).resolve()
            common = gitdir / "commondir"
            if common.is_file():
                return (gitdir / common.read_text().strip()).resolve()
            return gitdir
    return None


def config_args(repo: Path) -> tuple[str, ...]:
    common = _common_dir(repo)
    if common is None:
        return SAFE_CONFIG
    config = common / "config"
    mtime = config.stat().st_mtime if config.exists() else 0.0
    return SAFE_CONFIG + _filter_overrides(str(common), mtime)


def run(args: Sequence[str], cwd: Path, *, check: bool = True, input_text: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``git ARGS`` in ``cwd`` safely; a failure is ``git_failed`` with git's own words."""
    argv = ["git", *config_args(cwd), *args]
    try:
        result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, input=input_text,
                                env=clean_env(env), timeout=timeout, check=False)
    except (FileNotFoundError, NotADirectoryError) as exc:
        if not Path(cwd).is_dir():  # the process could not start in it
            raise DevflowError(Code.NOT_A_GIT_REPO, f"{cwd} is not a directory",
                               hint="pass the path of a git repository") from exc
        raise DevflowError(Code.GIT_FAILED, "git is not installed or not on PATH",
                           hint="install git (2.25 or newer)") from exc
    except subprocess.TimeoutExpired as exc:
        raise DevflowError(Code.GIT_FAILED, f"git {args[0]} did not finish in {timeout:.0f}s",
                           hint=f"look at the repository in {cwd}") from exc
    if check and result.returncode != 0:
        raise GitError(args, cwd, result)
    return result


def out(args: Sequence[str], cwd: Path, *, check: bool = True,
        env: Mapping[str, str] | None = None) -> str:
    return run(args, cwd, check=check, env=env).stdout.strip()


class GitError(DevflowError):
    def __init__(self, args: Sequence[str], cwd: Path,
                 result: subprocess.CompletedProcess[str]) -> None:
        self.stderr = result.stderr.strip()
        self.returncode = result.returncode
        super().__init__(
            Code.GIT_FAILED,
            f"git {' '.join(args[:3])} failed in {cwd} (exit {result.returncode}): "
            f"{self.stderr.splitlines()[-1] if self.stderr else 'no message'}",
            hint="the message above is git's own; fix the repository state it names",
            stderr=self.stderr[-2000:])
