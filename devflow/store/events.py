"""Reading the event log: from any sequence number, so a client that reconnects misses nothing."""

from __future__ import annotations

import sqlalchemy as sa
from sqlmodel import Session, col, select

from devflow import model
from devflow.store import rows
from devflow.store.database import Database
from devflow.store.records import EVENT
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
        return self.db.read(lambda session: tail_in(session.connection(), run_id, count))


def tail_in(conn: sa.Connection, run_id: str, count: int) -> list[model.Event]:
    """The last ``count`` events of the run, oldest first."""
    query = (sa.select(EVENT).where(EVENT.c.run_id == run_id)
             .order_by(EVENT.c.seq.desc()).limit(count))
    return [rows.event(e) for e in reversed(conn.execute(query).all())]
