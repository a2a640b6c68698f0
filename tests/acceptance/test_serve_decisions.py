"""Decisions through `devflow serve` (a real process on loopback), on SQLite and PostgreSQL.

A run of development@1 is started through the API and driven by the server's own
worker; its gates are decided over HTTP with the CLI's semantics.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devflow.app import App
from devflow.settings import Settings
from tests.acceptance.serve_support import Frame, Served, wait_for
from tests.conftest import SCRIPTED

pytestmark = pytest.mark.slow


@pytest.fixture
def server(settings: Settings, home: Path) -> Iterator[Served]:
    served = Served(settings, home, ("--workers", "1", "--poll", "0.2")).start()
    yield served
    assert served.stop() == 0, served.log()


def start_body(repo: Path) -> dict[str, Any]:
    return {"repo": str(repo), "base": "main", "template": "development@1",
            "requirements": "Add a farewell function.", "binds": SCRIPTED,
            "scenarios": {"plan": "plan:0"}}


def test_a_run_started_and_decided_over_http_continues_and_ends_in_its_report(
        app: App, server: Served, repo: Path) -> None:
    operator = server.client(app.token_create("olga", "operator", "test")[0])
    approver = server.client(app.token_create("alice", "approver", "test")[0])

    # a duplicate start (same Idempotency-Key) returns the run the first one started
    key = {"Idempotency-Key": str(uuid.uuid4())}
    status, first = operator.call("POST", "/runs", start_body(repo), headers=key)
    assert status == 201, first
    assert first["replayed"] is False
    run_id = first["run"]["id"]
    status, again = operator.call("POST", "/runs", start_body(repo), headers=key)
    assert (status, again["run"]["id"], again["replayed"]) == (200, run_id, True)
    assert [r["id"] for r in operator.call("GET", "/runs")[1]["runs"]] == [run_id]
    status, reused = operator.call("POST", "/runs", {**start_body(repo), "base": "other"},
                                   headers=key)
    assert (status, reused["error"]["code"]) == (409, "idempotency_key_reused")

    stream = approver.stream(f"/runs/{run_id}/events/stream")
    requested = wait_for(stream, "approval.requested")
    spec_gate = requested.data["payload"]
    assert spec_gate["gate"] == "spec_review"

    # 20 concurrent posts, half of them one double-clicked token: 1 decision
    tokens = ["same"] * 10 + [f"t-{i}" for i in range(10)]
    results: list[tuple[int, Any]] = []
    barrier = threading.Barrier(len(tokens))

    def post(token: str) -> None:
        barrier.wait()
        results.append(approver.call("POST", f"/approvals/{spec_gate['approval_id']}/decisions",
                                     {"action": "approve", "token": token,
                                      "round": spec_gate["round"],
                                      "evidence": spec_gate["artifact"]["sha256"]}))
    threads = [threading.Thread(target=post, args=(t,)) for t in tokens]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    statuses = Counter(status for status, _ in results)
    assert statuses[201] == 1, results
    (winner,) = [body for status, body in results if status == 201]
    assert winner["decision"]["actor"] == "alice"
    assert winner["decision"]["authentication"]["method"] == "token"
    for status, body in results:
        if status == 200:
            assert body["replayed"] is True
            assert body["decision"]["id"] == winner["decision"]["id"]
        elif status != 201:
            assert (status, body["error"]["code"]) == (409, "approval_conflict"), body
    shown = approver.call("GET", f"/approvals/{spec_gate['approval_id']}")[1]
    assert len(shown["decisions"]) == 1

    # the worker drives the run on, once, to its next gate
    seen: list[Frame] = []
    final = wait_for(stream, "approval.requested", seen)
    stream.close()
    between = Counter((f.data["type"], f.data["phase"]) for f in seen)
    assert between[("approval.resolved", "spec")] == 1
    started = {phase: n for (kind, phase), n in between.items() if kind == "phase.started"}
    assert started and set(started.values()) == {1}, between
    gate = final.data["payload"]
    assert gate["gate"] == "final_review"
    decide = f"/approvals/{gate['approval_id']}/decisions"

    # the CLI's semantics: bad input 422, stale 409, a replay 200, a conflict 409
    status, body = approver.call("POST", decide, {"action": "request_changes", "token": "rc"})
    assert (status, body["error"]["code"]) == (422, "invalid_input")
    status, body = approver.call("POST", decide, {"action": "approve", "token": "s1",
                                                  "evidence": "0" * 64})
    assert (status, body["error"]["code"]) == (409, "approval_stale")
    status, body = approver.call("POST", decide, {"action": "approve", "token": "s2",
                                                  "round": gate["round"] + 1})
    assert (status, body["error"]["code"]) == (409, "approval_stale")
    status, body = approver.call("POST", decide, {"action": "approve", "token": "a",
                                                  "actor": "mallory"})
    assert (status, body["error"]["code"]) == (400, "bad_request")
    assert "actor" in body["error"]["message"]
    assert approver.call("GET", f"/approvals/{gate['approval_id']}")[1]["decisions"] == []
    status, body = approver.call("POST", decide, {"action": "approve", "token": "ok",
                                                  "evidence": gate["artifact"]["sha256"]})
    assert status == 201, body
    status, again = approver.call("POST", decide, {"action": "approve", "token": "ok"})
    assert (status, again["replayed"]) == (200, True)
    status, body = approver.call("POST", decide, {"action": "reject", "token": "ok"})
    assert (status, body["error"]["code"]) == (409, "approval_conflict")

    # it ends, and says so on the stream; the report is there
    stream = approver.stream(f"/runs/{run_id}/events/stream",
                             last_event_id=final.id)
    ended = next(f for f in stream.frames() if f.event == "end")
    stream.close()
    assert ended.data["state"] == "completed"
    status, report = approver.call("GET", f"/runs/{run_id}/report")
    assert status == 200
    assert run_id in json.dumps(report) and "completed" in json.dumps(report)
    status, text = approver.call("GET", f"/runs/{run_id}/report?format=md")
    assert status == 200 and run_id in text
    status, listed = approver.call("GET", f"/runs/{run_id}/artifacts")
    sha = listed["artifacts"][0]["sha256"]
    assert approver.call("GET", f"/runs/{run_id}/artifacts/{sha}")[0] == 200


def test_pause_resume_abort_go_through_the_run_s_gate_rules(
        app: App, server: Served, repo: Path) -> None:
    operator = server.client(app.token_create("olga", "operator", "test")[0])
    status, body = operator.call("POST", "/runs", start_body(repo))
    assert status == 201, body
    run_id = body["run"]["id"]
    stream = operator.stream(f"/runs/{run_id}/events/stream")
    wait_for(stream, "approval.requested")
    stream.close()
    status, paused = operator.call("POST", f"/runs/{run_id}/pause", {"reason": "lunch"})
    assert (status, paused["run"]["state"], paused["changed"]) == (200, "paused", True)
    assert operator.call("POST", f"/runs/{run_id}/pause")[1]["changed"] is False
    status, resumed = operator.call("POST", f"/runs/{run_id}/resume")
    assert (status, resumed["run"]["state"]) == (200, "awaiting_approval")
    assert resumed["gate"]["gate"] == "spec_review"
    status, aborted = operator.call("POST", f"/runs/{run_id}/abort", {"reason": "enough"})
    assert (status, aborted["run"]["state"]) == (200, "aborted")
    status, report = operator.call("GET", f"/runs/{run_id}/report")
    assert status == 200, report
    status, body = operator.call("POST", f"/runs/{run_id}/resume")
    assert (status, body["error"]["code"]) == (409, "illegal_transition")
    events = operator.call("GET", f"/runs/{run_id}/events")[1]["events"]
    paused_event = next(e for e in events if e["type"] == "run.paused")
    assert paused_event["payload"]["by"] == "olga"
    assert paused_event["payload"]["authentication"]["method"] == "token"
