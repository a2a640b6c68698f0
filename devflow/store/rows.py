"""Rows to the frozen values of ``devflow.model``: the one place that maps columns to fields.

A row here is anything with the columns as attributes: an ORM row, a Core ``Row``, or a
``Record`` a transaction holds.
"""

from __future__ import annotations

from typing import Any

from devflow import model
from devflow.definitions import PhaseDef
from devflow.states import ApprovalState, PhaseState, RunState

#: a row of a table: its columns as attributes
Columns = Any


def run(row: Columns) -> model.Run:
    return model.Run(
        id=row.id, template_name=row.template_name, template_version=row.template_version,
        template_hash=row.template_hash, template_def=row.template_def, repo=row.repo,
        base=row.base, base_sha=row.base_sha, checkpoint_sha=row.checkpoint_sha,
        branch=row.branch, workspace=row.workspace,
        worktree=row.worktree, host=row.host, state=RunState(row.state),
        paused_from=RunState(row.paused_from) if row.paused_from else None,
        requirements=row.requirements, objective=row.objective, options=dict(row.options),
        created_by=row.created_by, created_at=row.created_at, updated_at=row.updated_at,
        ended_at=row.ended_at, last_seq=row.last_seq, failure_code=row.failure_code,
        failure_reason=row.failure_reason, report_status=row.report_status,
        lease_owner=row.lease_owner, lease_expires_at=row.lease_expires_at,
        lease_fence=row.lease_fence, recoveries=row.recoveries, tokens_in=row.tokens_in,
        tokens_out=row.tokens_out, cost_usd=row.cost_usd, port_base=row.port_base,
    )


def phase(row: Columns) -> model.Phase:
    assert row.id is not None
    return model.Phase(
        id=row.id, run_id=row.run_id, position=row.position, key=row.key, origin=row.origin,
        definition=PhaseDef.from_json(row.definition), state=PhaseState(row.state),
        attempt=row.attempt, repairs=row.repairs, round=row.round,
        artifact_sha=row.artifact_sha, artifact_stored=row.artifact_stored,
        checkpoint_sha=row.checkpoint_sha, started_at=row.started_at, ended_at=row.ended_at,
        failure_code=row.failure_code, failure_reason=row.failure_reason,
        feedback=dict(row.feedback), tokens_in=row.tokens_in, tokens_out=row.tokens_out,
        cost_usd=row.cost_usd,
    )


def binding(row: Columns) -> model.Binding:
    return model.Binding(
        role=row.role, persona_name=row.persona_name, persona_version=row.persona_version,
        persona_hash=row.persona_hash, backend=row.backend, backend_version=row.backend_version,
        persona_def=row.persona_def)


def event(row: Columns) -> model.Event:
    return model.Event(run_id=row.run_id, seq=row.seq, type=row.type, phase=row.phase,
                       payload=row.payload, ts=row.ts)


def approval(row: Columns) -> model.Approval:
    assert row.id is not None
    return model.Approval(
        id=row.id, run_id=row.run_id, phase_key=row.phase_key, gate=row.gate, round=row.round,
        state=ApprovalState(row.state), message=row.message, options=tuple(row.options),
        approvers=tuple(row.approvers), sections=row.sections,
        evidence=model.Evidence(row.artifact_path, row.artifact_sha, row.head_sha, row.tree_sha),
        opened_at=row.opened_at, deadline=row.deadline, warned_at=row.warned_at,
        escalation_applied=row.escalation_applied, next_due_at=row.next_due_at,
        resolved_at=row.resolved_at,
        resolved_by=row.resolved_by, resolution=row.resolution)


def decision(row: Columns) -> model.Decision:
    assert row.id is not None
    return model.Decision(
        id=row.id, approval_id=row.approval_id, client_token=row.client_token, action=row.action,
        actor=row.actor, comment=row.comment, sections=dict(row.sections),
        evidence=dict(row.evidence), created_at=row.created_at,
        authentication=dict(row.authentication) if row.authentication is not None else None)


def invocation(row: Columns) -> model.Invocation:
    assert row.id is not None
    return model.Invocation(
        id=row.id, run_id=row.run_id, phase_key=row.phase_key, attempt=row.attempt,
        kind=row.kind, backend=row.backend, argv=tuple(row.argv), host=row.host,
        started_at=row.started_at, pid=row.pid, pgid=row.pgid,
        process_start=row.process_start, ended_at=row.ended_at,
        exit_code=row.exit_code, signal=row.signal, duration_ms=row.duration_ms,
        stdout_path=row.stdout_path, stderr_path=row.stderr_path, tokens_in=row.tokens_in,
        tokens_out=row.tokens_out, cost_usd=row.cost_usd, session_id=row.session_id,
        outcome=row.outcome, reason=row.reason)


def artifact(row: Columns) -> model.ArtifactRecord:
    return model.ArtifactRecord(
        run_id=row.run_id, phase_key=row.phase_key, attempt=row.attempt, path=row.path,
        schema_id=row.schema_id, sha256=row.sha256, size=row.size, stored_path=row.stored_path,
        created_at=row.created_at)


def worker(row: Columns) -> model.Worker:
    return model.Worker(id=row.id, name=row.name, host=row.host, pid=row.pid,
                        started_at=row.started_at, heartbeat_at=row.heartbeat_at,
                        stopped_at=row.stopped_at, concurrency=row.concurrency)
