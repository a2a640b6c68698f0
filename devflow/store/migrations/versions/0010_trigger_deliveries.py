"""trigger deliveries: webhook deliveries of triggers, unique per (trigger, source, id)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('trigger_delivery',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('trigger', sa.String(length=48), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('delivery_id', sa.String(length=200), nullable=False),
    sa.Column('event', sa.String(length=128), nullable=False),
    sa.Column('subject', sa.String(length=255), nullable=False),
    sa.Column('sender', sa.String(length=255), nullable=True),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('run_id', sa.String(length=64), nullable=True),
    sa.Column('fields', sa.JSON(), nullable=False),
    sa.Column('claimed_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_trigger_delivery')),
    sa.UniqueConstraint('trigger', 'source', 'delivery_id',
                        name=op.f('uq_trigger_delivery_trigger_source_delivery_id'))
    )
    with op.batch_alter_table('trigger_delivery', schema=None) as batch_op:
        batch_op.create_index('ix_trigger_delivery_subject', ['trigger', 'subject', 'state'],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table('trigger_delivery', schema=None) as batch_op:
        batch_op.drop_index('ix_trigger_delivery_subject')
    op.drop_table('trigger_delivery')
