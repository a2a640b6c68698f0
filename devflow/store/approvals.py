"""Reading approval requests and decisions (deciding happens in a RunTx)."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Session, col, select

from devflow import model
from devflow.errors import Code, DevflowError
from devflow.states import ApprovalState
from devflow.store import rows
from devflow.store.database import Database
from devflow.store.tables import ApprovalRow, DecisionRow


class Approvals:
    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, approval_id: int) -> model.Approval:
        def tx(session: Session) -> model.Approval:
            row = session.get(ApprovalRow, approval_id)
            if row is None:
                raise DevflowError(Code.APPROVAL_NOT_FOUND, f"no approval request {approval_id}",
                                   hint="`devflow approvals list --pending` shows open requests")
            return rows.approval(row)
        return self.db.read(tx)

    def find(self, *, pending: bool = False, run_id: str | None = None,
             limit: int = 500) -> list[model.Approval]:
        def tx(session: Session) -> list[model.Approval]:
            query = select(ApprovalRow)
            if pending:
                query = query.where(ApprovalRow.state == str(ApprovalState.PENDING))
            if run_id:
                query = query.where(ApprovalRow.run_id == run_id)
            query = query.order_by(col(ApprovalRow.id)).limit(limit)
            return [rows.approval(a) for a in session.exec(query)]
        return self.db.read(tx)

    def due(self, now: datetime, limit: int = 500) -> list[model.Approval]:
        """Pending requests the sweep must look at now (a warning, a step, a deadline)."""
        def tx(session: Session) -> list[model.Approval]:
            query = (select(ApprovalRow)
                     .where(ApprovalRow.state == str(ApprovalState.PENDING),
                            col(ApprovalRow.next_due_at) <= now)
                     .order_by(col(ApprovalRow.next_due_at)).limit(limit))
            return [rows.approval(a) for a in session.exec(query)]
        return self.db.read(tx)

    def decisions(self, *, approval_id: int | None = None,
                  run_id: str | None = None) -> list[model.Decision]:
        def tx(session: Session) -> list[model.Decision]:
            query = select(DecisionRow)
            if approval_id is not None:
                query = query.where(DecisionRow.approval_id == approval_id)
            if run_id is not None:
                query = query.join(ApprovalRow, col(ApprovalRow.id) == DecisionRow.approval_id
                                   ).where(ApprovalRow.run_id == run_id)
            return [rows.decision(d) for d in session.exec(query.order_by(col(DecisionRow.id)))]
        return self.db.read(tx)
