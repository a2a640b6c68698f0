"""Web page sessions as kept: opened (dropping the one they replace), found with their
token, closed one by one or all of a token's."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Final

import sqlalchemy as sa

from devflow import model
from devflow.store.database import Database
from devflow.store.rows import SESSIONS, TOKENS
from devflow.store.tables import API_TOKEN, WEB_SESSION

#: a session with its token, whose columns are read as ``t_`` + column
_WITH_TOKEN: Final = sa.select(WEB_SESSION, *(c.label(f"t_{c.key}") for c in API_TOKEN.c)).join(
    API_TOKEN, API_TOKEN.c.prefix == WEB_SESSION.c.token_prefix)


class WebSessions:
    def __init__(self, db: Database, clock: Callable[[], datetime]) -> None:
        self.db = db
        self.clock = clock

    def open(self, key: str, token_prefix: str, csrf: str, expires_at: datetime,
             replacing: str | None = None) -> model.WebSession:
        """Keep a new session; in the same transaction drop the one it replaces (the id
        the browser had) and those expired."""
        session = model.WebSession(key, token_prefix, csrf, self.clock(), expires_at)

        def tx(conn: sa.Connection) -> None:
            gone = WEB_SESSION.c.expires_at <= session.created_at
            if replacing is not None:
                gone = sa.or_(gone, WEB_SESSION.c.key == replacing)
            conn.execute(sa.delete(WEB_SESSION).where(gone))
            conn.execute(sa.insert(WEB_SESSION).values(**SESSIONS.columns(session)))
        self.db.write(tx)
        return session

    def find(self, key: str) -> tuple[model.WebSession, model.ApiToken] | None:
        """The session of this key and its token, as kept (live or not); None if none."""
        query = _WITH_TOKEN.where(WEB_SESSION.c.key == key)
        row = self.db.read(lambda conn: conn.execute(query).first())
        if row is None:
            return None
        return SESSIONS.load(row._mapping), TOKENS.load(row._mapping, prefix="t_")

    def close(self, key: str) -> bool:
        """End the session; whether there was one."""
        query = sa.delete(WEB_SESSION).where(WEB_SESSION.c.key == key)
        return bool(self.db.write(lambda conn: conn.execute(query).rowcount))

    def close_token(self, token_prefix: str) -> int:
        """End every session of a token; how many there were."""
        query = sa.delete(WEB_SESSION).where(WEB_SESSION.c.token_prefix == token_prefix)
        return int(self.db.write(lambda conn: conn.execute(query).rowcount))
