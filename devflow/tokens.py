"""HTTP API tokens: their form, their roles, and how a presented token is checked.

A token reads ``dft_<prefix>_<secret>``. The prefix (public: it names the token in
lists, logs and decisions' records) is the key it is looked up by; only the SHA-256
of the whole token is kept, so the database never holds a usable token, and the
token is shown once, when it is created. The secret is 256 random bits: a fast hash
is enough (nothing to guess), and the comparison is constant-time.

Roles are ranked, each granting what the ones below it do: ``viewer`` reads runs,
approvals and events; ``approver`` decides gates; ``operator`` starts, pauses, resumes
and aborts runs; ``admin`` lists and revokes tokens. No role mints tokens: that is
``devflow tokens create``'s, on the machine. The role says which routes a token
reaches; whether its actor may decide a given gate is ``access.authorize``'s, exactly
as on the CLI.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from typing import Final

from devflow.errors import Code, DevflowError

ROLES: Final = ("viewer", "approver", "operator", "admin")
_FORM: Final = re.compile(r"dft_([a-z2-7]{10})_[A-Za-z0-9_-]{43}")
_ALPHABET: Final = "abcdefghijklmnopqrstuvwxyz234567"


def rank(role: str) -> int:
    return ROLES.index(role)


def reaches(role: str, needed: str) -> bool:
    """Whether a token of ``role`` may use a route that needs ``needed``."""
    return rank(role) >= rank(needed)


def check_role(role: str) -> str:
    if role not in ROLES:
        raise DevflowError(Code.INVALID_INPUT, f"{role!r} is not a role",
                           hint=f"one of: {', '.join(ROLES)}")
    return role


def new() -> tuple[str, str, str]:
    """A new token: (the token, its prefix, its hash)."""
    prefix = "".join(secrets.choice(_ALPHABET) for _ in range(10))
    token = f"dft_{prefix}_{secrets.token_urlsafe(32)}"
    return token, prefix, digest(token)


def new_session() -> tuple[str, str, str]:
    """A new web session: (its id, for the cookie; the key it is kept by, the id's hash;
    its CSRF token)."""
    session_id = secrets.token_urlsafe(32)
    return session_id, digest(session_id), secrets.token_urlsafe(32)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def prefix_of(token: str) -> str | None:
    """The prefix of a well-formed token; None for anything else."""
    found = _FORM.fullmatch(token)
    return found.group(1) if found else None


def matches(token: str, kept_digest: str) -> bool:
    return hmac.compare_digest(digest(token), kept_digest)
