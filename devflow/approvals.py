"""Gates and decisions (DESIGN.md §3.1 and §3.7); deadlines and escalation are in escalation.py.

A gate opens when a gated phase's artifact validated: an approval request records
the round and the evidence the approver is shown (artifact sha256, worktree HEAD and
tree). A decision is keyed by ``(approval_id, client_token)``: the same token and
action again returns the first outcome and changes nothing; another action with the
token, or a decision on a request that is no longer pending, is ``approval_conflict``;
evidence that changed since the gate opened is ``approval_stale``; who may decide is
``access.authorize``'s to say, and how the decision was authenticated is recorded with
it. Everything a decision does happens in one transaction on the locked run.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

from jsonpointer import resolve_pointer

from devflow import access, artifacts, events, faults, model, transitions, worktree
from devflow.definitions import PHASE_PLAN_SCHEMA, GateDef, gate_of
from devflow.errors import Code, DevflowError
from devflow.states import ACTION_OUTCOME, TERMINAL, ApprovalState, PhaseState, RunState
from devflow.store import RunTx

SECTION_VERDICTS: Final = ("approve", "reject")


def new_token() -> str:
    return uuid.uuid4().hex


def _gate(tx: RunTx, key: str) -> GateDef:
    return gate_of(tx.run.template_def, key)


def open_first_gate(tx: RunTx, phase_key: str, evidence: model.Evidence) -> model.Approval:
    """Open the phase's first gate in a new round; phase and run await approval."""
    phase = tx.phase(phase_key)
    round_ = phase.round + 1
    tx.set_phase(phase_key, round=round_)
    approval = _open(tx, phase_key, phase.definition.gates[0], round_, evidence)
    tx.move_phase(phase_key, PhaseState.AWAITING_APPROVAL)
    tx.settle(RunState.AWAITING_APPROVAL)
    faults.point("gate_opened")
    return approval


def _open(tx: RunTx, phase_key: str, gate_key: str, round_: int,
          evidence: model.Evidence) -> model.Approval:
    gate = _gate(tx, gate_key)
    deadline = tx.now + timedelta(seconds=gate.timeout) if gate.timeout else None
    approval = tx.open_approval(
        phase_key=phase_key, gate=gate_key, round=round_, message=gate.message,
        options=list(gate.options), approvers=list(gate.approvers), sections=gate.sections,
        artifact_path=evidence.artifact_path, artifact_sha=evidence.artifact_sha,
        head_sha=evidence.head_sha, tree_sha=evidence.tree_sha, deadline=deadline,
        next_due_at=next_due(gate, tx.now, deadline, None, 0))
    tx.event(events.APPROVAL_REQUESTED.new(phase_key, {
        **approval.gate_block(), "artifact_sha": evidence.artifact_sha,
        "tree": evidence.tree_sha}))
    return approval


@dataclass(frozen=True)
class DecisionRequest:
    run_id: str
    action: str
    actor: str
    token: str
    approval_id: int | None = None
    comment: str | None = None
    sections: Mapping[str, str] = field(default_factory=dict)
    section_comments: Mapping[str, str] = field(default_factory=dict)
    rewind: bool = False
    #: what the caller was shown; when given it must match the gate's evidence
    expect_artifact_sha: str | None = None
    #: the round the caller was shown; when given it must be the request's
    expect_round: int | None = None
    #: escalation and timeouts decide without a person's checks (their principal is system)
    system_reason: str | None = None
    #: who is authenticated (the interface's to establish); None: this process's OS account
    principal: access.Principal | None = None

    @property
    def authenticated(self) -> access.Principal:
        return self.principal or access.os_account()


@dataclass(frozen=True)
class DecisionResult:
    decision: model.Decision
    approval: model.Approval
    run: model.Run
    replayed: bool
    outcome: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"decision": self.decision.to_json(), "approval": self.approval.to_json(),
                "replayed": self.replayed, "outcome": dict(self.outcome),
                "token": self.decision.client_token}


def current_evidence(run: model.Run, approval: model.Approval,
                     max_bytes: int) -> model.Evidence | None:
    """The evidence as it is now, or None when the worktree is not on this machine."""
    shown = approval.evidence
    if shown.artifact_path is None:
        return None
    tree = worktree.find(Path(run.repo), Path(run.worktree), run.branch)
    if tree is None:
        return _evidence_on_branch(run, shown, max_bytes)
    head, clean = worktree.head_and_clean(tree)
    # A gate opens right after its checkpoint commit, when the worktree is clean: if it
    # is still clean at the same HEAD, its tree is the one shown, without computing it.
    tree_sha = shown.tree_sha if clean and head == shown.head_sha else worktree.tree_sha(tree)
    return model.Evidence(shown.artifact_path,
                          artifacts.file_sha(tree.path, shown.artifact_path, max_bytes),
                          head, tree_sha)


def _evidence_on_branch(run: model.Run, shown: model.Evidence,
                        max_bytes: int) -> model.Evidence | None:
    """Without a worktree, the evidence as the run branch holds it (the gate's checkpoint
    committed the artifact); None only when the repository is not on this machine."""
    repo = Path(run.repo)
    if not repo.is_dir() or not worktree.branch_exists(repo, run.branch):
        return None
    head = worktree.rev(repo, run.branch)
    blob = worktree.blob(repo, run.branch, shown.artifact_path or "", max_bytes)
    return model.Evidence(shown.artifact_path,
                          hashlib.sha256(blob).hexdigest() if blob is not None else None,
                          head, worktree.rev(repo, f"{run.branch}^{{tree}}"))


def decide_in(tx: RunTx, req: DecisionRequest, approval_id: int,
              current: model.Evidence | None,
              policy: access.Policy = access.NO_GRANTS) -> DecisionResult:
    """Record one decision and do what it says, in the caller's transaction.

    ``policy`` is what the configuration grants (groups, delegates); an empty one grants
    nothing beyond the approvers named.
    """
    approval = tx.approval(approval_id)
    existing = tx.decision_by_token(approval_id, req.token)
    if existing is not None:
        if existing.actor != req.actor:  # a replay is its decider's: nobody else learns of it
            raise DevflowError(Code.APPROVAL_CONFLICT,
                               f"token {req.token} was already used on approval {approval_id} "
                               f"by someone else", hint="a new decision needs a new token")
        if existing.action != req.action:
            raise DevflowError(Code.APPROVAL_CONFLICT,
                               f"token {req.token} was already used to {existing.action} "
                               f"approval {approval_id}",
                               hint="a retry must repeat the same action; a new decision needs "
                                    "a new token")
        return DecisionResult(existing, approval, tx.run, True,
                              tx.decision_outcome(existing.id))
    authentication = _check(tx, req, approval, current, policy)
    decision = tx.add_decision(
        approval_id=approval_id, client_token=req.token, action=req.action, actor=req.actor,
        comment=req.comment if not req.system_reason else req.system_reason,
        sections=dict(req.sections),
        evidence=(current.to_json() if current else {**approval.evidence.to_json(),
                                                        "checked": False}),
        authentication=authentication)
    resolved = tx.resolve_approval(approval_id, ACTION_OUTCOME[req.action], by=req.actor,
                                   resolution=req.action)
    tx.event(events.APPROVAL_RESOLVED.new(approval.phase_key, {
        "approval_id": approval_id, "gate": approval.gate, "round": approval.round,
        "action": req.action, "actor": req.actor, "decision_id": decision.id,
        "reason": req.system_reason, "sections": dict(req.sections),
        "authentication": authentication},
        key=f"{tx.run.id}:approval.resolved:{approval_id}"), unseen=True)  # it was pending
    outcome = _apply(tx, req, approval, authentication)
    tx.set_decision_outcome(decision.id, outcome)
    return DecisionResult(decision, resolved, tx.run, False, outcome)


def _check(tx: RunTx, req: DecisionRequest, approval: model.Approval,
           current: model.Evidence | None, policy: access.Policy) -> dict[str, Any]:
    """Refuse the decision, or say how it was authenticated (the record to keep)."""
    if approval.state is not ApprovalState.PENDING:
        raise DevflowError(Code.APPROVAL_CONFLICT,
                           f"approval {approval.id} ({approval.gate}) is no longer pending",
                           hint=f"it is {approval.state}"
                                + (f" by {approval.resolved_by}" if approval.resolved_by else ""),
                           state=str(approval.state))
    principal = req.authenticated
    if req.system_reason and principal.method == access.SYSTEM:
        # the template's own escalation chain or timeout decides
        return principal.record(access.SELF)
    if req.system_reason or principal.method == access.SYSTEM:
        raise DevflowError(Code.NOT_AUTHORIZED,
                           f"{principal.describe()} may not decide for devflow itself",
                           hint="only escalations and timeouts decide as system")
    if req.actor.startswith("system:"):
        raise DevflowError(Code.INVALID_INPUT, f"actor {req.actor!r} is reserved",
                           hint="names starting with system: are devflow's own (escalations, "
                                "timeouts); decide under your own name")
    attribution = access.authorize(
        policy, principal, req.actor,
        f"{req.action.replace('_', ' ')} gate {approval.gate} of run {tx.run.id}",
        [access.Gate(approval.gate, approval.approvers)])
    if req.action not in approval.options:
        raise DevflowError(Code.INVALID_INPUT,
                           f"gate {approval.gate} does not offer {req.action}",
                           hint=f"its options: {', '.join(approval.options)}")
    if tx.state is RunState.PAUSED and req.action not in ("reject", "abort"):
        raise DevflowError(Code.ILLEGAL_TRANSITION,
                           f"run {tx.run.id} is paused: only reject and abort are accepted",
                           hint=f"devflow run resume {tx.run.id}, then decide")
    recorded = approval.evidence
    if req.expect_round is not None and req.expect_round != approval.round:
        raise _stale(approval, f"you were shown round {req.expect_round}; the request is "
                               f"round {approval.round}")
    if req.expect_artifact_sha and req.expect_artifact_sha != recorded.artifact_sha:
        raise _stale(approval, "the artifact you were shown is not the one at the gate")
    if current is not None:
        if current.artifact_sha != recorded.artifact_sha:
            raise _stale(approval, "the artifact changed since the gate opened")
        if current.tree_sha != recorded.tree_sha:
            raise _stale(approval, "the worktree changed since the gate opened")
    if req.sections:
        _check_sections(tx, approval, req.sections)
    check_request(req)
    return principal.record(attribution)


def check_request(req: DecisionRequest) -> None:
    """What a decision must say, whoever sends it (CLI or HTTP): changes requested say which
    (the next attempt's prompt carries them); a rewind goes with request_changes only."""
    if req.rewind and req.action != "request_changes":
        raise DevflowError(Code.INVALID_INPUT, f"rewind goes with request_changes, not "
                           f"{req.action}", hint="drop --rewind, or request changes")
    if req.action != "request_changes" or (req.comment or "").strip() \
            or any(verdict == "reject" for verdict in req.sections.values()):
        return
    raise DevflowError(Code.INVALID_INPUT,
                       "request-changes needs a comment or a rejected section: it is what the "
                       "agent is asked to change", hint="--comment 'what to change' (or, on a "
                       "gate with sections, --section KEY=reject)")


def _stale(approval: model.Approval, why: str) -> DevflowError:
    return DevflowError(Code.APPROVAL_STALE, f"approval {approval.id} ({approval.gate}): {why}",
                        hint="nothing was decided; look again (devflow approvals show "
                             f"{approval.id}) once the worktree is back as it was shown")


def section_keys(tx: RunTx, approval: model.Approval) -> list[str]:
    """The keys of the items at the gate's ``sections`` pointer in the kept artifact."""
    phase = tx.phase(approval.phase_key)
    if not approval.sections or not phase.artifact_stored or not phase.artifact_sha:
        return []
    stored = artifacts.load_stored(Path(phase.artifact_stored), phase.artifact_sha)
    value = resolve_pointer(stored, approval.sections, [])
    if not isinstance(value, list):
        return []
    return [str(item["key"]) for item in value if isinstance(item, dict) and "key" in item]


def _check_sections(tx: RunTx, approval: model.Approval, sections: Mapping[str, str]) -> None:
    if not approval.sections:
        raise DevflowError(Code.UNKNOWN_SECTION, f"gate {approval.gate} has no sections",
                           hint="decide the whole artifact, without --section")
    known = section_keys(tx, approval)
    for key, verdict in sections.items():
        if key not in known:
            raise DevflowError(Code.UNKNOWN_SECTION, f"the artifact has no section {key!r} at "
                               f"{approval.sections}", hint=f"its sections: {', '.join(known)}")
        if verdict not in SECTION_VERDICTS:
            raise DevflowError(Code.INVALID_INPUT, f"section {key}: {verdict!r} is not "
                               "approve or reject", hint="--section KEY=approve|reject")


def _apply(tx: RunTx, req: DecisionRequest, approval: model.Approval,
           authentication: Mapping[str, Any]) -> dict[str, Any]:
    phase = tx.phase(approval.phase_key)
    outcome: dict[str, Any] = {"action": req.action}
    rejected = [k for k, v in req.sections.items() if v == "reject"]
    is_plan = bool(phase.definition.artifact and
                   phase.definition.artifact.schema == PHASE_PLAN_SCHEMA)
    if req.action == "approve" and rejected and not is_plan:
        _changes(tx, req, phase, rejected)
    elif req.action == "approve":
        gates = phase.definition.gates
        later = gates[gates.index(approval.gate) + 1:] if approval.gate in gates else ()
        if later:
            nxt = _open(tx, phase.key, later[0], approval.round, approval.evidence)
            outcome["next_approval_id"] = nxt.id
        else:
            control = model.PhaseControl(sections=dict(req.sections))
            tx.move_phase(phase.key, PhaseState.COMPLETED, events.PHASE_COMPLETED.new(
                phase.key, {"attempt": phase.attempt, "approved_by": req.actor,
                            "artifact_sha": phase.artifact_sha}),
                control=control)
            tx.settle(RunState.EXECUTING)
    elif req.action == "request_changes":
        _changes(tx, req, phase, rejected)
    elif req.action == "reject":
        transitions.terminate_in(tx, RunState.FAILED, by=req.actor,
                     authentication=authentication,
                     code=str(Code.APPROVAL_TIMEOUT) if req.actor == "system:timeout"
                     else str(Code.APPROVAL_REJECTED),
                     reason=f"gate {approval.gate} rejected by {req.actor}"
                            + (f": {req.comment or req.system_reason}"
                               if (req.comment or req.system_reason) else ""))
    else:
        transitions.terminate_in(tx, RunState.ABORTED, by=req.actor,
                     authentication=authentication, reason=req.comment or req.system_reason)
    run = tx.run
    outcome.update(approval_state=str(ACTION_OUTCOME[req.action]), run_state=str(run.state),
                   phase_state=str(tx.phase(phase.key).state),
                   terminal=run.state in TERMINAL)
    return outcome


def _changes(tx: RunTx, req: DecisionRequest, phase: model.Phase, rejected: list[str]) -> None:
    control = model.PhaseControl(
        changes=model.Changes(req.actor, req.comment, tuple(
            model.RejectedSection(k, req.section_comments.get(k)) for k in rejected)),
        reset_to=_previous_checkpoint(tx, phase) if req.rewind else None)
    tx.move_phase(phase.key, PhaseState.PENDING, events.PHASE_CHANGES_REQUESTED.new(
        phase.key, {"attempt": phase.attempt, "by": req.actor, "rewind": req.rewind}),
        control=control)
    tx.settle(RunState.EXECUTING)


def _previous_checkpoint(tx: RunTx, phase: model.Phase) -> str:
    """The checkpoint the phase started from: the last one of an earlier phase, or the base."""
    earlier = [p for p in tx.phases() if p.position < phase.position and p.checkpoint_sha]
    return earlier[-1].checkpoint_sha if earlier and earlier[-1].checkpoint_sha \
        else tx.run.base_sha or ""


# -- deadlines and escalation (applied by the sweep) ----------------------------------------
def next_due(gate: GateDef, opened_at: datetime, deadline: datetime | None,
             warned_at: datetime | None, applied: int) -> datetime | None:
    """When the sweep must next look at a request: its warning, next step, or deadline."""
    times = []
    if deadline is not None and gate.warn_before and warned_at is None:
        times.append(deadline - timedelta(seconds=gate.warn_before))
    if applied < len(gate.escalation):
        times.append(opened_at + timedelta(seconds=gate.escalation[applied].after))
    elif not gate.escalation and deadline is not None:
        times.append(deadline)
    return min(times) if times else None
