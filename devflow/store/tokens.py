"""HTTP API tokens as kept: created, listed, revoked, and found by their prefix."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from devflow import model
from devflow.errors import Code, DevflowError
from devflow.store.database import Database
from devflow.store.rows import TOKENS
from devflow.store.tables import API_TOKEN

#: last use is written at most this often per token (a read is not a write each time)
TOUCH_EVERY = timedelta(seconds=60)


def _token(row: sa.Row[Any]) -> model.ApiToken:
    return TOKENS.load(row._mapping)


class Tokens:
    def __init__(self, db: Database, clock: Callable[[], datetime]) -> None:
        self.db = db
        self.clock = clock

    def create(self, prefix: str, digest: str, actor: str, role: str, created_by: str,
               expires_at: datetime | None) -> model.ApiToken:
        values = dict(prefix=prefix, digest=digest, actor=actor, role=role,
                      created_at=self.clock(), created_by=created_by, expires_at=expires_at)
        self.db.write(lambda conn: conn.execute(sa.insert(API_TOKEN).values(**values)))
        return self.get(prefix)

    def get(self, prefix: str) -> model.ApiToken:
        return _token(self._row(prefix))

    def find(self, prefix: str) -> tuple[model.ApiToken, str] | None:
        """The token of this prefix and its kept digest; None if there is none."""
        query = sa.select(API_TOKEN).where(API_TOKEN.c.prefix == prefix)
        row = self.db.read(lambda conn: conn.execute(query).first())
        return (_token(row), row.digest) if row is not None else None

    def list(self, *, include_dead: bool = False) -> list[model.ApiToken]:
        query = sa.select(API_TOKEN).order_by(API_TOKEN.c.created_at, API_TOKEN.c.prefix)
        tokens = self.db.read(lambda conn: [_token(r) for r in conn.execute(query)])
        now = self.clock()
        return tokens if include_dead else [t for t in tokens if t.live(now)]

    def any_live(self) -> bool:
        return bool(self.list())

    def revoke(self, prefix: str) -> tuple[model.ApiToken, bool]:
        """Revoke; (the token, False) when it was revoked already."""
        def tx(conn: sa.Connection) -> bool:
            row = self._row(prefix, conn)
            if row.revoked_at is not None:
                return False
            conn.execute(sa.update(API_TOKEN).where(API_TOKEN.c.prefix == prefix)
                         .values(revoked_at=self.clock()))
            return True
        changed = self.db.write(tx)
        return self.get(prefix), changed

    def touch(self, token: model.ApiToken) -> None:
        """Record a use, unless one was recorded within ``TOUCH_EVERY``."""
        now = self.clock()
        if token.last_used_at is not None and now - token.last_used_at < TOUCH_EVERY:
            return
        self.db.write(lambda conn: conn.execute(
            sa.update(API_TOKEN).where(API_TOKEN.c.prefix == token.prefix)
            .values(last_used_at=now)))

    def _row(self, prefix: str, conn: sa.Connection | None = None) -> Any:
        query = sa.select(API_TOKEN).where(API_TOKEN.c.prefix == prefix)
        row = (conn.execute(query).first() if conn is not None
               else self.db.read(lambda c: c.execute(query).first()))
        if row is None:
            raise DevflowError(Code.TOKEN_NOT_FOUND, f"no API token {prefix}",
                               hint="devflow tokens list")
        return row
