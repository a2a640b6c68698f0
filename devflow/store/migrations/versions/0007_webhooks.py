"""webhooks: an outbox written with the events, deliveries per endpoint, disabled endpoints

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'webhook_outbox',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('run_id', sa.String(length=64), nullable=False),
        sa.Column('seq', sa.Integer(), nullable=False),
        sa.Column('type', sa.String(length=64), nullable=False),
        sa.Column('phase', sa.String(length=64), nullable=True),
        sa.Column('payload', sa.JSON(), nullable=False),
        sa.Column('ts', sa.DateTime(timezone=True), nullable=False),
        sa.Column('fanned', sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(['run_id'], ['run.id'], name=op.f('fk_webhook_outbox_run_id_run')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_outbox')),
    )
    op.create_index('ix_webhook_outbox_fanned', 'webhook_outbox', ['fanned'], unique=False)
    op.create_table(
        'webhook_delivery',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('outbox_id', sa.Integer(), nullable=False),
        sa.Column('endpoint', sa.String(length=64), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('next_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('last_status', sa.Integer(), nullable=True),
        sa.Column('last_error', sa.Text(), nullable=True),
        sa.Column('delivered_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['outbox_id'], ['webhook_outbox.id'],
                                name=op.f('fk_webhook_delivery_outbox_id_webhook_outbox')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_delivery')),
        sa.UniqueConstraint('outbox_id', 'endpoint',
                            name=op.f('uq_webhook_delivery_outbox_id_endpoint')),
    )
    op.create_index('ix_webhook_delivery_state_next_at', 'webhook_delivery',
                    ['state', 'next_at'], unique=False)
    op.create_table(
        'webhook_endpoint',
        sa.Column('key', sa.String(length=64), nullable=False),
        sa.Column('shown', sa.String(length=255), nullable=False),
        sa.Column('disabled_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('status', sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint('key', name=op.f('pk_webhook_endpoint')),
    )


def downgrade() -> None:
    op.drop_table('webhook_endpoint')
    op.drop_index('ix_webhook_delivery_state_next_at', table_name='webhook_delivery')
    op.drop_table('webhook_delivery')
    op.drop_index('ix_webhook_outbox_fanned', table_name='webhook_outbox')
    op.drop_table('webhook_outbox')
