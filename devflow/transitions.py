"""Composite moves on an open RunTx that several layers share: ending a run,
interrupting an attempt, and pausing a run that a fault of the machine blocks.

Ending a run fails its active phases, aborts its pending approval requests and moves
the run to its terminal state with the event, all in the caller's transaction.
Interrupting an attempt (its driver stopped, died, or left it running) closes its
invocations and sends its phase back to pending, to start afresh from the run's last
checkpoint. The driver (``engine.drive``) and the sweep both interrupt through here.
Blocking a run interrupts the attempt under way and pauses the run with the
``blocked`` reason, which ``resume`` clears.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from devflow import events, model, states
from devflow.states import TERMINAL, ApprovalState, PhaseState, RunState
from devflow.store import RunTx


def interrupt_in(tx: RunTx, reason: str, found: Mapping[str, Any] | None = None) -> list[str]:
    """Record the attempt under way as interrupted; the keys of the phases sent back.

    Its unfinished invocations are closed (their processes are the caller's to stop: a
    ``Context.change`` stops them on commit); each running or validating phase goes back
    to pending with ``phase.interrupted`` (``reason``, and ``found``: what the sweep saw
    of the attempt), and its next attempt starts from the run's last checkpoint.
    """
    tx.close_invocations(outcome="interrupted", reason=reason)
    checkpoint = tx.run.checkpoint_sha
    keys = []
    for phase in tx.phases():
        if phase.state in (PhaseState.RUNNING, PhaseState.VALIDATING):
            tx.move_phase(phase.key, PhaseState.PENDING, events.PHASE_INTERRUPTED.new(
                phase.key, {"attempt": phase.attempt, "reason": reason, **(found or {})}),
                control=phase.control.interrupted_at(checkpoint))
            keys.append(phase.key)
    return keys


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


def block_in(tx: RunTx, blocked: Mapping[str, Any]) -> model.Run:
    """Pause the run because of a fault of the machine (``machine.Blocked.to_json()``):
    never terminal. A run already paused (by a person) stays as it is; an ended one too."""
    if tx.state in TERMINAL or tx.state is RunState.PAUSED:
        return tx.run
    reason = f"blocked: {blocked.get('message')}"
    interrupt_in(tx, reason, {"blocked": blocked.get("kind")})
    tx.set_run(options={**tx.run.options, "blocked": dict(blocked)})
    return tx.move_run(RunState.PAUSED, events.RUN_PAUSED.new(payload={
        "by": "devflow", "reason": reason, "from": str(tx.state), "authentication": None,
        "blocked": dict(blocked)}))
