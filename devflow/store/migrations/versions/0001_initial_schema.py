"""initial schema: runs, phases, bindings, artifacts, approvals, decisions, events,
invocations, workers and registered definitions

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('definition',
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('version', sa.String(length=32), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.Column('body', sa.JSON(), nullable=False),
    sa.Column('registered_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('kind', 'name', 'version', name=op.f('pk_definition'))
    )
    op.create_table('run',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('template_name', sa.String(length=64), nullable=False),
    sa.Column('template_version', sa.String(length=32), nullable=False),
    sa.Column('template_hash', sa.String(length=64), nullable=False),
    sa.Column('template_def', sa.JSON(), nullable=False),
    sa.Column('repo', sa.String(), nullable=False),
    sa.Column('base', sa.String(), nullable=False),
    sa.Column('base_sha', sa.String(length=64), nullable=True),
    sa.Column('checkpoint_sha', sa.String(length=64), nullable=True),
    sa.Column('branch', sa.String(), nullable=False),
    sa.Column('workspace', sa.String(), nullable=False),
    sa.Column('worktree', sa.String(), nullable=False),
    sa.Column('host', sa.String(length=255), nullable=False),
    sa.Column('state', sa.String(length=32), nullable=False),
    sa.Column('paused_from', sa.String(length=32), nullable=True),
    sa.Column('requirements', sa.Text(), nullable=False),
    sa.Column('objective', sa.Text(), nullable=True),
    sa.Column('options', sa.JSON(), nullable=False),
    sa.Column('created_by', sa.String(length=255), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_seq', sa.Integer(), nullable=False),
    sa.Column('failure_code', sa.String(length=64), nullable=True),
    sa.Column('failure_reason', sa.Text(), nullable=True),
    sa.Column('report_status', sa.String(length=16), nullable=True),
    sa.Column('lease_owner', sa.String(length=255), nullable=True),
    sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('lease_fence', sa.Integer(), nullable=False),
    sa.Column('recoveries', sa.Integer(), nullable=False),
    sa.Column('tokens_in', sa.Integer(), nullable=False),
    sa.Column('tokens_out', sa.Integer(), nullable=False),
    sa.Column('cost_usd', sa.Float(), nullable=False),
    sa.Column('port_base', sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_run'))
    )
    with op.batch_alter_table('run', schema=None) as batch_op:
        batch_op.create_index('ix_run_created_at', ['created_at'], unique=False)
        batch_op.create_index('ix_run_lease_expires_at', ['lease_expires_at'], unique=False)
        batch_op.create_index('ix_run_repo_base_state', ['repo', 'base', 'state'], unique=False)
        batch_op.create_index('ix_run_state', ['state'], unique=False)

    op.create_table('worker',
    sa.Column('id', sa.String(length=255), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('host', sa.String(length=255), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('stopped_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('concurrency', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_worker'))
    )
    with op.batch_alter_table('worker', schema=None) as batch_op:
        batch_op.create_index('ix_worker_heartbeat_at', ['heartbeat_at'], unique=False)

    op.create_table('agent_invocation',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.String(length=64), nullable=False),
    sa.Column('phase_key', sa.String(length=64), nullable=True),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('backend', sa.String(length=32), nullable=False),
    sa.Column('argv', sa.JSON(), nullable=False),
    sa.Column('host', sa.String(length=255), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=True),
    sa.Column('pgid', sa.Integer(), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('exit_code', sa.Integer(), nullable=True),
    sa.Column('signal', sa.Integer(), nullable=True),
    sa.Column('duration_ms', sa.Integer(), nullable=True),
    sa.Column('stdout_path', sa.String(), nullable=True),
    sa.Column('stderr_path', sa.String(), nullable=True),
    sa.Column('tokens_in', sa.Integer(), nullable=True),
    sa.Column('tokens_out', sa.Integer(), nullable=True),
    sa.Column('cost_usd', sa.Float(), nullable=True),
    sa.Column('session_id', sa.String(length=255), nullable=True),
    sa.Column('outcome', sa.String(length=32), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['run_id'], ['run.id'], name=op.f('fk_agent_invocation_run_id_run')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_agent_invocation'))
    )
    with op.batch_alter_table('agent_invocation', schema=None) as batch_op:
        batch_op.create_index('ix_agent_invocation_run_id', ['run_id'], unique=False)

    op.create_table('approval_request',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.String(length=64), nullable=False),
    sa.Column('phase_key', sa.String(length=64), nullable=False),
    sa.Column('gate', sa.String(length=64), nullable=False),
    sa.Column('round', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=32), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('options', sa.JSON(), nullable=False),
    sa.Column('approvers', sa.JSON(), nullable=False),
    sa.Column('sections', sa.String(), nullable=True),
    sa.Column('artifact_path', sa.String(), nullable=True),
    sa.Column('artifact_sha', sa.String(length=64), nullable=True),
    sa.Column('head_sha', sa.String(length=64), nullable=True),
    sa.Column('tree_sha', sa.String(length=64), nullable=True),
    sa.Column('opened_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('deadline', sa.DateTime(timezone=True), nullable=True),
    sa.Column('warned_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('escalation_applied', sa.Integer(), nullable=False),
    sa.Column('next_due_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('resolved_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('resolved_by', sa.String(length=255), nullable=True),
    sa.Column('resolution', sa.String(length=32), nullable=True),
    sa.ForeignKeyConstraint(['run_id'], ['run.id'], name=op.f('fk_approval_request_run_id_run')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_approval_request')),
    sa.UniqueConstraint('run_id', 'phase_key', 'gate', 'round', name=op.f('uq_approval_request_run_id_phase_key_gate_round'))
    )
    with op.batch_alter_table('approval_request', schema=None) as batch_op:
        batch_op.create_index('ix_approval_request_run_id', ['run_id'], unique=False)
        batch_op.create_index('ix_approval_request_state_next_due_at', ['state', 'next_due_at'], unique=False)

    op.create_table('artifact',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.String(length=64), nullable=False),
    sa.Column('phase_key', sa.String(length=64), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('path', sa.String(), nullable=False),
    sa.Column('schema_id', sa.String(length=128), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('stored_path', sa.String(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['run.id'], name=op.f('fk_artifact_run_id_run')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_artifact')),
    sa.UniqueConstraint('run_id', 'phase_key', 'attempt', name=op.f('uq_artifact_run_id_phase_key_attempt'))
    )
    op.create_table('run_binding',
    sa.Column('run_id', sa.String(length=64), nullable=False),
    sa.Column('role', sa.String(length=64), nullable=False),
    sa.Column('persona_name', sa.String(length=64), nullable=False),
    sa.Column('persona_version', sa.String(length=32), nullable=False),
    sa.Column('persona_hash', sa.String(length=64), nullable=False),
    sa.Column('persona_def', sa.JSON(), nullable=False),
    sa.Column('backend', sa.String(length=32), nullable=False),
    sa.Column('backend_version', sa.String(length=255), nullable=True),
    sa.ForeignKeyConstraint(['run_id'], ['run.id'], name=op.f('fk_run_binding_run_id_run')),
    sa.PrimaryKeyConstraint('run_id', 'role', name=op.f('pk_run_binding'))
    )
    op.create_table('run_event',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.String(length=64), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('type', sa.String(length=64), nullable=False),
    sa.Column('phase', sa.String(length=64), nullable=True),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('ts', sa.DateTime(timezone=True), nullable=False),
    sa.Column('idem_key', sa.String(length=255), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['run.id'], name=op.f('fk_run_event_run_id_run')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_run_event')),
    sa.UniqueConstraint('idem_key', name=op.f('uq_run_event_idem_key')),
    sa.UniqueConstraint('run_id', 'seq', name=op.f('uq_run_event_run_id_seq'))
    )
    op.create_table('run_phase',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.String(length=64), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('origin', sa.String(length=16), nullable=False),
    sa.Column('definition', sa.JSON(), nullable=False),
    sa.Column('state', sa.String(length=32), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('repairs', sa.Integer(), nullable=False),
    sa.Column('round', sa.Integer(), nullable=False),
    sa.Column('artifact_sha', sa.String(length=64), nullable=True),
    sa.Column('artifact_stored', sa.String(), nullable=True),
    sa.Column('checkpoint_sha', sa.String(length=64), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('failure_code', sa.String(length=64), nullable=True),
    sa.Column('failure_reason', sa.Text(), nullable=True),
    sa.Column('feedback', sa.JSON(), nullable=False),
    sa.Column('tokens_in', sa.Integer(), nullable=False),
    sa.Column('tokens_out', sa.Integer(), nullable=False),
    sa.Column('cost_usd', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['run.id'], name=op.f('fk_run_phase_run_id_run')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_run_phase')),
    sa.UniqueConstraint('run_id', 'key', name=op.f('uq_run_phase_run_id_key')),
    sa.UniqueConstraint('run_id', 'position', name=op.f('uq_run_phase_run_id_position'))
    )
    op.create_table('approval_decision',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('approval_id', sa.Integer(), nullable=False),
    sa.Column('client_token', sa.String(length=128), nullable=False),
    sa.Column('action', sa.String(length=32), nullable=False),
    sa.Column('actor', sa.String(length=255), nullable=False),
    sa.Column('comment', sa.Text(), nullable=True),
    sa.Column('sections', sa.JSON(), nullable=False),
    sa.Column('evidence', sa.JSON(), nullable=False),
    sa.Column('outcome', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['approval_id'], ['approval_request.id'], name=op.f('fk_approval_decision_approval_id_approval_request')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_approval_decision')),
    sa.UniqueConstraint('approval_id', 'client_token', name=op.f('uq_approval_decision_approval_id_client_token'))
    )


def downgrade() -> None:
    op.drop_table('approval_decision')
    op.drop_table('run_phase')
    op.drop_table('run_event')
    op.drop_table('run_binding')
    op.drop_table('artifact')
    with op.batch_alter_table('approval_request', schema=None) as batch_op:
        batch_op.drop_index('ix_approval_request_state_next_due_at')
        batch_op.drop_index('ix_approval_request_run_id')

    op.drop_table('approval_request')
    with op.batch_alter_table('agent_invocation', schema=None) as batch_op:
        batch_op.drop_index('ix_agent_invocation_run_id')

    op.drop_table('agent_invocation')
    with op.batch_alter_table('worker', schema=None) as batch_op:
        batch_op.drop_index('ix_worker_heartbeat_at')

    op.drop_table('worker')
    with op.batch_alter_table('run', schema=None) as batch_op:
        batch_op.drop_index('ix_run_state')
        batch_op.drop_index('ix_run_repo_base_state')
        batch_op.drop_index('ix_run_lease_expires_at')
        batch_op.drop_index('ix_run_created_at')

    op.drop_table('run')
    op.drop_table('definition')
