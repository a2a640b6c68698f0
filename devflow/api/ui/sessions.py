"""Web sessions' cookies, and the one-time messages a form leaves for the next page.

A session itself is kept in the database (``App.session_open``, ``App.session``): the
cookie holds a random 256-bit id, the database only its hash, with the API token the
session acts with (never the token), its CSRF token and its expiry (``TTL``, never
beyond the token's own). Signing in always opens a new session and ends the one the
browser had; revoking the token ends its sessions. Sessions survive a restart of the
server and are shared by servers on one database.

A form's outcome ("approve recorded", "already decided") is told once, on the next
page of the session: these messages live in the server's memory only (a restart loses
an untold one, nothing else).
"""

from __future__ import annotations

import threading

#: the session cookie
COOKIE = "devflow_session"
#: the sign-in form's own CSRF cookie (before there is a session)
LOGIN_COOKIE = "devflow_login"
#: how long a session lasts after sign-in, in seconds
TTL = 12 * 3600.0


class Flashes:
    """Messages for the next page of a session, by the session's key (thread-safe)."""

    def __init__(self) -> None:
        self._by_key: dict[str, list[str]] = {}
        self._lock = threading.Lock()

    def add(self, key: str, message: str) -> None:
        with self._lock:
            self._by_key.setdefault(key, []).append(message)

    def take(self, key: str) -> list[str]:
        with self._lock:
            return self._by_key.pop(key, [])
