"""web sessions: the web page's sign-ins, kept by the hash of their id, ended with their token

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'web_session',
        sa.Column('key', sa.String(length=64), nullable=False),
        sa.Column('token_prefix', sa.String(length=16), nullable=False),
        sa.Column('csrf', sa.String(length=64), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['token_prefix'], ['api_token.prefix'],
                                name=op.f('fk_web_session_token_prefix_api_token')),
        sa.PrimaryKeyConstraint('key', name=op.f('pk_web_session')),
    )
    op.create_index('ix_web_session_token_prefix', 'web_session', ['token_prefix'],
                    unique=False)
    op.create_index('ix_web_session_expires_at', 'web_session', ['expires_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_web_session_expires_at', table_name='web_session')
    op.drop_index('ix_web_session_token_prefix', table_name='web_session')
    op.drop_table('web_session')
