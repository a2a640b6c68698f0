"""What one attempt's agent sees: the sandbox's view of the run, built for each attempt.

The worktree and the agent's HOME (``<run workspace>/home``) are writable; the programs
the backend runs, the run's prompts and the repository's common git directory are
read-only, and so is what the persona adds; devflow's home, its workspace (the other
runs), its database and its configuration are never visible (``sandbox.Spec``).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from devflow import model, worktree
from devflow.backends import sandbox
from devflow.backends.base import Command, Task
from devflow.engine.context import Context
from devflow.store import sqlite_file


def argv(ctx: Context, run: model.Run, task: Task, command: Command,
         plan: sandbox.Plan) -> list[str]:
    """The agent's argv: in bubblewrap when the plan says so, as the backend built it
    otherwise."""
    if plan.bwrap is None:
        return list(command.argv)
    return [*sandbox.command(view(ctx, run, task, command), plan.bwrap), *command.argv]


def env(command: Command, plan: sandbox.Plan) -> dict[str, str]:
    """The agent's environment; in the sandbox, its temporary files go to its own /tmp."""
    if plan.bwrap is None or "TMPDIR" not in command.env:
        return command.env
    return {**command.env, "TMPDIR": "/tmp"}  # noqa: S108 - the sandbox's own tmpfs


def view(ctx: Context, run: model.Run, task: Task, command: Command) -> sandbox.Spec:
    box = task.persona.sandbox
    assert task.home is not None
    settings = ctx.settings
    return sandbox.Spec(
        worktree=task.worktree, home=task.home, tools=command.reads,
        read_only=tuple(_path(p) for p in box.read_only),
        writable=tuple(_path(p) for p in box.writable),
        locked=(task.prompt_file.parent, worktree.common_dir(Path(run.repo))),
        hidden=(settings.home, settings.workspace, *_database_files(settings.database_url)),
        network=box.network, path_env=command.env.get("PATH", os.defpath))


def _path(text: str) -> Path:
    """A persona's extra path as bubblewrap and the masks will meet it (links resolved)."""
    return Path(os.path.expanduser(text)).resolve()


def _database_files(url: str) -> tuple[Path, ...]:
    """An SQLite database's file and the files beside it (journal, WAL, shared memory)."""
    return _files_of(url, os.getcwd())


@functools.lru_cache(maxsize=8)
def _files_of(url: str, _cwd: str) -> tuple[Path, ...]:
    """``_database_files`` once per URL and working directory (a relative file's base):
    parsing the URL was a tenth of an attempt's sandbox plan."""
    path = sqlite_file(url)
    if path is None:
        return ()
    return (path, *(path.with_name(path.name + s) for s in ("-wal", "-shm", "-journal")))
