"""Storage: the only package that imports SQLAlchemy, Alembic or psycopg.

``Store`` gathers the verbs by noun: ``runs`` (create, change under a lock, read),
``events``, ``approvals``, ``leases`` (and workers), ``registry`` (definitions),
``tokens`` (the HTTP API's), ``sessions`` (the web page's), ``outbox`` (webhooks).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from devflow.model import utcnow
from devflow.requests import TickClaim
from devflow.store import migrate
from devflow.store.approvals import Approvals
from devflow.store.database import Database, sqlite_file
from devflow.store.deliveries import Deliveries
from devflow.store.events import Events
from devflow.store.leases import Claimed, Leases
from devflow.store.outbox import Due, Outbox
from devflow.store.registry import Registry
from devflow.store.runs import History, Limits, NewRun, Ports, Runs
from devflow.store.runtx import Redactor, RunTx
from devflow.store.tokens import Tokens
from devflow.store.triggers import Triggers
from devflow.store.websessions import WebSessions

__all__ = ["Claimed", "Database", "Due", "History", "Limits", "NewRun", "Ports", "RunTx",
           "Store", "TickClaim", "sqlite_file"]


class Store:
    def __init__(self, db: Database, clock: Callable[[], datetime] = utcnow,
                 redact: Redactor | None = None) -> None:
        self.db = db
        self.clock = clock
        self.runs = Runs(db, clock, redact)
        self.events = Events(db)
        self.approvals = Approvals(db)
        self.leases = Leases(db, clock)
        self.registry = Registry(db)
        self.triggers = Triggers(db, clock)
        self.deliveries = Deliveries(db, clock)
        self.tokens = Tokens(db, clock)
        self.sessions = WebSessions(db, clock)
        self.outbox = Outbox(db, clock)

    @classmethod
    def open(cls, url: str, *, clock: Callable[[], datetime] = utcnow,
             redact: Redactor | None = None, pool_size: int = 8, migrate_now: bool = True) -> Store:
        db = Database(url, pool_size=pool_size)
        if migrate_now:
            try:
                migrate.ensure_current(db)
            except BaseException:
                db.dispose()
                raise
        return cls(db, clock, redact)

    def close(self) -> None:
        self.db.dispose()
