"""`devflow serve`'s own workers, and how it stops: SIGTERM mid-drive leaves the run
runnable (its attempt interrupted, its lease released), as `devflow worker` does."""

from __future__ import annotations

from pathlib import Path

import pytest

from devflow.app import App
from devflow.settings import Settings
from devflow.states import RUNNABLE
from tests.acceptance.serve_support import Served, wait_for
from tests.acceptance.test_serve_decisions import start_body

pytestmark = pytest.mark.slow


def test_sigterm_stops_the_server_and_its_workers_leaving_the_run_to_another_driver(
        app: App, settings: Settings, home: Path, repo: Path) -> None:
    server = Served(settings, home, ("--workers", "2", "--poll", "0.2", "--grace", "0")).start()
    try:
        operator = server.client(app.token_create("olga", "operator", "test")[0])
        body = {**start_body(repo), "scenarios": {"spec": "slow:120"}}
        status, started = operator.call("POST", "/runs", body)
        assert status == 201, started
        run_id = started["run"]["id"]
        stream = operator.stream(f"/runs/{run_id}/events/stream")
        wait_for(stream, "agent.started")
    finally:
        code = server.stop()
    assert code == 0, server.log()
    assert [f for f in stream.frames() if f.comment is None] == []  # the stream ended
    stream.close()
    run = app.view(run_id).run
    assert run.state in RUNNABLE and run.lease_owner is None, run.to_json()
    workers = [w for w in app.workers(include_stopped=True) if w.name.startswith("serve-")]
    assert sorted(w.name for w in workers) == ["serve-1", "serve-2"]
    assert all(w.stopped_at is not None for w in workers)
    events = [e.type for e in app.events(run_id)]
    assert "phase.interrupted" in events, events
