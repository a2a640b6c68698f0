"""Reading the event log: from any sequence number, so a client that reconnects misses nothing."""

from __future__ import annotations

from collections.abc import Sequence

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

    def of_types(self, types: Sequence[str], run_id: str | None = None) -> list[model.Event]:
        """The events of these types (of one run, or of all), oldest first per run."""
        query = sa.select(EVENT).where(EVENT.c.type.in_(list(types)))
        if run_id is not None:
            query = query.where(EVENT.c.run_id == run_id)
        query = query.order_by(EVENT.c.run_id, EVENT.c.seq)
        return self.db.read(lambda conn: [EVENTS.load(e._mapping) for e in conn.execute(query)])

    def span(self, run_id: str) -> tuple[int, int] | None:
        """The first and last sequence numbers the log holds for the run; None if none."""
        query = sa.select(sa.func.min(EVENT.c.seq), sa.func.max(EVENT.c.seq)).where(
            EVENT.c.run_id == run_id)
        first, last = self.db.read(lambda conn: conn.execute(query).one())
        return None if first is None else (int(first), int(last))

    def tail(self, run_id: str, count: int) -> list[model.Event]:
        return self.db.read(lambda conn: tail_in(conn, run_id, count))


def tail_in(conn: sa.Connection, run_id: str, count: int) -> list[model.Event]:
    """The last ``count`` events of the run, oldest first."""
    query = (sa.select(EVENT).where(EVENT.c.run_id == run_id)
             .order_by(EVENT.c.seq.desc()).limit(count))
    return [EVENTS.load(e._mapping) for e in reversed(conn.execute(query).all())]
