"""The tables, one per concept of DESIGN.md §1, with the indexes the hot queries use.

One schema for SQLite and PostgreSQL. Times are stored as UTC and come back aware;
JSON columns hold definitions, payloads and evidence. Constraint and index names
are fixed by a naming convention so that errors can be told apart by name and the
migrations name the same things on both databases.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

SQLModel.metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored as UTC and always read back timezone-aware."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use an aware UTC time")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _json() -> Any:
    return Field(default_factory=dict, sa_type=sa.JSON)


def _time(**kw: Any) -> Any:
    return Field(sa_type=UTCDateTime, **kw)


class DefinitionRow(SQLModel, table=True):
    """A template or persona registered by a run that used it: name@version -> hash."""

    __tablename__ = "definition"
    kind: str = Field(primary_key=True, max_length=16)
    name: str = Field(primary_key=True, max_length=64)
    version: str = Field(primary_key=True, max_length=32)
    hash: str = Field(max_length=64)
    body: dict[str, Any] = _json()
    registered_at: datetime = _time()


class RunRow(SQLModel, table=True):
    __tablename__ = "run"
    __table_args__ = (
        sa.Index("ix_run_state", "state"),
        sa.Index("ix_run_repo_base_state", "repo", "base", "state"),
        sa.Index("ix_run_lease_expires_at", "lease_expires_at"),
        sa.Index("ix_run_created_at", "created_at"),
    )
    id: str = Field(primary_key=True, max_length=64)
    template_name: str = Field(max_length=64)
    template_version: str = Field(max_length=32)
    template_hash: str = Field(max_length=64)
    template_def: dict[str, Any] = _json()
    repo: str
    base: str
    base_sha: str | None = Field(default=None, max_length=64)
    #: The last checkpoint devflow recorded on the run branch (the base at first):
    #: an interrupted attempt's leftovers are reset to it.
    checkpoint_sha: str | None = Field(default=None, max_length=64)
    branch: str
    workspace: str
    worktree: str
    host: str = Field(max_length=255)
    state: str = Field(max_length=32)
    paused_from: str | None = Field(default=None, max_length=32)
    requirements: str = Field(sa_type=sa.Text)
    objective: str | None = Field(default=None, sa_type=sa.Text)
    options: dict[str, Any] = _json()
    created_by: str = Field(max_length=255)
    created_at: datetime = _time()
    updated_at: datetime = _time()
    ended_at: datetime | None = _time(default=None)
    last_seq: int = 0
    failure_code: str | None = Field(default=None, max_length=64)
    failure_reason: str | None = Field(default=None, sa_type=sa.Text)
    report_status: str | None = Field(default=None, max_length=16)
    lease_owner: str | None = Field(default=None, max_length=255)
    lease_expires_at: datetime | None = _time(default=None)
    lease_fence: int = 0
    recoveries: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    port_base: int | None = None


class BindingRow(SQLModel, table=True):
    __tablename__ = "run_binding"
    run_id: str = Field(primary_key=True, foreign_key="run.id", max_length=64)
    role: str = Field(primary_key=True, max_length=64)
    persona_name: str = Field(max_length=64)
    persona_version: str = Field(max_length=32)
    persona_hash: str = Field(max_length=64)
    persona_def: dict[str, Any] = _json()
    backend: str = Field(max_length=32)
    backend_version: str | None = Field(default=None, max_length=255)


class PhaseRow(SQLModel, table=True):
    __tablename__ = "run_phase"
    __table_args__ = (
        sa.UniqueConstraint("run_id", "key"),
        sa.UniqueConstraint("run_id", "position"),
    )
    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="run.id", max_length=64)
    position: int
    key: str = Field(max_length=64)
    origin: str = Field(max_length=16)
    definition: dict[str, Any] = _json()
    state: str = Field(max_length=32)
    attempt: int = 0
    repairs: int = 0
    round: int = 0
    artifact_sha: str | None = Field(default=None, max_length=64)
    artifact_stored: str | None = None
    checkpoint_sha: str | None = Field(default=None, max_length=64)
    started_at: datetime | None = _time(default=None)
    ended_at: datetime | None = _time(default=None)
    failure_code: str | None = Field(default=None, max_length=64)
    failure_reason: str | None = Field(default=None, sa_type=sa.Text)
    feedback: dict[str, Any] = _json()
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0


class ArtifactRow(SQLModel, table=True):
    __tablename__ = "artifact"
    __table_args__ = (sa.UniqueConstraint("run_id", "phase_key", "attempt"),)
    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="run.id", max_length=64)
    phase_key: str = Field(max_length=64)
    attempt: int
    path: str
    schema_id: str = Field(max_length=128)
    sha256: str = Field(max_length=64)
    size: int
    stored_path: str
    created_at: datetime = _time()


class ApprovalRow(SQLModel, table=True):
    __tablename__ = "approval_request"
    __table_args__ = (
        sa.UniqueConstraint("run_id", "phase_key", "gate", "round"),
        sa.Index("ix_approval_request_state_next_due_at", "state", "next_due_at"),
        sa.Index("ix_approval_request_run_id", "run_id"),
    )
    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="run.id", max_length=64)
    phase_key: str = Field(max_length=64)
    gate: str = Field(max_length=64)
    round: int
    state: str = Field(max_length=32)
    message: str = Field(sa_type=sa.Text)
    options: list[str] = Field(default_factory=list, sa_type=sa.JSON)
    approvers: list[str] = Field(default_factory=list, sa_type=sa.JSON)
    sections: str | None = None
    artifact_path: str | None = None
    artifact_sha: str | None = Field(default=None, max_length=64)
    head_sha: str | None = Field(default=None, max_length=64)
    tree_sha: str | None = Field(default=None, max_length=64)
    opened_at: datetime = _time()
    deadline: datetime | None = _time(default=None)
    warned_at: datetime | None = _time(default=None)
    escalation_applied: int = 0
    #: when the sweep must next look at this request (warning, escalation step, deadline)
    next_due_at: datetime | None = _time(default=None)
    resolved_at: datetime | None = _time(default=None)
    resolved_by: str | None = Field(default=None, max_length=255)
    resolution: str | None = Field(default=None, max_length=32)


class DecisionRow(SQLModel, table=True):
    __tablename__ = "approval_decision"
    __table_args__ = (sa.UniqueConstraint("approval_id", "client_token"),)
    id: int | None = Field(default=None, primary_key=True)
    approval_id: int = Field(foreign_key="approval_request.id")
    client_token: str = Field(max_length=128)
    action: str = Field(max_length=32)
    actor: str = Field(max_length=255)
    comment: str | None = Field(default=None, sa_type=sa.Text)
    sections: dict[str, Any] = _json()
    evidence: dict[str, Any] = _json()
    outcome: dict[str, Any] = _json()
    created_at: datetime = _time()
    #: how the decision was authenticated: method, principal, id, attribution (access.py);
    #: NULL for decisions recorded before it was kept
    authentication: dict[str, Any] | None = Field(default=None, sa_type=sa.JSON)


class EventRow(SQLModel, table=True):
    __tablename__ = "run_event"
    __table_args__ = (
        sa.UniqueConstraint("run_id", "seq"),
        sa.UniqueConstraint("idem_key"),
    )
    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="run.id", max_length=64)
    seq: int
    type: str = Field(max_length=64)
    phase: str | None = Field(default=None, max_length=64)
    payload: dict[str, Any] = _json()
    ts: datetime = _time()
    idem_key: str = Field(max_length=255)


class InvocationRow(SQLModel, table=True):
    __tablename__ = "agent_invocation"
    __table_args__ = (sa.Index("ix_agent_invocation_run_id", "run_id"),)
    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="run.id", max_length=64)
    phase_key: str | None = Field(default=None, max_length=64)
    attempt: int = 0
    kind: str = Field(max_length=16)
    backend: str = Field(max_length=32)
    argv: list[str] = Field(default_factory=list, sa_type=sa.JSON)
    host: str = Field(max_length=255)
    pid: int | None = None
    pgid: int | None = None
    #: /proc/<pid>/stat field 22: PID reuse cannot make another process match it
    process_start: int | None = Field(default=None, sa_type=sa.BigInteger)
    started_at: datetime = _time()
    ended_at: datetime | None = _time(default=None)
    exit_code: int | None = None
    signal: int | None = None
    duration_ms: int | None = None
    stdout_path: str | None = None
    stderr_path: str | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    cost_usd: float | None = None
    session_id: str | None = Field(default=None, max_length=255)
    outcome: str | None = Field(default=None, max_length=32)
    reason: str | None = Field(default=None, sa_type=sa.Text)


class WorkerRow(SQLModel, table=True):
    __tablename__ = "worker"
    __table_args__ = (sa.Index("ix_worker_heartbeat_at", "heartbeat_at"),)
    id: str = Field(primary_key=True, max_length=255)
    name: str = Field(max_length=255)
    host: str = Field(max_length=255)
    pid: int
    started_at: datetime = _time()
    heartbeat_at: datetime = _time()
    stopped_at: datetime | None = _time(default=None)
    concurrency: int = 1
