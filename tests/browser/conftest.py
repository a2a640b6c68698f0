"""The browser tests' world: ``devflow serve --workers 2`` (as the issue's acceptance
runs it) as a real process on loopback, the system's Chromium (one per run of this
module's tests in a process), a fresh browser context (no cookies) per test, tokens by
role, and runs of development@1 with scripted agents started through the API.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devflow.app import App
from devflow.settings import Settings
from tests.acceptance.serve_support import Client, Served, Stream, wait_for
from tests.browser import support
from tests.conftest import SCRIPTED


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """Chromium, for this module's tests: Playwright's sync API keeps an asyncio loop
    running in the thread while it is started, so it must be stopped before a test of
    another module runs here (``anyio.run`` refuses to start in such a thread)."""
    playwright = support.sync_playwright().start()
    try:
        browser = support.launch(playwright)
        try:
            yield browser
        finally:
            browser.close()
    finally:
        playwright.stop()


@pytest.fixture
def server(settings: Settings, home: Path) -> Iterator[Served]:
    served = Served(settings, home, ("--workers", "2", "--poll", "0.2")).start()
    yield served
    assert served.stop() == 0, served.log()


@pytest.fixture
def browser(chromium: Any, server: Served) -> Iterator[Any]:
    """A browser of its own (no cookies) pointed at the server: ``browser.new_page()``."""
    context = chromium.new_context(base_url=f"http://127.0.0.1:{server.port}",
                                   viewport=support.VIEWPORT)
    context.set_default_timeout(60_000)
    yield context
    context.close()


@pytest.fixture
def shots() -> support.Shots:
    return support.Shots.from_env()


@dataclass
class People:
    operator: Client
    approver: str
    viewer: str


@pytest.fixture
def people(app: App, server: Served) -> People:
    return People(operator=server.client(app.token_create("olga", "operator", "test")[0]),
                  approver=app.token_create("alice", "approver", "test")[0],
                  viewer=app.token_create("victor", "viewer", "test")[0])


@dataclass
class GatedRun:
    """A run of development@1 started through the API, and its event stream."""

    id: str
    stream: Stream

    def next_gate(self) -> dict[str, Any]:
        """The payload of the next ``approval.requested`` (gate, round, approval_id ...)."""
        payload = wait_for(self.stream, "approval.requested").data["payload"]
        assert isinstance(payload, dict)
        return payload


@pytest.fixture
def gated_run(people: People, repo: Path) -> Iterator[GatedRun]:
    status, body = people.operator.call("POST", "/runs", {
        "repo": str(repo), "base": "main", "template": "development@1",
        "requirements": "Add a farewell function.", "binds": SCRIPTED,
        "scenarios": {"plan": "plan:0"}})
    assert status == 201, body
    run_id = body["run"]["id"]
    stream = people.operator.stream(f"/runs/{run_id}/events/stream")
    yield GatedRun(run_id, stream)
    stream.close()
