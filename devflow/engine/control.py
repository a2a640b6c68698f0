"""What people do to runs: decide a gate, pause, resume, abort.

Each is one transaction on the locked run. Pause, resume and abort repeated are
no-ops that say ``changed: false``; on a terminal run they are conflicts (abort of an
aborted run is a repeat, not a conflict). A decision or an abort that ends the run
kills the run's agents on this host and writes the report (``Context.change``).

Who may is ``access.authorize``'s to say, under the lock, before anything changes:
pause, resume and abort of a run waiting at a gate that names approvers need one of
them or a member of the ``operators`` group; other runs are open to anyone who can
reach devflow. Their events record how the caller was authenticated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from devflow import access, approvals, events, faults, model, transitions
from devflow.engine.context import Context
from devflow.errors import Code, DevflowError
from devflow.states import PAUSABLE, TERMINAL, RunState
from devflow.store import RunTx


@dataclass(frozen=True)
class Changed:
    run: model.Run
    changed: bool


def decide(ctx: Context, req: approvals.DecisionRequest) -> approvals.DecisionResult:
    """Decide; the request is chosen again under the run's lock, where it counts.

    The evidence (git) is read before the transaction for the request that looks
    meant; inside it, the token and the pending request are looked up again, so a
    retry racing its first decision gets that decision's outcome.
    """
    seen = ctx.store.runs.deciding(req.run_id, req.approval_id, req.token)
    run, candidate = seen.run, seen.approval
    if candidate is not None and candidate.run_id != run.id:
        raise DevflowError(Code.APPROVAL_NOT_FOUND,
                           f"approval {candidate.id} belongs to run {candidate.run_id}, "
                           f"not {run.id}", hint=f"devflow approvals list --run {run.id}")
    current = None
    if candidate is not None and candidate.state == "pending" and not req.system_reason \
            and not seen.token_used:
        current = approvals.current_evidence(run, candidate, ctx.settings.artifact_max_bytes)
    policy = ctx.settings.policy
    result = ctx.change(run.id, lambda tx: approvals.decide_in(
        tx, req, _pick_in(tx, req, candidate), current, policy),
        phase=candidate.phase_key if candidate is not None else None, deciding=True)
    faults.point("decision_recorded")
    return result


def _pick_in(tx: RunTx, req: approvals.DecisionRequest,
             candidate: model.Approval | None) -> int:
    """The request this decision is for, chosen under the lock."""
    if req.approval_id is not None:
        return req.approval_id
    pending, known = tx.gate(req.token)
    if known is not None:
        return known.approval_id  # a retry, even after the request was resolved
    run = tx.run
    if not pending:
        raise DevflowError(Code.NO_PENDING_APPROVAL, f"run {run.id} has no pending approval",
                           hint=f"it is {run.state}; `devflow approvals list --run {run.id}` "
                                "shows its requests")
    if len(pending) > 1:
        raise DevflowError(Code.AMBIGUOUS_APPROVAL,
                           f"run {run.id} has {len(pending)} pending approvals",
                           hint="choose one with --approval: "
                                + ", ".join(f"{a.id} ({a.gate})" for a in pending))
    if candidate is None or pending[0].id != candidate.id:
        raise DevflowError(Code.APPROVAL_CONFLICT,
                           f"the gate of run {run.id} changed while deciding",
                           hint="look again (devflow run status) and decide once more")
    return pending[0].id


def pause(ctx: Context, run_id: str, actor: str, reason: str | None = None,
          principal: access.Principal | None = None) -> Changed:
    def fn(tx: RunTx) -> Changed:
        authentication = _authorize(ctx, tx, "pause", actor, principal)
        if tx.state is RunState.PAUSED:
            return Changed(tx.run, False)
        _not_terminal(tx, "paused")
        if tx.state not in PAUSABLE:
            raise DevflowError(Code.ILLEGAL_TRANSITION,
                               f"run {tx.run.id} is {tx.state}: it can be paused once it executes",
                               hint="pause works from bound, executing, planning or "
                                    "awaiting_approval")
        return Changed(tx.move_run(RunState.PAUSED, events.RUN_PAUSED.new(
            payload={"by": actor, "reason": reason, "from": str(tx.state),
                     "authentication": authentication})), True)
    return ctx.change(ctx.store.runs.get(run_id).id, fn)


def resume(ctx: Context, run_id: str, actor: str, reason: str | None = None,
           principal: access.Principal | None = None) -> Changed:
    def fn(tx: RunTx) -> Changed:
        authentication = _authorize(ctx, tx, "resume", actor, principal)
        _not_terminal(tx, "resumed")
        if tx.state is not RunState.PAUSED:
            return Changed(tx.run, False)
        return Changed(resume_in(tx, actor, reason, authentication), True)
    return ctx.change(ctx.store.runs.get(run_id).id, fn)


def resume_in(tx: RunTx, actor: str, reason: str | None,
              authentication: dict[str, Any] | None) -> model.Run:
    """Move a paused run back where it was; a ``blocked`` reason is cleared (and named in
    the event), so the next step meets the cause again if it is still there."""
    target = tx.run.paused_from or RunState.EXECUTING
    payload: dict[str, Any] = {"by": actor, "reason": reason, "to": str(target),
                               "authentication": authentication}
    if "blocked" in tx.run.options:
        payload["blocked"] = dict(tx.run.options["blocked"]).get("kind")
        tx.set_run(options={k: v for k, v in tx.run.options.items() if k != "blocked"})
    return tx.move_run(RunState(target), events.RUN_RESUMED.new(payload=payload))


def abort(ctx: Context, run_id: str, actor: str, reason: str | None = None,
          principal: access.Principal | None = None) -> Changed:
    def fn(tx: RunTx) -> Changed:
        authentication = _authorize(ctx, tx, "abort", actor, principal)
        if tx.state is RunState.ABORTED:
            return Changed(tx.run, False)
        _not_terminal(tx, "aborted")
        return Changed(transitions.terminate_in(tx, RunState.ABORTED, by=actor, reason=reason,
                                                authentication=authentication), True)
    result = ctx.change(ctx.store.runs.get(run_id).id, fn)
    return Changed(ctx.store.runs.get(result.run.id), result.changed)


def _authorize(ctx: Context, tx: RunTx, verb: str, actor: str,
               principal: access.Principal | None) -> dict[str, Any]:
    """Refuse, or say how the caller was authenticated: the gates the run waits at (a
    paused run's included) decide who may steer it."""
    principal = principal or access.os_account()
    gates = [access.Gate(a.gate, a.approvers) for a in tx.approvals(pending=True)]
    attribution = access.authorize(ctx.settings.policy, principal, actor,
                                   f"{verb} run {tx.run.id}", gates, operators=True)
    return principal.record(attribution)


def _not_terminal(tx: RunTx, verb: str) -> None:
    if tx.state in TERMINAL:
        raise DevflowError(Code.ILLEGAL_TRANSITION,
                           f"run {tx.run.id} is {tx.state} and cannot be {verb}",
                           hint="a terminal run never changes; start a new one",
                           state=str(tx.state))
