"""an invocation records its process's start time: with the pid, what PID reuse cannot fake

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('agent_invocation', schema=None) as batch_op:
        batch_op.add_column(sa.Column('process_start', sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('agent_invocation', schema=None) as batch_op:
        batch_op.drop_column('process_start')
