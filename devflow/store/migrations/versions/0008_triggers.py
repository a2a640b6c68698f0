"""triggers: their state, their ticks (unique per trigger and scheduled time), their events

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('trigger_state',
    sa.Column('name', sa.String(length=48), nullable=False),
    sa.Column('paused', sa.Boolean(), nullable=False),
    sa.Column('paused_by', sa.String(length=255), nullable=True),
    sa.Column('paused_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('checked_until', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_trigger_state'))
    )
    op.create_table('trigger_tick',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('trigger', sa.String(length=48), nullable=False),
    sa.Column('scheduled_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('run_id', sa.String(length=64), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('fired_by', sa.String(length=255), nullable=True),
    sa.Column('claimed_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_trigger_tick')),
    sa.UniqueConstraint('trigger', 'scheduled_at',
                        name=op.f('uq_trigger_tick_trigger_scheduled_at'))
    )
    with op.batch_alter_table('trigger_tick', schema=None) as batch_op:
        batch_op.create_index('ix_trigger_tick_trigger_state', ['trigger', 'state'],
                              unique=False)
        batch_op.create_index('ix_trigger_tick_run_id', ['run_id'], unique=False)
    op.create_table('trigger_event',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('trigger', sa.String(length=48), nullable=False),
    sa.Column('type', sa.String(length=64), nullable=False),
    sa.Column('scheduled_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('run_id', sa.String(length=64), nullable=True),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('ts', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_trigger_event'))
    )
    with op.batch_alter_table('trigger_event', schema=None) as batch_op:
        batch_op.create_index('ix_trigger_event_trigger_id', ['trigger', 'id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('trigger_event', schema=None) as batch_op:
        batch_op.drop_index('ix_trigger_event_trigger_id')
    op.drop_table('trigger_event')
    with op.batch_alter_table('trigger_tick', schema=None) as batch_op:
        batch_op.drop_index('ix_trigger_tick_run_id')
        batch_op.drop_index('ix_trigger_tick_trigger_state')
    op.drop_table('trigger_tick')
    op.drop_table('trigger_state')
