"""Housekeeping: remove the worktrees of terminal runs (and their branches when asked)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from devflow import events, model, worktree
from devflow.engine.context import Context
from devflow.states import TERMINAL
from devflow.store import RunTx


def _record(tx: RunTx, event: model.NewEvent) -> None:
    tx.event(event)


def prune(ctx: Context, *, older_than: float | None = None, delete_branches: bool = False,
          dry_run: bool = False) -> list[dict[str, Any]]:
    now = ctx.clock()
    removed = []
    for run in ctx.store.runs.find(states_in=sorted(TERMINAL), limit=1_000_000):
        if run.host != ctx.host:
            continue
        if older_than is not None and (run.ended_at is None
                                       or (now - run.ended_at).total_seconds() < older_than):
            continue
        path, repo = Path(run.worktree), Path(run.repo)
        branch = delete_branches and repo.is_dir() and worktree.branch_exists(repo, run.branch)
        if not path.exists() and not branch:
            continue
        size = worktree.disk_usage(path) if path.exists() else 0
        if not dry_run:
            if repo.is_dir():
                worktree.remove(repo, path, branch=run.branch if branch else None)
            event = events.WORKTREE_REMOVED.new(payload={
                "path": run.worktree, "bytes": size, "branch_deleted": branch})
            ctx.change(run.id, functools.partial(_record, event=event))
        removed.append({"run_id": run.id, "worktree": run.worktree, "bytes": size,
                        "branch": run.branch if branch else None})
    return removed
