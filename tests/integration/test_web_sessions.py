"""Web page sessions as kept, on SQLite and PostgreSQL: a new id at each sign-in (the old
one ended), only a hash kept, expiry (never beyond the token's), sign-out, and every
session of a token ended when it is revoked or expires."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from devflow import tokens
from devflow.app import App
from devflow.errors import Code, DevflowError
from devflow.settings import Settings


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clocked(settings: Settings) -> Iterator[tuple[App, Clock]]:
    clock = Clock()
    app = App(settings, clock=clock)
    yield app, clock
    app.close()


def refused(app: App, session_id: str) -> str:
    with pytest.raises(DevflowError) as caught:
        app.session(session_id)
    assert caught.value.code is Code.UNAUTHENTICATED
    return caught.value.message


def test_a_session_is_new_at_each_sign_in_and_ends_with_its_token_or_its_time(
        clocked: tuple[App, Clock]) -> None:
    app, clock = clocked
    _, token = app.token_create("alice", "approver", "test")
    first_id, first = app.session_open(token, 3600)
    assert first.key == tokens.digest(first_id) != first_id  # only the hash is kept
    session, found = app.session(first_id)
    assert (session, found.actor, found.role) == (first, "alice", "approver")

    # signing in again with the id the browser had: a new id, new CSRF, the old one ended
    second_id, second = app.session_open(token, 3600, replacing=first_id)
    assert second_id != first_id and second.csrf != first.csrf
    assert refused(app, first_id) == "not signed in"
    assert app.session(second_id)[0] == second

    # expiry: refused once the time is up (and nothing is changed by looking)
    clock.now += timedelta(seconds=3600)
    assert refused(app, second_id) == "the session expired"
    assert app.store.sessions.find(second.key) is not None
    # the next sign-in clears expired sessions away
    third_id, _ = app.session_open(token, 3600)
    assert app.store.sessions.find(second.key) is None

    # sign out
    assert app.session_close(third_id) is True
    assert app.session_close(third_id) is False
    assert refused(app, third_id) == "not signed in"
    assert refused(app, "") == "not signed in"


def test_revoking_or_the_expiry_of_a_token_ends_its_sessions(
        clocked: tuple[App, Clock]) -> None:
    app, clock = clocked
    _, alice = app.token_create("alice", "approver", "test")
    _, bob = app.token_create("bob", "viewer", "test", expires_in=600)
    ids = [app.session_open(alice, 3600)[0] for _ in range(2)]
    bob_id, bob_session = app.session_open(bob, 3600)
    assert bob_session.expires_at == bob.expires_at  # never beyond the token

    app.token_revoke(alice.prefix)
    for session_id in ids:
        assert refused(app, session_id) == "not signed in"  # ended with the token
    assert app.session(bob_id)[1].actor == "bob"

    clock.now += timedelta(seconds=300)
    assert app.session(bob_id)[1].actor == "bob"
    clock.now += timedelta(seconds=300)
    assert "session expired" in refused(app, bob_id)
