"""Reading the event log: from any sequence number, so a client that reconnects misses nothing."""

from __future__ import annotations

import sqlalchemy as sa

from devflow import model
from devflow.store.database import Database
from devflow.store.rows import EVENTS
from devflow.store.tables import EVENT


class Events:
    def __init__(self, db: Database) -> None:
        self.db = db

    def after(self, run_id: str, seq: int = 0, limit: int = 1000) -> list[model.Event]:
        query = (sa.select(EVENT).where(EVENT.c.run_id == run_id, EVENT.c.seq > seq)
                 .order_by(EVENT.c.seq).limit(limit))
        return self.db.read(lambda conn: [EVENTS.load(e._mapping) for e in conn.execute(query)])

    def tail(self, run_id: str, count: int) -> list[model.Event]:
        return self.db.read(lambda conn: tail_in(conn, run_id, count))


def tail_in(conn: sa.Connection, run_id: str, count: int) -> list[model.Event]:
    """The last ``count`` events of the run, oldest first."""
    query = (sa.select(EVENT).where(EVENT.c.run_id == run_id)
             .order_by(EVENT.c.seq.desc()).limit(count))
    return [EVENTS.load(e._mapping) for e in reversed(conn.execute(query).all())]
