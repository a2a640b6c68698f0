"""Reading approval requests and decisions (deciding happens in a RunTx)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from devflow import model
from devflow.errors import Code, DevflowError
from devflow.states import ApprovalState
from devflow.store.database import Database
from devflow.store.rows import APPROVALS, DECISIONS
from devflow.store.statements import APPROVAL, DECISION, by_id


class Approvals:
    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, approval_id: int) -> model.Approval:
        def tx(conn: sa.Connection) -> model.Approval:
            row = conn.execute(by_id(APPROVAL), {"id": approval_id}).first()
            if row is None:
                raise approval_not_found(approval_id)
            return APPROVALS.load(row._mapping)
        return self.db.read(tx)

    def find(self, *, pending: bool = False, run_id: str | None = None,
             limit: int = 500) -> list[model.Approval]:
        return self.db.read(lambda conn: approvals_in(
            conn, pending=pending, run_id=run_id, limit=limit))

    def due(self, now: datetime, limit: int = 500) -> list[model.Approval]:
        """Pending requests the sweep must look at now (a warning, a step, a deadline)."""
        query = (sa.select(APPROVAL)
                 .where(APPROVAL.c.state == str(ApprovalState.PENDING),
                        APPROVAL.c.next_due_at <= now)
                 .order_by(APPROVAL.c.next_due_at).limit(limit))
        return self.db.read(lambda conn: [APPROVALS.load(a._mapping) for a in conn.execute(query)])

    def decisions(self, *, approval_id: int | None = None,
                  run_id: str | None = None) -> list[model.Decision]:
        return self.db.read(lambda conn: decisions_in(
            conn, approval_id=approval_id, run_id=run_id))


def approval_not_found(approval_id: int) -> DevflowError:
    return DevflowError(Code.APPROVAL_NOT_FOUND, f"no approval request {approval_id}",
                        hint="`devflow approvals list --pending` shows open requests")


def approvals_in(conn: sa.Connection, *, pending: bool = False, run_id: str | None = None,
                 limit: int = 500) -> list[model.Approval]:
    query = sa.select(APPROVAL)
    if pending:
        query = query.where(APPROVAL.c.state == str(ApprovalState.PENDING))
    if run_id:
        query = query.where(APPROVAL.c.run_id == run_id)
    return [APPROVALS.load(a._mapping)
            for a in conn.execute(query.order_by(APPROVAL.c.id).limit(limit))]


def decisions_in(conn: sa.Connection, *, approval_id: int | None = None,
                 run_id: str | None = None) -> list[model.Decision]:
    query = sa.select(DECISION)
    if approval_id is not None:
        query = query.where(DECISION.c.approval_id == approval_id)
    if run_id is not None:
        query = query.join(APPROVAL, APPROVAL.c.id == DECISION.c.approval_id).where(
            APPROVAL.c.run_id == run_id)
    return [DECISIONS.load(d._mapping) for d in conn.execute(query.order_by(DECISION.c.id))]
