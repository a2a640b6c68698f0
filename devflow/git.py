"""Running git: the one place devflow starts a git process (DESIGN.md §3.6).

Every git child gets:

- an environment without git's repository-local variables (those ``git rev-parse
  --local-env-vars`` lists: ``GIT_DIR``, ``GIT_WORK_TREE``, ``GIT_INDEX_FILE``, …) and
  without ``GIT_CONFIG_*`` pairs, so a caller's environment cannot redirect it; the C
  locale, so git's words can be read;
- where the caller knows them, its git directory and work tree named explicitly
  (``--git-dir``, ``--work-tree``), so no ``.git`` file decides where git writes;
- ``-c`` options that stop any configuration from making git run a program: no hooks,
  no fsmonitor, no commit signing or signature checks, no background gc, no transport
  (a partial clone's lazy fetch would run ssh or a remote helper), no submodule
  recursion, and every filter driver that any level configures neutralized.

Filter drivers are named by the configuration itself, so they are enumerated: ``git
config --list --show-origin --includes`` with the same git directory, work tree and
environment as the command, which sees every level git would (system, global, the
common config, the per-worktree config, included files). The answer is cached by
the stat of every file it came from, of every file an include names, of the files
each level would be read from even when they do not exist yet, and of the git
directory's ``HEAD`` (an ``includeIf "onbranch:…"`` follows the branch checked out);
it is remembered between processes too (``configure``), under the same stamps, so a
command asks again only when one of those files changed.

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
#: What no configuration may turn on for devflow's git, whatever level sets it. The
#: program-running keys not listed cannot run in the commands devflow uses: editors
#: (every commit has -m), merge drivers (nothing merges), external diffs and textconv
#: (the one diff passes --no-ext-diff --no-textconv), pagers (output is never a
#: terminal), ssh, remote helpers, upload-pack and credential helpers (no transport).
SAFE_CONFIG: Final = (
    "-c", "core.fsmonitor=false",
    "-c", "core.hooksPath=/dev/null",
    "-c", "commit.gpgSign=false",
    "-c", "tag.gpgSign=false",
    "-c", "log.showSignature=false",
    "-c", "gc.auto=0",
    "-c", "maintenance.auto=false",
    "-c", "core.pager=cat",
    "-c", "credential.helper=",
    "-c", "protocol.allow=never",
    "-c", "submodule.recurse=false",
    "-c", "advice.detachedHead=false",
)
_FILTER_KEYS: Final = ("clean=", "smudge=", "process=", "required=false")
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


# -- where git runs -----------------------------------------------------------------------
def place_args(git_dir: Path | None, work_tree: Path | None) -> tuple[str, ...]:
    args: tuple[str, ...] = ()
    if git_dir is not None:
        args += (f"--git-dir={git_dir}",)
    if work_tree is not None:
        args += (f"--work-tree={work_tree}",)
    return args


def command(args: Sequence[str], cwd: Path, *, git_dir: Path | None = None,
            work_tree: Path | None = None) -> list[str]:
    """The argv of ``git ARGS`` as devflow runs it (explicit places, neutralizing -c)."""
    return ["git", *place_args(git_dir, work_tree), *config_args(cwd, git_dir, work_tree),
            *args]


def run(args: Sequence[str], cwd: Path, *, git_dir: Path | None = None,
        work_tree: Path | None = None, check: bool = True, input_text: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``git ARGS`` in ``cwd`` safely; a failure is ``git_failed`` with git's own words.

    ``git_dir`` / ``work_tree`` name where git works; without them git finds its
    repository from ``cwd``, which is for repositories a person named, not for a run's
    worktree (whose ``.git`` file the agent can rewrite).
    """
    try:
        argv = command(args, cwd, git_dir=git_dir, work_tree=work_tree)
        # bytes that are not UTF-8 (a Latin-1 file name or text) survive as surrogates
        # rather than fail the command: paths round-trip through os, text is replaced
        result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, input=input_text,
                                errors="surrogateescape", env=clean_env(env), timeout=timeout,
                                check=False)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise _not_started(cwd) from exc
    except subprocess.TimeoutExpired as exc:
        raise DevflowError(Code.GIT_FAILED, f"git {args[0]} did not finish in {timeout:.0f}s",
                           hint=f"look at the repository in {cwd}") from exc
    if check and result.returncode != 0:
        raise GitError(args, cwd, result)
    return result


def shown(text: str) -> str:
    """git's output for a person or a document: what was not UTF-8 (kept by ``run`` as
    surrogates) replaced by U+FFFD."""
    return text.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")


def _not_started(cwd: Path) -> DevflowError:
    if not Path(cwd).is_dir():  # the process could not start in it
        return DevflowError(Code.NOT_A_GIT_REPO, f"{cwd} is not a directory",
                            hint="pass the path of a git repository")
    return DevflowError(Code.GIT_FAILED, "git is not installed or not on PATH",
                        hint="install git (2.25 or newer)")


def out(args: Sequence[str], cwd: Path, *, git_dir: Path | None = None,
        work_tree: Path | None = None, check: bool = True,
        env: Mapping[str, str] | None = None) -> str:
    return run(args, cwd, git_dir=git_dir, work_tree=work_tree, check=check,
               env=env).stdout.strip()


class GitError(DevflowError):
    def __init__(self, args: Sequence[str], cwd: Path,
                 result: subprocess.CompletedProcess[str]) -> None:
        self.stderr = result.stderr.strip()
        self.returncode = result.returncode
        self.cwd = Path(cwd)
        super().__init__(
            Code.GIT_FAILED,
            f"git {' '.join(args[:3])} failed in {cwd} (exit {result.returncode}): "
            f"{self.stderr.splitlines()[-1] if self.stderr else 'no message'}",
            hint="the message above is git's own; fix the repository state it names",
            stderr=self.stderr[-2000:])


# -- what any configuration level could make git run ---------------------------------------
#: a file's identity and contents as stat sees them; None when it does not exist
_Stamp = tuple[int, int, int, int] | None
#: (cwd, git dir, work tree, the files of each level) -> (the files the answer came from,
#: their stamps, the -c options)
_SEEN: dict[tuple[str, ...], tuple[tuple[str, ...], tuple[_Stamp, ...], tuple[str, ...]]] = {}


def config_args(cwd: Path, git_dir: Path | None = None,
                work_tree: Path | None = None) -> tuple[str, ...]:
    """``SAFE_CONFIG`` and the ``-c`` that neutralize every filter driver git would see for
    a command run with these places; cached while no config file involved changed."""
    levels = _level_files(cwd, git_dir)  # which files depends on the environment too
    key = (str(cwd) if git_dir is None else "", str(git_dir), str(work_tree), *levels)
    seen = _SEEN.get(key) or _recalled(key)
    if seen is not None and _stamps(seen[0]) == seen[1]:
        _SEEN[key] = seen
        return seen[2]
    files = set(levels) | set(seen[0] if seen else ())
    while True:  # stamped before asking, so a change made meanwhile shows next time
        ordered = tuple(sorted(files))
        stamps = _stamps(ordered)
        origins, drivers = _enumerate(cwd, git_dir, work_tree)
        if origins <= files:
            break
        files |= origins  # an include not seen before: stamp it too, and ask again
    args = SAFE_CONFIG + tuple(a for d in sorted(drivers) for k in _FILTER_KEYS
                               for a in ("-c", f"filter.{d}.{k}"))
    if len(_SEEN) > 512:
        _SEEN.clear()
    _SEEN[key] = (ordered, stamps, args)
    if _memo:  # saved with the app's other answers when it closes
        _memo[0].put(_memo_key(key), [list(ordered), stamps, list(args)])
    return args


def _memo_key(key: tuple[str, ...]) -> str:
    """The answer's key between processes: which includes git follows depends on its
    version too (``hasconfig:`` is 2.36's), so the git binary is part of it."""
    return memos.key("git-config", _git_binary(), *key)


@functools.cache
def _git_binary() -> str:
    found = shutil.which("git", path=clean_env().get("PATH"))
    return (memos.file_stamp(found) if found else None) or "no git"


def _recalled(key: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[_Stamp, ...],
                                             tuple[str, ...]] | None:
    """What another process found for ``key``, to be used while its stamps still hold."""
    known = _memo[0].get(_memo_key(key)) if _memo else None
    try:
        files, stamps, args = known  # type: ignore[misc]
        return (tuple(files), tuple(tuple(st) if st is not None else None for st in stamps),
                tuple(args))
    except (TypeError, ValueError):  # absent, or not of this shape
        return None


def _stamps(files: tuple[str, ...]) -> tuple[_Stamp, ...]:
    stamps: list[_Stamp] = []
    for name in files:
        try:
            st = os.stat(name)
        except OSError:
            stamps.append(None)
        else:
            stamps.append((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(stamps)


def _level_files(cwd: Path, git_dir: Path | None) -> list[str]:
    """The files git reads each level from, whether they exist or not (a file created
    later must change the cache key)."""
    env = os.environ
    files = []
    if not env.get("GIT_CONFIG_NOSYSTEM"):
        files.append(env.get("GIT_CONFIG_SYSTEM") or "/etc/gitconfig")
    if "GIT_CONFIG_GLOBAL" in env:
        files.append(env["GIT_CONFIG_GLOBAL"])
    else:
        home = env.get("HOME", "")
        xdg = env.get("XDG_CONFIG_HOME") or (f"{home}/.config" if home else "")
        files += [f"{xdg}/git/config" if xdg else "", f"{home}/.gitconfig" if home else ""]
    dirs = (git_dir, _common_of(git_dir)) if git_dir is not None else _discover(cwd)
    own, common = dirs
    if common is not None:
        files.append(str(common / "config"))
    if own is not None:
        files += [str(own / "config.worktree"), str(own / "HEAD")]
    return [os.path.normpath(f) for f in files if f]


@functools.lru_cache(maxsize=512)
def _common_of(git_dir: Path) -> Path:
    """The common git directory of ``git_dir`` (a worktree's admin directory names it; an
    admin directory never changes repository, so this is asked once)."""
    try:
        text = (git_dir / "commondir").read_text(encoding="utf-8").strip()
    except OSError:
        return git_dir
    return (git_dir / text).resolve()


def common_dir_at(top: Path) -> Path | None:
    """The common git directory of the repository whose top is ``top``, read from its
    ``.git`` the way git reads it; None when ``top`` has no ``.git`` of its own."""
    dot_git = top / ".git"
    if not dot_git.exists():
        return None
    return _discover(top)[1]


def _discover(cwd: Path) -> tuple[Path | None, Path | None]:
    """(git dir, common dir) of the repository at ``cwd``, read from files the way git
    finds them (``.git`` a directory, or a file naming one); Nones when not found."""
    for top in (cwd, *cwd.parents):
        dot_git = top / ".git"
        if dot_git.is_dir():
            return dot_git, _common_of(dot_git)
        if dot_git.is_file():
            text = dot_git.read_text(encoding="utf-8", errors="replace").strip()
            if not text.startswith("gitdir:"):
                return None, None
            own = (top / text.split(":", 1)[1].strip()).resolve()
            return own, _common_of(own)
    return None, None


def _enumerate(cwd: Path, git_dir: Path | None,
               work_tree: Path | None) -> tuple[set[str], set[str]]:
    """(the files the configuration came from and those its includes name, the filter
    drivers it configures), as git sees them for a command run with these places."""
    argv = ["git", *place_args(git_dir, work_tree), *SAFE_CONFIG,
            "config", "--list", "--show-origin", "--includes", "-z"]
    try:
        result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True,
                                errors="surrogateescape", env=clean_env(), check=False,
                                timeout=30)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise _not_started(cwd) from exc
    except subprocess.TimeoutExpired as exc:
        raise DevflowError(Code.GIT_FAILED, "git config --list did not finish in 30s",
                           hint=f"look at the repository in {cwd}") from exc
    if result.returncode not in (0, 1):  # 1: nothing configured; else a broken config
        raise GitError(["config", "--list"], cwd, result)
    fields = result.stdout.split("\0")
    files: set[str] = set()
    drivers: set[str] = set()
    for origin, entry in zip(fields[0::2], fields[1::2], strict=False):
        name, _, value = entry.partition("\n")
        source = None
        if origin.startswith("file:"):  # relative to cwd when git found the repository
            source = os.path.normpath(os.path.join(cwd, origin.removeprefix("file:")))
            files.add(source)
        section, _, rest = name.partition(".")
        section = section.lower()
        if section == "filter" and "." in rest:
            drivers.add(_driver(rest.rpartition(".")[0], cwd))
        elif section in ("include", "includeif") and name.lower().endswith(".path") and value:
            files.add(_include_target(value, source))
    return files, drivers


def _driver(name: str, cwd: Path) -> str:
    if "=" in name or "\n" in name or not name:
        raise DevflowError(
            Code.GIT_FAILED, f"the git configuration of {cwd} names a filter driver "
                             f"{name!r} that devflow cannot neutralize",
            hint="rename the filter driver (its name must not contain '=' or a newline)")
    return name


def _include_target(value: str, source: str | None) -> str:
    """The file an ``include.path`` / ``includeIf.*.path`` value names (git's rules:
    ``~`` is the home directory, a relative path is relative to the including file)."""
    path = os.path.expanduser(value)
    if not os.path.isabs(path) and source is not None:
        path = os.path.join(os.path.dirname(source), path)
    return os.path.normpath(path)
