"""Reading the event log: from any sequence number, so a client that reconnects misses nothing."""

from __future__ import annotations

from sqlmodel import Session, col, select

from devflow import model
from devflow.store import rows
from devflow.store.database import Database
from devflow.store.tables import EventRow


class Events:
    def __init__(self, db: Database) -> None:
        self.db = db

    def after(self, run_id: str, seq: int = 0, limit: int = 1000) -> list[model.Event]:
        def tx(session: Session) -> list[model.Event]:
            query = (select(EventRow).where(EventRow.run_id == run_id, EventRow.seq > seq)
                     .order_by(col(EventRow.seq)).limit(limit))
            return [rows.event(e) for e in session.exec(query)]
        return self.db.read(tx)

    def tail(self, run_id: str, count: int) -> list[model.Event]:
        def tx(session: Session) -> list[model.Event]:
            query = (select(EventRow).where(EventRow.run_id == run_id)
                     .order_by(col(EventRow.seq).desc()).limit(count))
            return [rows.event(e) for e in reversed(session.exec(query).all())]
        return self.db.read(tx)
