"""Composite moves on an open RunTx that several layers share: ending a run.

Ending a run fails its active phases, aborts its pending approval requests and moves
the run to its terminal state with the event, all in the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from devflow import events, model, states
from devflow.states import ApprovalState, PhaseState, RunState
from devflow.store import RunTx


def terminate_in(tx: RunTx, to: RunState, *, code: str | None = None, reason: str | None = None,
                 by: str = "devflow",
                 authentication: Mapping[str, Any] | None = None) -> model.Run:
    """End the run; an agent still running for it is closed here and stopped on commit.

    ``authentication`` is how the person (or devflow) who ended it was authenticated.
    """
    tx.close_invocations(outcome=f"run_{to}", reason=f"the run was {to} by {by}")
    for phase in tx.phases():
        if phase.state in states.PHASE_ACTIVE:
            tx.move_phase(phase.key, PhaseState.FAILED, events.PHASE_FAILED.new(
                phase.key, {"attempt": phase.attempt, "reason": f"run {to}", "code": code}),
                failure_code=code or f"run_{to}", failure_reason=reason)
    for approval in tx.approvals(pending=True):
        tx.resolve_approval(approval.id, ApprovalState.ABORTED, by=by, resolution=f"run_{to}")
    payload: dict[str, Any] = {"by": by}
    if authentication is not None:
        payload["authentication"] = dict(authentication)
    if code:
        payload.update(code=code, reason=reason)
    elif reason:
        payload["reason"] = reason
    return tx.move_run(to, events.ENDED[to].new(payload=payload),
                       failure=(code, reason or "") if code else None)
