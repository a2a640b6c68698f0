"""The values the layers pass around: runs, phases, events, approvals, invocations.

Frozen dataclasses: the one row type. The store builds them from its rows and writes
their fields back (``devflow.store.rows`` maps fields to columns, one field per column of
the same name); nothing here touches the database. ``to_json`` gives the stable shapes
the CLI prints with ``--json``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Final

from devflow.definitions import PhaseDef
from devflow.states import TERMINAL, ApprovalState, PhaseState, RunState


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


@dataclass(frozen=True, slots=True)
class Binding:
    role: str
    persona_name: str
    persona_version: str
    persona_hash: str
    backend: str
    backend_version: str | None
    persona_def: Mapping[str, Any] = field(repr=False)

    @property
    def persona_ref(self) -> str:
        return f"{self.persona_name}@{self.persona_version}"

    def to_json(self) -> dict[str, Any]:
        return {"role": self.role, "persona": self.persona_ref, "hash": self.persona_hash,
                "backend": self.backend, "backend_version": self.backend_version}


@dataclass(frozen=True, slots=True)
class Lease:
    owner: str
    fence: int


@dataclass(frozen=True, slots=True)
class Run:
    id: str
    template_name: str
    template_version: str
    template_hash: str
    template_def: Mapping[str, Any] = field(repr=False)
    repo: str = ""
    base: str = ""
    base_sha: str | None = None
    checkpoint_sha: str | None = None
    branch: str = ""
    workspace: str = ""
    worktree: str = ""
    host: str = ""
    state: RunState = RunState.CREATED
    paused_from: RunState | None = None
    requirements: str = field(default="", repr=False)
    objective: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    created_by: str = ""
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)
    ended_at: datetime | None = None
    last_seq: int = 0
    failure_code: str | None = None
    failure_reason: str | None = None
    report_status: str | None = None
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    lease_fence: int = 0
    recoveries: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    port_base: int | None = None

    @property
    def template_ref(self) -> str:
        return f"{self.template_name}@{self.template_version}"

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    @property
    def blocked(self) -> Mapping[str, Any] | None:
        """Why a run devflow paused is blocked (a fault of the machine: ``kind``, ``path``,
        ``message``, ``fix``); None for any other run."""
        value = self.options.get("blocked")
        if self.state is RunState.PAUSED and isinstance(value, Mapping):
            return value
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "state": str(self.state), "template": self.template_ref,
            "template_hash": self.template_hash, "repo": self.repo, "base": self.base,
            "base_sha": self.base_sha, "checkpoint": self.checkpoint_sha, "branch": self.branch,
            "worktree": self.worktree,
            "workspace": self.workspace, "host": self.host, "objective": self.objective,
            "paused_from": str(self.paused_from) if self.paused_from else None,
            "blocked": dict(self.blocked) if self.blocked else None,
            "created_by": self.created_by, "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at), "ended_at": iso(self.ended_at),
            "failure": ({"code": self.failure_code, "reason": self.failure_reason}
                        if self.failure_code else None),
            "report": self.report_status, "recoveries": self.recoveries,
            "lease": ({"owner": self.lease_owner, "expires_at": iso(self.lease_expires_at),
                       "fence": self.lease_fence} if self.lease_owner else None),
            "usage": {"tokens_in": self.tokens_in, "tokens_out": self.tokens_out,
                      "cost_usd": round(self.cost_usd, 6)},
            "port_base": self.port_base,
        }


@dataclass(frozen=True, slots=True)
class Refusal:
    """One thing wrong with a refused attempt's artifact: where (a JSON pointer) and what."""

    pointer: str
    message: str


@dataclass(frozen=True, slots=True)
class Repair:
    """Why the last attempt was refused: the verdict's code and what was wrong."""

    code: str
    errors: tuple[Refusal, ...] = ()


@dataclass(frozen=True, slots=True)
class RejectedSection:
    key: str
    comment: str | None = None


@dataclass(frozen=True, slots=True)
class Changes:
    """Changes an approver asked for: who, why, and the sections rejected."""

    actor: str
    comment: str | None = None
    rejected_sections: tuple[RejectedSection, ...] = ()


@dataclass(frozen=True, slots=True)
class PhaseControl:
    """What steers a phase's next attempt, kept with the phase (column ``run_phase.control``).

    ``interrupted``: an attempt was cut short (its driver stopped); the next starts afresh.
    ``reset_to``: the checkpoint the worktree goes back to before the next attempt.
    ``repair``: the last attempt was refused, and why (the next prompt says so).
    ``changes``: an approver asked for changes (the next prompt says which).
    ``sections``: the section verdicts of the approval that completed the phase.
    ``plan_applied``: the phase's plan has been added to the run.

    Stored as JSON of exactly these keys (``to_json``); ``from_json`` refuses any other
    shape, so a stored value is always one of these.
    """

    interrupted: bool = False
    reset_to: str | None = None
    repair: Repair | None = None
    changes: Changes | None = None
    sections: Mapping[str, str] = field(default_factory=dict)
    plan_applied: bool = False

    # -- the moves ----------------------------------------------------------------------
    def interrupted_at(self, checkpoint: str | None) -> PhaseControl:
        """An attempt was interrupted: the next starts afresh from ``checkpoint``."""
        return replace(self, interrupted=True, reset_to=checkpoint)

    def refused(self, code: str, errors: Sequence[Refusal]) -> PhaseControl:
        """The attempt ran to its end and was refused: the next one repairs it."""
        return replace(self, interrupted=False, repair=Repair(code, tuple(errors)))

    def reset_done(self) -> PhaseControl:
        return replace(self, reset_to=None) if self.reset_to is not None else self

    @property
    def resumes_session(self) -> bool:
        """The next attempt continues the agent's last session: it is asked to fix what it
        did (a repair or changes), and it was not cut short."""
        return not self.interrupted and (self.repair is not None or self.changes is not None)

    @property
    def rejected(self) -> frozenset[str]:
        """The keys of the sections the completing approval rejected."""
        return frozenset(k for k, v in self.sections.items() if v == "reject")

    # -- JSON ---------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "interrupted": self.interrupted, "reset_to": self.reset_to,
            "repair": None if self.repair is None else {
                "code": self.repair.code,
                "errors": [{"pointer": e.pointer, "message": e.message}
                           for e in self.repair.errors]},
            "changes": None if self.changes is None else {
                "actor": self.changes.actor, "comment": self.changes.comment,
                "rejected_sections": [{"key": s.key, "comment": s.comment}
                                      for s in self.changes.rejected_sections]},
            "sections": dict(self.sections), "plan_applied": self.plan_applied,
        }

    @classmethod
    def from_json(cls, body: Any) -> PhaseControl:
        """The value ``to_json`` gave; ValueError for anything else."""
        if body == _NO_CONTROL_JSON:  # most phases, most of the time
            return NO_CONTROL
        _keys(body, CONTROL_KEYS, "phase control")
        repair, changes = body["repair"], body["changes"]
        sections = body["sections"]
        if not isinstance(sections, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in sections.items()):
            raise ValueError("phase control: sections must map section keys to verdicts")
        return cls(
            interrupted=_typed(body["interrupted"], bool, "interrupted"),
            reset_to=_typed(body["reset_to"], str, "reset_to", null=True),
            repair=None if repair is None else Repair(
                _typed(_keys(repair, ("code", "errors"), "repair")["code"], str, "repair.code"),
                tuple(Refusal(_typed(_keys(e, ("pointer", "message"), "repair error")["pointer"],
                                     str, "pointer"), _typed(e["message"], str, "message"))
                      for e in _typed(repair["errors"], list, "repair.errors"))),
            changes=None if changes is None else Changes(
                _typed(_keys(changes, ("actor", "comment", "rejected_sections"),
                             "changes")["actor"], str, "changes.actor"),
                _typed(changes["comment"], str, "changes.comment", null=True),
                tuple(RejectedSection(
                    _typed(_keys(s, ("key", "comment"), "rejected section")["key"], str, "key"),
                    _typed(s["comment"], str, "comment", null=True))
                    for s in _typed(changes["rejected_sections"], list, "rejected_sections"))),
            sections=sections,
            plan_applied=_typed(body["plan_applied"], bool, "plan_applied"),
        )


#: the keys of a phase control value's JSON, all of them always present
CONTROL_KEYS: Final = ("interrupted", "reset_to", "repair", "changes", "sections",
                       "plan_applied")
#: a phase nothing steers (a new phase, or one whose attempt completed)
NO_CONTROL: Final = PhaseControl()
_NO_CONTROL_JSON: Final = NO_CONTROL.to_json()


def _keys(value: Any, keys: Sequence[str], what: str) -> Any:
    if not isinstance(value, dict) or value.keys() != set(keys):
        found = sorted(value) if isinstance(value, dict) else type(value).__name__
        raise ValueError(f"phase control: {what} must have exactly the keys {list(keys)}, "
                         f"not {found}")
    return value


def _typed(value: Any, kind: type, what: str, *, null: bool = False) -> Any:
    if (value is None and null) or isinstance(value, kind):
        return value
    raise ValueError(f"phase control: {what} must be {kind.__name__}"
                     f"{' or null' if null else ''}, not {type(value).__name__}")


@dataclass(frozen=True, slots=True)
class Phase:
    id: int
    run_id: str
    position: int
    key: str
    origin: str
    definition: PhaseDef
    state: PhaseState = PhaseState.PENDING
    attempt: int = 0
    repairs: int = 0
    round: int = 0
    artifact_sha: str | None = None
    artifact_stored: str | None = None
    checkpoint_sha: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    failure_code: str | None = None
    failure_reason: str | None = None
    control: PhaseControl = NO_CONTROL
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0

    @property
    def title(self) -> str:
        return self.definition.title

    def to_json(self) -> dict[str, Any]:
        artifact = self.definition.artifact
        return {
            "key": self.key, "title": self.title, "state": str(self.state),
            "role": self.definition.role, "origin": self.origin, "attempt": self.attempt,
            "repairs": self.repairs, "round": self.round,
            "artifact": ({"path": artifact.path, "schema": artifact.schema,
                          "sha256": self.artifact_sha, "stored": self.artifact_stored}
                         if artifact else None),
            "checkpoint": self.checkpoint_sha, "started_at": iso(self.started_at),
            "ended_at": iso(self.ended_at),
            "failure": ({"code": self.failure_code, "reason": self.failure_reason}
                        if self.failure_code else None),
            "usage": {"tokens_in": self.tokens_in, "tokens_out": self.tokens_out,
                      "cost_usd": round(self.cost_usd, 6)},
        }


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append; ``key`` makes the append idempotent."""

    type: str
    phase: str | None = None
    payload: Mapping[str, Any] = field(default_factory=dict)
    key: str | None = None


@dataclass(frozen=True, slots=True)
class Event:
    run_id: str
    seq: int
    type: str
    phase: str | None
    payload: Mapping[str, Any]
    ts: datetime

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "seq": self.seq, "type": self.type, "ts": iso(self.ts),
                "phase": self.phase, "payload": dict(self.payload)}


@dataclass(frozen=True, slots=True)
class Evidence:
    """What an approver is shown: the bytes of the artifact and the state of the tree."""

    artifact_path: str | None
    artifact_sha: str | None
    head_sha: str | None
    tree_sha: str | None

    def to_json(self) -> dict[str, Any]:
        return {"artifact_path": self.artifact_path, "artifact_sha256": self.artifact_sha,
                "head": self.head_sha, "tree": self.tree_sha}


@dataclass(frozen=True, slots=True)
class Approval:
    id: int
    run_id: str
    phase_key: str
    gate: str
    round: int
    state: ApprovalState
    message: str
    options: tuple[str, ...]
    approvers: tuple[str, ...]
    sections: str | None
    evidence: Evidence
    opened_at: datetime
    deadline: datetime | None = None
    warned_at: datetime | None = None
    escalation_applied: int = 0
    next_due_at: datetime | None = None
    resolved_at: datetime | None = None
    resolved_by: str | None = None
    resolution: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "run_id": self.run_id, "phase": self.phase_key, "gate": self.gate,
            "round": self.round, "state": str(self.state), "message": self.message,
            "options": list(self.options), "approvers": list(self.approvers),
            "sections": self.sections, "evidence": self.evidence.to_json(),
            "opened_at": iso(self.opened_at), "deadline": iso(self.deadline),
            "escalation_applied": self.escalation_applied, "resolved_at": iso(self.resolved_at),
            "resolved_by": self.resolved_by, "resolution": self.resolution,
        }

    def gate_block(self) -> dict[str, Any]:
        """The ``gate`` object of --json output while a run waits here."""
        return {
            "approval_id": self.id, "gate": self.gate, "phase": self.phase_key,
            "round": self.round, "message": self.message, "options": list(self.options),
            "artifact": {"path": self.evidence.artifact_path,
                         "sha256": self.evidence.artifact_sha},
            "deadline": iso(self.deadline),
        }


@dataclass(frozen=True, slots=True)
class Decision:
    id: int
    approval_id: int
    client_token: str
    action: str
    actor: str
    comment: str | None
    sections: Mapping[str, str]
    evidence: Mapping[str, Any]
    created_at: datetime
    #: how it was authenticated (``access.Principal.record``); None before it was recorded
    authentication: Mapping[str, Any] | None = None
    #: what the decision did (the run's and the phase's states after it), for a retry
    outcome: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "approval_id": self.approval_id, "token": self.client_token,
                "action": self.action, "actor": self.actor, "comment": self.comment,
                "sections": dict(self.sections), "evidence": dict(self.evidence),
                "authentication": (dict(self.authentication)
                                   if self.authentication is not None else None),
                "created_at": iso(self.created_at)}


@dataclass(frozen=True, slots=True)
class Invocation:
    id: int
    run_id: str
    phase_key: str | None
    attempt: int
    kind: str
    backend: str
    argv: tuple[str, ...]
    host: str
    started_at: datetime
    pid: int | None = None
    pgid: int | None = None
    #: the process's start time (clock ticks since boot): with ``pid``, who it is
    process_start: int | None = None
    ended_at: datetime | None = None
    exit_code: int | None = None
    signal: int | None = None
    duration_ms: int | None = None
    stdout_path: str | None = None
    stderr_path: str | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    cost_usd: float | None = None
    session_id: str | None = None
    outcome: str | None = None
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "phase": self.phase_key, "attempt": self.attempt, "kind": self.kind,
            "backend": self.backend, "argv": list(self.argv), "host": self.host,
            "pid": self.pid, "started_at": iso(self.started_at), "ended_at": iso(self.ended_at),
            "exit_code": self.exit_code, "signal": self.signal, "duration_ms": self.duration_ms,
            "stdout": self.stdout_path, "stderr": self.stderr_path,
            "tokens_in": self.tokens_in, "tokens_out": self.tokens_out, "cost_usd": self.cost_usd,
            "session_id": self.session_id, "outcome": self.outcome, "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class ArtifactRecord:
    run_id: str
    phase_key: str
    attempt: int
    path: str
    schema_id: str
    sha256: str
    size: int
    stored_path: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Worker:
    id: str
    name: str
    host: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    stopped_at: datetime | None
    concurrency: int

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "host": self.host, "pid": self.pid,
                "started_at": iso(self.started_at), "heartbeat_at": iso(self.heartbeat_at),
                "stopped_at": iso(self.stopped_at), "concurrency": self.concurrency}



@dataclass(frozen=True, slots=True)
class Housekeeping:
    """What ``worktree prune`` did to an ended run: when it removed its worktree and when
    it deleted its branch (None: not done); ``events.housekeeping`` reads it from the
    run's events."""

    worktree_pruned_at: datetime | None = None
    branch_deleted_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {"worktree_pruned_at": iso(self.worktree_pruned_at),
                "branch_deleted_at": iso(self.branch_deleted_at)}


@dataclass(frozen=True, slots=True)
class WebSession:
    """A sign-in to the web page as kept: the hash of its id (the cookie holds the id),
    the API token it acts with, its CSRF token and expiry."""

    key: str
    token_prefix: str
    csrf: str
    created_at: datetime
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class ApiToken:
    """An HTTP API token as kept: its public prefix, never the secret (only its hash is)."""

    prefix: str
    actor: str
    role: str
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None

    def live(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.prefix, "actor": self.actor, "role": self.role,
                "created_at": iso(self.created_at), "created_by": self.created_by,
                "expires_at": iso(self.expires_at), "revoked_at": iso(self.revoked_at),
                "last_used_at": iso(self.last_used_at)}
