"""Gate deadlines and escalation chains, applied by the sweep one step at a time.

A gate with ``timeout``, ``warn_before`` or ``escalation`` has a ``next_due_at``:
when the sweep must look at it again. Each call of ``step_due`` applies the one
thing due (a warning, the next escalation step, or the timeout) in the caller's
transaction, under the run's lock, re-checked there: two sweeps apply a step once,
and a request a person decided is left alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from devflow import access, events, model
from devflow.approvals import DecisionRequest, decide_in, next_due
from devflow.definitions import EscalationStep, gate_of
from devflow.errors import Code
from devflow.states import ApprovalState
from devflow.store import RunTx


@dataclass(frozen=True)
class Step:
    """One thing the sweep did to a request: warned, escalated, decided or timed_out."""

    kind: str
    approval_id: int
    detail: Mapping[str, Any]


def step_due(tx: RunTx, approval_id: int) -> Step | None:
    """Apply the one thing that is due on a pending request, or None when nothing is.

    Called once per transaction under the run's lock and re-checked there, so two
    sweeps at once apply each step once, and a request a person decided is left alone.
    """
    approval = tx.approval(approval_id)
    if approval.state is not ApprovalState.PENDING or approval.next_due_at is None \
            or approval.next_due_at > tx.now:
        return None
    gate = gate_of(tx.run.template_def, approval.gate)
    now, step = tx.now, None
    if (approval.deadline is not None and gate.warn_before and approval.warned_at is None
            and now >= approval.deadline - timedelta(seconds=gate.warn_before)):
        tx.set_approval(approval_id, warned_at=now)
        tx.event(events.APPROVAL_EXPIRING.new(approval.phase_key, {
            "approval_id": approval_id, "gate": approval.gate, "round": approval.round,
            "deadline": model.iso(approval.deadline)},
            key=f"{tx.run.id}:approval.expiring:{approval_id}"))
        step = Step("warned", approval_id, {"deadline": model.iso(approval.deadline)})
    elif approval.escalation_applied < len(gate.escalation):
        index = approval.escalation_applied
        chain = gate.escalation[index]
        if now < approval.opened_at + timedelta(seconds=chain.after):
            return None
        step = _escalate(tx, approval, index, chain)
    elif not gate.escalation and approval.deadline is not None and now >= approval.deadline:
        decide_in(tx, DecisionRequest(
            run_id=tx.run.id, action="reject", actor="system:timeout",
            token=f"timeout:{approval_id}", system_reason=str(Code.APPROVAL_TIMEOUT),
            principal=access.system("system:timeout")),
            approval_id, None)
        step = Step("timed_out", approval_id, {"deadline": model.iso(approval.deadline)})
    if step is None:
        return None
    current = tx.approval(approval_id)
    if current.state is ApprovalState.PENDING:
        tx.set_approval(approval_id, next_due_at=next_due(
            gate, current.opened_at, current.deadline, current.warned_at,
            current.escalation_applied))
    else:
        tx.set_approval(approval_id, next_due_at=None)
    return step


def _escalate(tx: RunTx, approval: model.Approval, index: int,
              chain: EscalationStep) -> Step:
    number = index + 1
    if chain.action is None:
        approvers = tuple(dict.fromkeys(
            [*approval.approvers, *chain.to] if chain.keep_previous else chain.to))
        tx.set_approval(approval.id, approvers=approvers, escalation_applied=number)
        tx.event(events.APPROVAL_ESCALATED.new(approval.phase_key, {
            "approval_id": approval.id, "gate": approval.gate, "round": approval.round,
            "step": number, "to": list(chain.to), "approvers": list(approvers),
            "reason": chain.audit_reason},
            key=f"{tx.run.id}:approval.escalated:{approval.id}:{number}"))
        return Step("escalated", approval.id, {"step": number, "approvers": list(approvers),
                                                "reason": chain.audit_reason})
    tx.set_approval(approval.id, escalation_applied=number)
    tx.event(events.APPROVAL_ESCALATED.new(approval.phase_key, {
        "approval_id": approval.id, "gate": approval.gate, "round": approval.round,
        "step": number, "action": chain.action, "reason": chain.audit_reason},
        key=f"{tx.run.id}:approval.escalated:{approval.id}:{number}"))
    decide_in(tx, DecisionRequest(
        run_id=tx.run.id, action=chain.action, actor="system:escalation",
        token=f"escalation:{approval.id}:{number}", system_reason=chain.audit_reason,
        principal=access.system("system:escalation")),
        approval.id, None)
    return Step("decided", approval.id, {"step": number, "action": chain.action,
                                         "reason": chain.audit_reason})
