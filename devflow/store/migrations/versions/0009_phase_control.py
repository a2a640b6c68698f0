"""phase control: the untyped ``run_phase.feedback`` becomes ``run_phase.control``

``control`` holds ``model.PhaseControl``'s JSON, every key present (``interrupted``,
``reset_to``, ``repair``, ``changes``, ``sections``, ``plan_applied``). Each phase's
``feedback`` is converted as devflow read it: ``interrupted`` when the key was there,
the others when they had their shape; keys devflow never read are dropped.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

# The table as this migration sees it, on its own (devflow's tables change after it).
_PHASE = sa.table('run_phase', sa.column('id', sa.Integer()), sa.column('feedback', sa.JSON()),
                  sa.column('control', sa.JSON()))


def upgrade() -> None:
    with op.batch_alter_table('run_phase', schema=None) as batch_op:
        batch_op.add_column(sa.Column('control', sa.JSON(), nullable=True))
    conn = op.get_bind()
    for row in conn.execute(sa.select(_PHASE.c.id, _PHASE.c.feedback)).all():
        conn.execute(sa.update(_PHASE).where(_PHASE.c.id == row.id)
                     .values(control=control_of(row.feedback)))
    with op.batch_alter_table('run_phase', schema=None) as batch_op:
        batch_op.alter_column('control', existing_type=sa.JSON(), nullable=False)
        batch_op.drop_column('feedback')


def downgrade() -> None:
    with op.batch_alter_table('run_phase', schema=None) as batch_op:
        batch_op.add_column(sa.Column('feedback', sa.JSON(), nullable=True))
    conn = op.get_bind()
    for row in conn.execute(sa.select(_PHASE.c.id, _PHASE.c.control)).all():
        conn.execute(sa.update(_PHASE).where(_PHASE.c.id == row.id)
                     .values(feedback=feedback_of(row.control)))
    with op.batch_alter_table('run_phase', schema=None) as batch_op:
        batch_op.alter_column('feedback', existing_type=sa.JSON(), nullable=False)
        batch_op.drop_column('control')


def control_of(feedback: Any) -> dict[str, Any]:
    """The control value of an old ``feedback`` object."""
    old = feedback if isinstance(feedback, dict) else {}
    repair, changes, sections = old.get('repair'), old.get('changes'), old.get('sections')
    return {
        'interrupted': 'interrupted' in old,
        'reset_to': _text(old.get('reset_to')),
        'repair': {
            'code': _text(repair.get('code')) or '',
            'errors': [{'pointer': _text(e.get('pointer')) or '',
                        'message': _text(e.get('message')) or ''}
                       for e in _list(repair.get('errors')) if isinstance(e, dict)],
        } if isinstance(repair, dict) else None,
        'changes': {
            'actor': _text(changes.get('actor')) or '',
            'comment': _text(changes.get('comment')),
            'rejected_sections': [{'key': str(s['key']), 'comment': _text(s.get('comment'))}
                                  for s in _list(changes.get('rejected_sections'))
                                  if isinstance(s, dict) and 'key' in s],
        } if isinstance(changes, dict) else None,
        'sections': ({str(k): str(v) for k, v in sections.items()}
                     if isinstance(sections, dict) else {}),
        'plan_applied': bool(old.get('plan_applied')),
    }


def feedback_of(control: Any) -> dict[str, Any]:
    """The old ``feedback`` object of a control value: its keys that were set."""
    value = control if isinstance(control, dict) else {}
    old: dict[str, Any] = {}
    if value.get('interrupted'):
        old['interrupted'] = True
    for key in ('reset_to', 'repair', 'changes'):
        if value.get(key) is not None:
            old[key] = value[key]
    if value.get('sections'):
        old['sections'] = value['sections']
    if value.get('plan_applied'):
        old['plan_applied'] = True
    return old


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
