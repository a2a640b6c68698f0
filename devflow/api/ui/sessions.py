"""Web sessions: a random id in an HttpOnly cookie, the session itself on the server.

A session holds the id of the API token it was opened with (never the token), its
CSRF token and an expiry (``TTL``, and never beyond the token's own). Each request
reads the token again (``App.live_token``): a revoked or expired token ends its
sessions. Signing in always opens a new session (a new id) and drops the one the
browser had, so an id planted before sign-in is worthless after it. Sessions live in
the server's memory: a restart of ``devflow serve`` signs everyone out.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta

#: the session cookie
COOKIE = "devflow_session"
#: the sign-in form's own CSRF cookie (before there is a session)
LOGIN_COOKIE = "devflow_login"
#: how long a session lasts after sign-in
TTL = timedelta(hours=12)


@dataclass
class Session:
    token_id: str
    actor: str
    role: str
    csrf: str
    expires_at: datetime
    #: a message for the next page shown (the outcome of a form)
    flash: list[str] = field(default_factory=list)


def _key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class Sessions:
    """The live sessions of this server, by the hash of their id (thread-safe)."""

    def __init__(self) -> None:
        self._by_key: dict[str, Session] = {}
        self._lock = threading.Lock()

    def open(self, token_id: str, actor: str, role: str, now: datetime,
             token_expires: datetime | None, replacing: str | None = None) -> tuple[str, Session]:
        """A new session (its id, to send once as the cookie); ``replacing``: the id the
        browser had, dropped."""
        session_id = secrets.token_urlsafe(32)
        expires = now + TTL if token_expires is None else min(now + TTL, token_expires)
        session = Session(token_id, actor, role, secrets.token_urlsafe(32), expires)
        with self._lock:
            if replacing:
                self._by_key.pop(_key(replacing), None)
            for key in [k for k, s in self._by_key.items() if s.expires_at <= now]:
                del self._by_key[key]
            self._by_key[_key(session_id)] = session
        return session_id, session

    def get(self, session_id: str | None, now: datetime) -> Session | None:
        if not session_id:
            return None
        with self._lock:
            session = self._by_key.get(_key(session_id))
            if session is not None and session.expires_at <= now:
                del self._by_key[_key(session_id)]
                return None
            return session

    def close(self, session_id: str | None) -> None:
        if session_id:
            with self._lock:
                self._by_key.pop(_key(session_id), None)

    def close_token(self, token_id: str) -> int:
        """End every session of a token (it was revoked or expired); how many there were."""
        with self._lock:
            keys = [k for k, s in self._by_key.items() if s.token_id == token_id]
            for key in keys:
                del self._by_key[key]
            return len(keys)
