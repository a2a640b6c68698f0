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

from devflow import artifacts, escalation, logs, model, states, transitions, worktree
from devflow.backends import process
from devflow.engine import context, finish, workspace
from devflow.engine.context import Context
from devflow.errors import Code, DevflowError
from devflow.states import PhaseState, RunState
from devflow.store import RunTx

log = logs.get_logger("devflow.sweep")


@dataclass(frozen=True)
class Action:
    run_id: str
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
            result.actions.append(Action(run_id, "report_written", {"path": str(path)}))
        else:
            result.actions.append(Action(run_id, "report_missing"))
    return result


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
    outcome = ctx.change(run_id, lambda tx: _recover_in(tx, found, policy, limit))
    if outcome is None:
        return []  # its driver renewed the lease meanwhile, or another sweep got there
    actions = [outcome]
    if outcome.kind == "failed":
        finish.write_report(ctx, run_id)
        return actions
    fresh = ctx.store.runs.get(run_id)
    if fresh.host == ctx.host and not (Path(fresh.worktree) / ".git").exists():
        try:
            workspace.ensure_worktree(ctx, fresh)
            actions.append(Action(run_id, "worktree_recreated", {"path": fresh.worktree}))
        except DevflowError as exc:
            actions.append(Action(run_id, "worktree_missing", {"error": exc.message}))
    return actions


def _recover_in(tx: RunTx, found: _Found, policy: str, limit: int) -> Action | None:
    run = tx.run
    if run.lease_owner is None or run.lease_expires_at is None \
            or run.lease_expires_at > tx.now or run.state in states.TERMINAL:
        return None
    tx.close_invocations(outcome="interrupted",
                         reason="its driver stopped; recovered by the sweep")
    interrupted = []
    for phase in tx.phases():
        if phase.state in (PhaseState.RUNNING, PhaseState.VALIDATING):
            tx.move_phase(phase.key, PhaseState.PENDING, model.NewEvent(
                "phase.interrupted", phase.key, {
                    "attempt": phase.attempt, "agents": found.agents,
                    "artifact": found.artifact, "worktree": found.worktree}),
                control=phase.control.interrupted_at(run.checkpoint_sha))
            interrupted.append(phase.key)
    recoveries = run.recoveries + 1
    tx.set_run(lease_owner=None, lease_expires_at=None, recoveries=recoveries)
    detail = {"owner": run.lease_owner, "recoveries": recoveries, "phases": interrupted,
              "agents": found.agents}
    tx.event(model.NewEvent("run.recovered", payload=detail))
    if policy == "fail" or recoveries > limit:
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
    run = ctx.store.runs.get(approval.run_id)
    if run.state in states.TERMINAL and run.report_status is None:
        finish.write_report(ctx, run.id)
    return actions
