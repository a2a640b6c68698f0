"""Storage: the only package that imports SQLAlchemy, Alembic or psycopg.

``Store`` gathers the verbs by noun: ``runs`` (create, change under a lock, read),
``events``, ``approvals``, ``leases`` (and workers), ``registry`` (definitions),
``tokens`` (the HTTP API's), ``sessions`` (the web page's), ``outbox`` (webhooks).
``triggers`` and ``deliveries`` are imported when first asked for, with the trigger
modules they need (ticks, hooks): a command that starts, drives or reads runs loads
none of them (docs/performance.md).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from devflow.model import utcnow
from devflow.requests import TickClaim
from devflow.store import migrate
from devflow.store.approvals import Approvals
from devflow.store.database import Database, sqlite_file
from devflow.store.events import Events
from devflow.store.leases import Claimed, Leases
from devflow.store.outbox import Due, Outbox
from devflow.store.registry import Registry
from devflow.store.runs import History, Limits, NewRun, Ports, Runs
from devflow.store.runtx import Redactor, RunTx
from devflow.store.tokens import Tokens
from devflow.store.websessions import WebSessions

if TYPE_CHECKING:
    from devflow.store.deliveries import Deliveries
    from devflow.store.triggers import Triggers

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
        self.tokens = Tokens(db, clock)
        self.sessions = WebSessions(db, clock)
        self.outbox = Outbox(db, clock)

    @functools.cached_property
    def triggers(self) -> Triggers:
        from devflow.store.triggers import Triggers  # noqa: PLC0415 - see the module doc
        return Triggers(self.db, self.clock)

    @functools.cached_property
    def deliveries(self) -> Deliveries:
        from devflow.store.deliveries import Deliveries  # noqa: PLC0415 - as above
        return Deliveries(self.db, self.clock)

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


def preload() -> None:
    """Import both dialects and the trigger tables (``devflow daemon``: one import for many
    commands, on either database), connecting to nothing."""
    import sqlalchemy.dialects.postgresql.psycopg  # noqa: PLC0415
    import sqlalchemy.dialects.sqlite  # noqa: F401, PLC0415

    from devflow.store import deliveries, triggers  # noqa: F401, PLC0415
