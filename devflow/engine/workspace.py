"""A run's workspace on disk: ``<workspace>/<run_id>/`` holds the worktree (``main/``),
the kept artifacts, the prompts, the agents' logs and the report.

Each kind of file has one directory per run, and an attempt's files are named after
its phase: ``prompts/<phase>.attempt-<n>.md``, ``artifacts/<phase>.attempt-<n>.json``
(``.invalid.json`` for the bytes of an artifact that was refused),
``logs/<phase>.attempt-<n>.stdout.log``. A phase creates files, not directories: a new
directory costs the file system several times what a new file in an existing one does.
"""

from __future__ import annotations

from pathlib import Path

from devflow import events, model, worktree
from devflow.backends.base import attempt_name
from devflow.engine.context import Context
from devflow.store import RunTx


def paths_for(ctx: Context, run_id: str) -> tuple[Path, Path]:
    """(workspace, worktree) of a new run."""
    workspace = ctx.run_dir(run_id)
    return workspace, workspace / "main"


def artifact_copy(run: model.Run, phase: str, attempt: int) -> Path:
    return Path(run.workspace) / "artifacts" / f"{attempt_name(phase, attempt)}.json"


def invalid_copy(run: model.Run, phase: str, attempt: int) -> Path:
    """Where the bytes of an attempt's invalid artifact are kept, for a person to read."""
    return Path(run.workspace) / "artifacts" / f"{attempt_name(phase, attempt)}.invalid.json"


def prompt_file(run: model.Run, phase: str, attempt: int) -> Path:
    return Path(run.workspace) / "prompts" / f"{attempt_name(phase, attempt)}.md"


def log_dir(run: model.Run) -> Path:
    return Path(run.workspace) / "logs"


def ensure_worktree(ctx: Context, run: model.Run, lease: model.Lease | None = None, *,
                    hand_back: bool = False) -> model.Run | None:
    """Create the run's worktree if it is missing (from the run branch when it exists).

    Returns the run as the transaction recording the worktree left it, or None when the
    worktree was there. ``hand_back``: that transaction also gives ``lease`` up (a run
    started to be left to workers).
    """
    path, repo = Path(run.worktree), Path(run.repo)
    if worktree.ready(repo, path, run.branch):
        return None
    from_branch = worktree.add(repo, path, run.branch, run.base_sha or run.base)
    included = worktree.copy_included(repo, path)
    def record(tx: RunTx) -> model.Run:
        if tx.run.host != ctx.host:
            tx.set_run(host=ctx.host)  # the run's worktree lives here from now on
        if hand_back:
            tx.set_run(lease_owner=None, lease_expires_at=None)
        tx.event(events.WORKTREE_CREATED.new(payload={
            "path": str(path), "branch": run.branch,
            "from": run.branch if from_branch else run.base_sha, "host": ctx.host,
            "included": included[:50]}))
        return tx.run
    return ctx.change(run.id, record, lease)
