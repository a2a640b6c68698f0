"""Housekeeping: remove the worktrees of ended runs (and their branches when asked).

Nothing that exists nowhere else is deleted unless a person names the run with
``force``: a worktree is kept when it holds changes not committed or untracked files,
or when its run failed or was aborted while an attempt's work was never committed
(the worktree may hold the agent's only copy of it), or when git does not know it and
so cannot say what it holds. What was removed is recorded as events of the run
(``worktree.removed``, ``branch.deleted``): a second prune does not list it again, and
``run status`` and the report show it (the report is rewritten with it).

A run's salvage refs (``refs/heads/devflow/<run>/salvage-<n>``: what a recovery reset
dropped, found nowhere else) outlive its branch: ``--delete-branches`` lists them as
kept, and deletes them only for a run named with ``force`` (``salvage.deleted``).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devflow import events, model, report, worktree
from devflow.engine.context import Context
from devflow.errors import DevflowError
from devflow.states import TERMINAL, RunState
from devflow.store import RunTx

#: at most this many paths are named in a reason
_NAMED = 3


@dataclass
class Item:
    """One ended run that prune acted on, would act on, or kept."""

    run: model.Run
    #: the worktree is (or would be) removed now / the branch deleted now
    remove: bool = False
    delete_branch: bool = False
    bytes: int = 0
    #: why the worktree is kept (empty: it is not)
    kept: list[str] = field(default_factory=list)
    #: salvage refs deleted (or to be) now / kept since the run was not forced
    salvage: list[str] = field(default_factory=list)
    salvage_kept: list[str] = field(default_factory=list)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        run = self.run
        body: dict[str, Any] = {"run_id": run.id, "state": str(run.state),
                                "worktree": run.worktree if self.remove else None,
                                "bytes": self.bytes,
                                "branch": run.branch if self.delete_branch else None}
        body["salvage"] = list(self.salvage)
        if self.kept:
            body.update(worktree=run.worktree, kept=list(self.kept), force=force_hint(run.id))
        if self.salvage_kept:
            body.update(salvage_kept=list(self.salvage_kept),
                        force=force_hint(run.id, delete_branches=True))
        if self.error:
            body["error"] = self.error
        return body


def force_hint(run_id: str, *, delete_branches: bool = False) -> str:
    flags = "--delete-branches " if delete_branches else ""
    return f"devflow worktree prune {flags}--force {run_id}"


def prune(ctx: Context, *, older_than: float | None = None, delete_branches: bool = False,
          dry_run: bool = False, force: Sequence[str] = ()) -> list[Item]:
    forced = {ctx.store.runs.get(run_id).id for run_id in force}  # run_not_found first
    now = ctx.clock()
    recorded: dict[str, list[model.Event]] = {}
    for event in ctx.store.events.of_types(events.HOUSEKEEPING_NAMES):
        recorded.setdefault(event.run_id, []).append(event)
    items = []
    for run in ctx.store.runs.find(states_in=sorted(TERMINAL), limit=1_000_000):
        if run.host != ctx.host:
            continue
        if older_than is not None and (run.ended_at is None
                                       or (now - run.ended_at).total_seconds() < older_than):
            continue
        item = _plan(ctx, run, events.housekeeping(recorded.get(run.id, [])), delete_branches,
                     forced=run.id in forced)
        if item is None:
            continue
        if not dry_run and not item.kept:
            _act(ctx, item)
        items.append(item)
    return items


def _plan(ctx: Context, run: model.Run, done: model.Housekeeping, delete_branches: bool,
          *, forced: bool) -> Item | None:
    """What prune would do to the run, and why it keeps its worktree; None: nothing to do."""
    path, repo = Path(run.worktree), Path(run.repo)
    remove = done.worktree_pruned_at is None and path.exists()
    branch = (delete_branches and done.branch_deleted_at is None and repo.is_dir()
              and worktree.branch_exists(repo, run.branch))
    salvage = worktree.salvage_refs(repo, run.branch) if delete_branches and repo.is_dir() else []
    if not remove and not branch and not salvage:
        return None
    item = Item(run, remove=remove, delete_branch=branch,
                bytes=worktree.disk_usage(path) if remove else 0)
    if remove and not forced:
        item.kept = _unsaved(ctx, run)
    if item.kept:
        item.remove = item.delete_branch = False  # git deletes no branch checked out
        item.bytes = 0
    if forced:
        item.salvage = salvage
    else:
        item.salvage_kept = [f"{ref}: work a recovery reset dropped, found nowhere else "
                             f"(`git log {ref}` shows it)" for ref in salvage]
    return item


def _unsaved(ctx: Context, run: model.Run) -> list[str]:
    """Why removing the run's worktree could lose work that exists nowhere else."""
    reasons = []
    tree = worktree.find(Path(run.repo), Path(run.worktree), run.branch)
    if tree is None:
        reasons.append(f"git does not know it as a worktree of {run.repo}, so devflow cannot "
                       "tell what it holds")
    else:
        changed, untracked = worktree.unsaved(tree)
        if changed:
            reasons.append(f"{len(changed)} uncommitted change(s): {_some(changed)}")
        if untracked:
            reasons.append(f"{len(untracked)} untracked file(s): {_some(untracked)}")
    if run.state in (RunState.FAILED, RunState.ABORTED):
        committed = {(a.phase_key, a.attempt) for a in ctx.store.runs.artifacts(run.id)}
        lost = [p for p in ctx.store.runs.phases(run.id)
                if p.attempt > 0 and (p.key, p.attempt) not in committed]
        if lost:
            last = max(lost, key=lambda p: (p.started_at is not None, p.started_at, p.position))
            reasons.append(f"the run {run.state} and attempt {last.attempt} of phase {last.key} "
                           "was never committed: the worktree may hold the agent's only copy "
                           "of its work")
    return reasons


def _some(paths: list[str]) -> str:
    return ", ".join(paths[:_NAMED]) + (", …" if len(paths) > _NAMED else "")


def _act(ctx: Context, item: Item) -> None:
    run = item.run
    path, repo = Path(run.worktree), Path(run.repo)
    try:
        worktree.remove(repo, path, branch=run.branch if item.delete_branch else None)
        worktree.delete_refs(repo, item.salvage)
    except DevflowError as exc:
        item.error = exc.message
    if item.remove and path.exists():
        item.remove, item.bytes = False, 0
        item.error = item.error or f"{path} could not be removed entirely"
    if item.delete_branch and repo.is_dir() and worktree.branch_exists(repo, run.branch):
        item.delete_branch = False
        item.error = item.error or f"the branch {run.branch} could not be deleted"
    if item.salvage and repo.is_dir() and (left := worktree.salvage_refs(repo, run.branch)):
        item.salvage = [ref for ref in item.salvage if ref not in left]
        item.error = item.error or f"{', '.join(left)} could not be deleted"
    if not item.remove and not item.delete_branch and not item.salvage:
        return
    ctx.change(run.id, functools.partial(_record, item=item))
    recorded = ctx.store.events.of_types(events.HOUSEKEEPING_NAMES, run.id)
    report.mark(Path(run.workspace), events.housekeeping(recorded))


def _record(tx: RunTx, item: Item) -> None:
    run = tx.run
    if item.remove:
        tx.event(events.WORKTREE_REMOVED.new(payload={
            "path": run.worktree, "bytes": item.bytes},
            key=f"{run.id}:{events.WORKTREE_REMOVED.name}"))
    if item.delete_branch:
        tx.event(events.BRANCH_DELETED.new(payload={"branch": run.branch},
                                           key=f"{run.id}:{events.BRANCH_DELETED.name}"))
    if item.salvage:
        refs = list(item.salvage)
        tx.event(events.SALVAGE_DELETED.new(
            payload={"refs": refs},
            key=f"{run.id}:{events.SALVAGE_DELETED.name}:"
                + hashlib.sha256("\0".join(refs).encode()).hexdigest()[:16]))
