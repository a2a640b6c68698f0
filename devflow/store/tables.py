"""The tables, one per concept of DESIGN.md §1, with the indexes the hot queries use.

One schema for SQLite and PostgreSQL, declared with SQLAlchemy Core: the store reads and
writes with Core statements (``devflow.store.statements``), and each table's rows are
the frozen values of ``devflow.model``, mapped by one generic mapper
(``devflow.store.rows``, which checks at import that every column has its field): no
mapped classes, and a command that only reads imports no ORM (docs/performance.md,
"Read commands").
Times are stored as UTC and come back aware; JSON columns hold definitions, payloads
and evidence. Constraint and index names are fixed by a naming convention so that
errors can be told apart by name and the migrations name the same things on both
databases. Column defaults are applied by SQLAlchemy on insert (none in the database).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.types import TypeDecorator

from devflow.model import NO_CONTROL

METADATA: Final = sa.MetaData(naming_convention={
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
})


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


# -- column kinds: NOT NULL unless said, the way the schema has always been written -------
def _str(name: str, length: int | None = None, *, null: bool = False, **kw: Any) -> sa.Column[Any]:
    return sa.Column(name, sa.String(length), nullable=null, **kw)


def _text(name: str, *, null: bool = False) -> sa.Column[Any]:
    return sa.Column(name, sa.Text(), nullable=null)


def _int(name: str, default: int | None = None, *, null: bool = False) -> sa.Column[Any]:
    return sa.Column(name, sa.Integer(), nullable=null, default=default)


def _float(name: str, default: float | None = None, *, null: bool = False) -> sa.Column[Any]:
    return sa.Column(name, sa.Float(), nullable=null, default=default)


def _json(name: str, default: type[dict[str, Any]] | type[list[Any]] = dict) -> sa.Column[Any]:
    return sa.Column(name, sa.JSON(), nullable=False, default=default)


def _time(name: str, *, null: bool = False) -> sa.Column[Any]:
    return sa.Column(name, UTCDateTime(), nullable=null)


def _id() -> sa.Column[Any]:
    return sa.Column("id", sa.Integer(), primary_key=True)


def _run_id(*, key: bool = False) -> sa.Column[Any]:
    return sa.Column("run_id", sa.String(64), sa.ForeignKey("run.id"), primary_key=key,
                     nullable=False)


#: A template or persona registered by a run that used it: name@version -> hash.
DEFINITION: Final = sa.Table(
    "definition", METADATA,
    _str("kind", 16, primary_key=True), _str("name", 64, primary_key=True),
    _str("version", 32, primary_key=True), _str("hash", 64), _json("body"),
    _time("registered_at"),
)

RUN: Final = sa.Table(
    "run", METADATA,
    _str("id", 64, primary_key=True), _str("template_name", 64), _str("template_version", 32),
    _str("template_hash", 64), _json("template_def"), _str("repo"), _str("base"),
    _str("base_sha", 64, null=True),
    # The last checkpoint devflow recorded on the run branch (the base at first): an
    # interrupted attempt's leftovers are reset to it.
    _str("checkpoint_sha", 64, null=True),
    _str("branch"), _str("workspace"), _str("worktree"), _str("host", 255), _str("state", 32),
    _str("paused_from", 32, null=True), _text("requirements"), _text("objective", null=True),
    _json("options"), _str("created_by", 255), _time("created_at"), _time("updated_at"),
    _time("ended_at", null=True), _int("last_seq", 0), _str("failure_code", 64, null=True),
    _text("failure_reason", null=True), _str("report_status", 16, null=True),
    _str("lease_owner", 255, null=True), _time("lease_expires_at", null=True),
    _int("lease_fence", 0), _int("recoveries", 0), _int("tokens_in", 0), _int("tokens_out", 0),
    _float("cost_usd", 0.0), _int("port_base", null=True),
    sa.Index("ix_run_state", "state"),
    sa.Index("ix_run_repo_base_state", "repo", "base", "state"),
    sa.Index("ix_run_lease_expires_at", "lease_expires_at"),
    sa.Index("ix_run_created_at", "created_at"),
)

BINDING: Final = sa.Table(
    "run_binding", METADATA,
    _run_id(key=True), _str("role", 64, primary_key=True), _str("persona_name", 64),
    _str("persona_version", 32), _str("persona_hash", 64), _json("persona_def"),
    _str("backend", 32), _str("backend_version", 255, null=True),
)

PHASE: Final = sa.Table(
    "run_phase", METADATA,
    _id(), _run_id(), _int("position"), _str("key", 64), _str("origin", 16),
    _json("definition"), _str("state", 32), _int("attempt", 0), _int("repairs", 0),
    _int("round", 0), _str("artifact_sha", 64, null=True), _str("artifact_stored", null=True),
    _str("checkpoint_sha", 64, null=True), _time("started_at", null=True),
    _time("ended_at", null=True), _str("failure_code", 64, null=True),
    _text("failure_reason", null=True),
    # what steers the next attempt: model.PhaseControl's JSON, every key present
    sa.Column("control", sa.JSON(), nullable=False, default=NO_CONTROL.to_json),
    _int("tokens_in", 0),
    _int("tokens_out", 0), _float("cost_usd", 0.0),
    sa.UniqueConstraint("run_id", "key"),
    sa.UniqueConstraint("run_id", "position"),
)

ARTIFACT: Final = sa.Table(
    "artifact", METADATA,
    _id(), _run_id(), _str("phase_key", 64), _int("attempt"), _str("path"),
    _str("schema_id", 128), _str("sha256", 64), _int("size"), _str("stored_path"),
    _time("created_at"),
    sa.UniqueConstraint("run_id", "phase_key", "attempt"),
)

APPROVAL: Final = sa.Table(
    "approval_request", METADATA,
    _id(), _run_id(), _str("phase_key", 64), _str("gate", 64), _int("round"),
    _str("state", 32), _text("message"), _json("options", list), _json("approvers", list),
    _str("sections", null=True), _str("artifact_path", null=True),
    _str("artifact_sha", 64, null=True), _str("head_sha", 64, null=True),
    _str("tree_sha", 64, null=True), _time("opened_at"), _time("deadline", null=True),
    _time("warned_at", null=True), _int("escalation_applied", 0),
    # when the sweep must next look at this request (warning, escalation step, deadline)
    _time("next_due_at", null=True),
    _time("resolved_at", null=True), _str("resolved_by", 255, null=True),
    _str("resolution", 32, null=True),
    sa.UniqueConstraint("run_id", "phase_key", "gate", "round"),
    sa.Index("ix_approval_request_state_next_due_at", "state", "next_due_at"),
    sa.Index("ix_approval_request_run_id", "run_id"),
)

DECISION: Final = sa.Table(
    "approval_decision", METADATA,
    _id(), sa.Column("approval_id", sa.Integer(), sa.ForeignKey("approval_request.id"),
                     nullable=False),
    _str("client_token", 128), _str("action", 32), _str("actor", 255),
    _text("comment", null=True), _json("sections"), _json("evidence"), _json("outcome"),
    _time("created_at"),
    # how the decision was authenticated: method, principal, id, attribution (access.py);
    # NULL for decisions recorded before it was kept
    sa.Column("authentication", sa.JSON(), nullable=True),
    sa.UniqueConstraint("approval_id", "client_token"),
)

EVENT: Final = sa.Table(
    "run_event", METADATA,
    _id(), _run_id(), _int("seq"), _str("type", 64), _str("phase", 64, null=True),
    _json("payload"), _time("ts"), _str("idem_key", 255),
    sa.UniqueConstraint("run_id", "seq"),
    sa.UniqueConstraint("idem_key"),
)

INVOCATION: Final = sa.Table(
    "agent_invocation", METADATA,
    _id(), _run_id(), _str("phase_key", 64, null=True), _int("attempt", 0), _str("kind", 16),
    _str("backend", 32), _json("argv", list), _str("host", 255), _int("pid", null=True),
    _int("pgid", null=True),
    # /proc/<pid>/stat field 22: PID reuse cannot make another process match it
    sa.Column("process_start", sa.BigInteger(), nullable=True),
    _time("started_at"), _time("ended_at", null=True),
    _int("exit_code", null=True), _int("signal", null=True), _int("duration_ms", null=True),
    _str("stdout_path", null=True), _str("stderr_path", null=True),
    _int("tokens_in", null=True), _int("tokens_out", null=True),
    _float("cost_usd", null=True), _str("session_id", 255, null=True),
    _str("outcome", 32, null=True), _text("reason", null=True),
    sa.Index("ix_agent_invocation_run_id", "run_id"),
)

WORKER: Final = sa.Table(
    "worker", METADATA,
    _str("id", 255, primary_key=True), _str("name", 255), _str("host", 255), _int("pid"),
    _time("started_at"), _time("heartbeat_at"), _time("stopped_at", null=True),
    _int("concurrency", 1),
    sa.Index("ix_worker_heartbeat_at", "heartbeat_at"),
)

#: A trigger devflow has seen (docs/triggers.md): paused or not, and the last scheduled
#: time it was evaluated up to. Its definition lives in its YAML file.
TRIGGER_STATE: Final = sa.Table(
    "trigger_state", METADATA,
    _str("name", 48, primary_key=True), sa.Column("paused", sa.Boolean(), nullable=False),
    _str("paused_by", 255, null=True), _time("paused_at", null=True),
    _text("reason", null=True), _time("checked_until"), _time("created_at"),
    _time("updated_at"),
)

#: One tick of a trigger, unique on (trigger, scheduled_at): decided once, and started
#: (``run_id``) in the transaction that creates its run.
TRIGGER_TICK: Final = sa.Table(
    "trigger_tick", METADATA,
    _id(), _str("trigger", 48), _time("scheduled_at"), _str("kind", 16), _str("state", 16),
    _str("run_id", 64, null=True), _text("reason", null=True),
    _str("fired_by", 255, null=True), _time("claimed_until", null=True),
    _time("created_at"), _time("updated_at"),
    sa.UniqueConstraint("trigger", "scheduled_at"),
    sa.Index("ix_trigger_tick_trigger_state", "trigger", "state"),
    sa.Index("ix_trigger_tick_run_id", "run_id"),
)

#: What happened to a trigger and its ticks, in order (missed ticks included).
TRIGGER_EVENT: Final = sa.Table(
    "trigger_event", METADATA,
    _id(), _str("trigger", 48), _str("type", 64), _time("scheduled_at", null=True),
    _str("run_id", 64, null=True), _json("payload"), _time("ts"),
    sa.Index("ix_trigger_event_trigger_id", "trigger", "id"),
)

#: A webhook delivery to a trigger (devflow.hooks), unique on (trigger, source, delivery
#: id): ``pending`` with a claim until the run that starts it flips it to ``started`` in
#: the transaction that inserts the run; ``duplicate`` (its subject had an active run,
#: ``run_id``), ``refused`` (the filter, ``reason``) or ``failed`` (the start's error).
TRIGGER_DELIVERY: Final = sa.Table(
    "trigger_delivery", METADATA,
    _id(), _str("trigger", 48), _str("source", 16), _str("delivery_id", 200),
    _str("event", 128), _str("subject", 255), _str("sender", 255, null=True),
    _str("state", 16), _text("reason", null=True), _str("run_id", 64, null=True),
    _json("fields"), _time("claimed_until", null=True), _time("created_at"),
    _time("updated_at"),
    sa.UniqueConstraint("trigger", "source", "delivery_id"),
    sa.Index("ix_trigger_delivery_subject", "trigger", "subject", "state"),
)

#: HTTP API tokens (devflow.tokens): the public prefix names one; only the SHA-256 of the
#: whole token is kept
API_TOKEN: Final = sa.Table(
    "api_token", METADATA,
    _str("prefix", 16, primary_key=True), _str("digest", 64), _str("actor", 255),
    _str("role", 16), _time("created_at"), _str("created_by", 255),
    _time("expires_at", null=True), _time("revoked_at", null=True),
    _time("last_used_at", null=True),
)

#: sessions of the web page: the hash of the id its cookie holds (never the id), the API
#: token it was opened with (a session lives only while its token does), its CSRF token
WEB_SESSION: Final = sa.Table(
    "web_session", METADATA,
    _str("key", 64, primary_key=True),
    sa.Column("token_prefix", sa.String(16), sa.ForeignKey("api_token.prefix"),
              nullable=False),
    _str("csrf", 64), _time("created_at"), _time("expires_at"),
    sa.Index("ix_web_session_token_prefix", "token_prefix"),
    sa.Index("ix_web_session_expires_at", "expires_at"),
)

#: events a webhook may be told of (devflow.webhooks.EVENTS), written in the transaction
#: that records the event: committed together, so none is lost between commit and send
WEBHOOK_OUTBOX: Final = sa.Table(
    "webhook_outbox", METADATA,
    _id(), _run_id(), _int("seq"), _str("type", 64), _str("phase", 64, null=True),
    _json("payload"), _time("ts"), sa.Column("fanned", sa.Boolean(), nullable=False,
                                             default=False),
    sa.Index("ix_webhook_outbox_fanned", "fanned"),
)

#: one message of the outbox to one endpoint (by the hash of its URL): its tries
WEBHOOK_DELIVERY: Final = sa.Table(
    "webhook_delivery", METADATA,
    _id(), sa.Column("outbox_id", sa.Integer(), sa.ForeignKey("webhook_outbox.id"),
                     nullable=False),
    _str("endpoint", 64), _str("state", 16), _int("attempts", 0), _time("next_at"),
    _int("last_status", null=True), _text("last_error", null=True),
    _time("delivered_at", null=True),
    sa.UniqueConstraint("outbox_id", "endpoint"),
    sa.Index("ix_webhook_delivery_state_next_at", "state", "next_at"),
)

#: endpoints a 410 Gone disabled (until their URL changes)
WEBHOOK_ENDPOINT: Final = sa.Table(
    "webhook_endpoint", METADATA,
    _str("key", 64, primary_key=True), _str("shown", 255), _time("disabled_at"),
    _int("status"),
)
