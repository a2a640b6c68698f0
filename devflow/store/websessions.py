"""Web page sessions as kept: opened (dropping the one they replace), found with their
token, closed one by one or all of a token's."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from devflow import model
from devflow.store.database import Database
from devflow.store.tables import API_TOKEN, WEB_SESSION


def _session(row: Any) -> model.WebSession:
    return model.WebSession(row.key, row.token_prefix, row.csrf, row.created_at,
                            row.expires_at)


class WebSessions:
    def __init__(self, db: Database, clock: Callable[[], datetime]) -> None:
        self.db = db
        self.clock = clock

    def open(self, key: str, token_prefix: str, csrf: str, expires_at: datetime,
             replacing: str | None = None) -> model.WebSession:
        """Keep a new session; in the same transaction drop the one it replaces (the id
        the browser had) and those expired."""
        now = self.clock()

        def tx(conn: sa.Connection) -> None:
            gone = WEB_SESSION.c.expires_at <= now
            if replacing is not None:
                gone = sa.or_(gone, WEB_SESSION.c.key == replacing)
            conn.execute(sa.delete(WEB_SESSION).where(gone))
            conn.execute(sa.insert(WEB_SESSION).values(
                key=key, token_prefix=token_prefix, csrf=csrf, created_at=now,
                expires_at=expires_at))
        self.db.write(tx)
        return model.WebSession(key, token_prefix, csrf, now, expires_at)

    def find(self, key: str) -> tuple[model.WebSession, model.ApiToken] | None:
        """The session of this key and its token, as kept (live or not); None if none."""
        token = API_TOKEN.c
        query = (sa.select(WEB_SESSION, token.actor, token.role,
                           token.created_at.label("token_created_at"), token.created_by,
                           token.expires_at.label("token_expires_at"), token.revoked_at,
                           token.last_used_at)
                 .join(API_TOKEN, token.prefix == WEB_SESSION.c.token_prefix)
                 .where(WEB_SESSION.c.key == key))
        row = self.db.read(lambda conn: conn.execute(query).first())
        if row is None:
            return None
        return _session(row), model.ApiToken(
            row.token_prefix, row.actor, row.role, row.token_created_at, row.created_by,
            row.token_expires_at, row.revoked_at, row.last_used_at)

    def close(self, key: str) -> bool:
        """End the session; whether there was one."""
        query = sa.delete(WEB_SESSION).where(WEB_SESSION.c.key == key)
        return bool(self.db.write(lambda conn: conn.execute(query).rowcount))

    def close_token(self, token_prefix: str) -> int:
        """End every session of a token; how many there were."""
        query = sa.delete(WEB_SESSION).where(WEB_SESSION.c.token_prefix == token_prefix)
        return int(self.db.write(lambda conn: conn.execute(query).rowcount))
