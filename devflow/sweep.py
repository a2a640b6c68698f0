"""The restart sweep (``devflow sweep``, from cron): what a crash or a clock leaves to do.

1. Runs whose lease expired: their driver is gone. The agent it left is killed if it
   still lives on this host, known by its pid *and* start time (a pid that another
   process has since taken is left alone, and the sweep says so); killing a sandboxed
   agent's ``bwrap`` ends its whole sandbox. The interrupted attempt is recorded
   (``phase.interrupted`` with what was found), the lease is cleared and the run is
   runnable again, its worktree re-created if it went missing. After
   ``max_recoveries`` recoveries, or with ``policy="fail"``, the run fails with
   ``process_restart_unrecovered`` instead.
2. Gates: warnings before deadlines, escalation steps, timeouts (``escalation.step_due``).
3. Terminal runs without a report get one.
4. Schedule triggers: due ticks are decided and started, missed ones recorded
   (``devflow.engine.schedule``; not in a dry run).
5. Runs devflow paused because a fault of the machine blocked them (``blocked``: a full
   disk, a git lock a live process held) are resumed once the cause looks gone
   (``machine.cleared``); a worker (or ``devflow run drive``) then continues them. One
   whose cause is still there stays paused, and the sweep says why.

A run whose driver still heartbeats is never touched: its lease has not expired.
Every change is re-checked under the run's lock, so sweeps may run beside workers
and beside each other.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devflow import (
    artifacts,
    escalation,
    events,
    logs,
    machine,
    model,
    states,
    transitions,
    worktree,
)
from devflow.backends import process
from devflow.engine import context, control, deliveries, finish, schedule, workspace
from devflow.engine.context import Context
from devflow.errors import Code, DevflowError
from devflow.states import RunState
from devflow.store import RunTx

log = logs.get_logger("devflow.sweep")


@dataclass(frozen=True)
class Action:
    run_id: str | None
    kind: str
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "action": self.kind, **self.detail}


@dataclass
class SweepResult:
    dry_run: bool
    actions: list[Action] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "actions": [a.to_json() for a in self.actions]}


def sweep(ctx: Context, *, policy: str = "resume", max_recoveries: int | None = None,
          dry_run: bool = False) -> SweepResult:
    if policy not in ("resume", "fail"):
        raise DevflowError(Code.INVALID_INPUT, f"unknown policy {policy!r}",
                           hint="--policy resume (default) or --policy fail")
    limit = ctx.settings.max_recoveries if max_recoveries is None else max_recoveries
    result = SweepResult(dry_run)
    for run_id in ctx.store.leases.expired():
        result.actions += _recover(ctx, run_id, policy, limit, dry_run)
    for approval in ctx.store.approvals.due(ctx.clock()):
        result.actions += _gate(ctx, approval, dry_run)
    for run_id in ctx.store.runs.missing_reports():
        if not dry_run:
            path = finish.write_report(ctx, run_id)
            if path is None:  # a full disk, still: the event says why
                result.actions.append(Action(run_id, "report_blocked"))
            else:
                result.actions.append(Action(run_id, "report_written", {"path": str(path)}))
        else:
            result.actions.append(Action(run_id, "report_missing"))
    if not dry_run:
        result.actions += _triggers(ctx)
    for run in ctx.store.runs.find(states_in=[RunState.PAUSED], limit=10_000):
        if run.blocked is not None:
            result.actions.append(_unblock(ctx, run, dry_run))
    return result


def _triggers(ctx: Context) -> list[Action]:
    """The schedule triggers' due ticks, and the webhook deliveries whose starter died."""
    actions = [Action(tick.run_id, f"tick_{tick.outcome}", {
        "trigger": tick.trigger, "scheduled_at": tick.scheduled_at.isoformat(),
        **({"reason": tick.reason} if tick.reason else {})})
        for tick in schedule.evaluate_all(ctx)]
    actions += [Action(got.run_id, f"delivery_{got.outcome}", {
        "trigger": got.delivery.trigger, "delivery": got.delivery.delivery_id,
        **({"reason": got.delivery.reason} if got.delivery.reason else {})})
        for got in deliveries.start_stale(ctx)]
    return actions


# -- runs a fault of the machine blocked --------------------------------------------------
def _unblock(ctx: Context, run: model.Run, dry_run: bool) -> Action:
    blocked = machine.Blocked.from_json(run.blocked)
    if blocked is None or not machine.cleared(blocked):
        return Action(run.id, "still_blocked", dict(run.blocked or {}))
    if dry_run:
        return Action(run.id, "would_unblock", {"kind": blocked.kind, "path": blocked.path})

    def fn(tx: RunTx) -> model.Run | None:
        if tx.state is not RunState.PAUSED or "blocked" not in tx.run.options:
            return None  # resumed or ended meanwhile
        return control.resume_in(tx, "sweep", f"the cause is gone: {blocked.message}", None)
    resumed = ctx.change(run.id, fn)
    if resumed is None:
        return Action(run.id, "still_blocked", {"kind": blocked.kind, "changed": False})
    return Action(run.id, "unblocked", {
        "kind": blocked.kind, "path": blocked.path, "state": str(resumed.state),
        "next": f"a worker continues it, or `devflow run drive {run.id}`"})


# -- expired leases -----------------------------------------------------------------------
@dataclass(frozen=True)
class _Found:
    agents: list[dict[str, Any]]
    artifact: str
    worktree: str


def _inspect(ctx: Context, run: model.Run, kill: bool) -> _Found:
    agents = []
    for inv in ctx.store.runs.invocations(run.id):
        if inv.ended_at is not None:
            continue
        seen: dict[str, Any] = {"pid": inv.pid, "host": inv.host, "phase": inv.phase_key,
                                "attempt": inv.attempt}
        if inv.host != ctx.host or not inv.pgid or not inv.pid:
            seen["agent"] = "not checked (another host)"
        else:
            seen["agent"] = _agent(inv, kill)
        agents.append(seen)
    path = Path(run.worktree)
    if run.host != ctx.host and not path.exists():
        return _Found(agents, "not checked", "on another host")
    tree = worktree.find(Path(run.repo), path, run.branch)
    if tree is None:
        return _Found(agents, "absent", "missing")
    active = [p for p in ctx.store.runs.phases(run.id) if p.state in states.PHASE_ACTIVE]
    present = "absent"
    if active and active[0].definition.artifact is not None:
        sha = artifacts.file_sha(path, active[0].definition.artifact.path,
                                 ctx.settings.artifact_max_bytes)
        present = "present" if sha else "absent"
    dirty = "dirty" if not worktree.is_clean(tree) or (
        run.checkpoint_sha and worktree.head(tree) != run.checkpoint_sha) else "clean"
    return _Found(agents, present, dirty)


def _agent(inv: model.Invocation, kill: bool) -> str:
    """What became of an unfinished invocation's process: killed, gone, or left alone."""
    assert inv.pid is not None and inv.pgid is not None
    if inv.process_start is None:
        return "not checked: no start time recorded (an invocation older than devflow's " \
               "migration 0002)"
    marks = context.marks(inv)
    if not kill:
        if process.remains(inv.pid, inv.pgid, inv.process_start, marks):
            return "alive"
        return _gone_or_reused(inv)
    outcome = context.stop(inv)
    if outcome == "signalled":
        return "killed" if _wait_gone(inv, marks) else "kill sent, still alive"
    return _gone_or_reused(inv) if outcome in ("gone", "reused") else outcome


def _gone_or_reused(inv: model.Invocation) -> str:
    assert inv.pid is not None
    now = process.start_time(inv.pid)
    if now is not None and now != inv.process_start:
        return f"gone; pid {inv.pid} now belongs to another process, left alone"
    return "gone"


def _wait_gone(inv: model.Invocation, marks: dict[str, str], seconds: float = 5.0) -> bool:
    assert inv.pid is not None and inv.pgid is not None and inv.process_start is not None
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not process.remains(inv.pid, inv.pgid, inv.process_start, marks):
            return True
        time.sleep(0.05)
    return False


def _recover(ctx: Context, run_id: str, policy: str, limit: int, dry_run: bool) -> list[Action]:
    run = ctx.store.runs.get(run_id)
    found = _inspect(ctx, run, kill=not dry_run)
    if dry_run:
        return [Action(run_id, "would_recover", {"owner": run.lease_owner,
                                                 "agents": found.agents})]
    alive = _worker_alive(ctx, run)
    outcome = ctx.change(run_id, lambda tx: _recover_in(tx, found, policy, limit, alive))
    if outcome is None:
        return []  # its driver renewed the lease meanwhile, or another sweep got there
    actions = [outcome]
    if outcome.kind == "failed":  # its report was written with the commit
        return actions
    fresh = ctx.store.runs.get(run_id)
    if fresh.host == ctx.host and not (Path(fresh.worktree) / ".git").exists():
        try:
            workspace.ensure_worktree(ctx, fresh)
            actions.append(Action(run_id, "worktree_recreated", {"path": fresh.worktree}))
        except DevflowError as exc:
            actions.append(Action(run_id, "worktree_missing", {"error": exc.message}))
    return actions


def _worker_alive(ctx: Context, run: model.Run) -> bool:
    """Whether the lease's owner is a worker that heartbeat after the lease ran out: its
    drive stopped (the database was away, a fault of the machine), the worker did not
    die. A worker stopped (SIGSTOP) or killed has no heartbeat after that."""
    expired = run.lease_expires_at
    if run.lease_owner is None or expired is None:
        return False
    return any(w.id == run.lease_owner and w.stopped_at is None and w.heartbeat_at > expired
               for w in ctx.store.leases.workers())


def _recover_in(tx: RunTx, found: _Found, policy: str, limit: int,
                alive: bool = False) -> Action | None:
    """Take the run back from a driver whose lease expired. A driver whose worker lives
    on stopped for the database, not by dying: that is not counted against
    ``max_recoveries`` and never fails the run (issue 20)."""
    run = tx.run
    if run.lease_owner is None or run.lease_expires_at is None \
            or run.lease_expires_at > tx.now or run.state in states.TERMINAL:
        return None
    interrupted = transitions.interrupt_in(
        tx, "its driver stopped; recovered by the sweep",
        {"agents": found.agents, "artifact": found.artifact, "worktree": found.worktree})
    recoveries = run.recoveries + (0 if alive else 1)
    tx.set_run(lease_owner=None, lease_expires_at=None, recoveries=recoveries)
    detail: dict[str, Any] = {"owner": run.lease_owner, "recoveries": recoveries,
                              "phases": interrupted, "agents": found.agents}
    if alive:
        detail["driver"] = "alive: its worker still heartbeats (the database was away)"
    tx.event(events.RUN_RECOVERED.new(payload=detail))
    if not alive and (policy == "fail" or recoveries > limit):
        reason = (f"the run's driver stopped {recoveries} time(s); "
                  + ("--policy fail" if policy == "fail" else f"max_recoveries is {limit}"))
        transitions.terminate_in(tx, RunState.FAILED, by="sweep",
                                 code=str(Code.PROCESS_RESTART_UNRECOVERED), reason=reason)
        return Action(run.id, "failed", {**detail, "reason": reason})
    return Action(run.id, "recovered", detail)


# -- gates --------------------------------------------------------------------------------
def _gate(ctx: Context, approval: model.Approval, dry_run: bool) -> Iterable[Action]:
    if dry_run:
        return [Action(approval.run_id, "gate_due", {"approval_id": approval.id,
                                                     "gate": approval.gate})]
    actions = []
    for _ in range(64):  # one thing per transaction, in order, until nothing is due
        step = ctx.change(approval.run_id,
                          lambda tx: escalation.step_due(tx, approval.id))
        if step is None:
            break
        actions.append(Action(approval.run_id, step.kind,
                              {"approval_id": approval.id, "gate": approval.gate,
                               **dict(step.detail)}))
    return actions
