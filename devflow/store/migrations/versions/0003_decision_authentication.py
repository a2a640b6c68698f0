"""decision authentication: how each decision's principal was authenticated

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL for the decisions recorded before: how they were authenticated was not kept
    with op.batch_alter_table('approval_decision', schema=None) as batch_op:
        batch_op.add_column(sa.Column('authentication', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('approval_decision', schema=None) as batch_op:
        batch_op.drop_column('authentication')
