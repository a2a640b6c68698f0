"""The web page's pure parts: how artifacts are shown, gate sections found, owners lost,
and whether a request can be decided."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from starlette.requests import Request

from devflow import model
from devflow.api.ui import guard, render
from devflow.errors import Code, DevflowError
from devflow.states import ApprovalState, RunState

SAMPLES = Path(__file__).parents[2] / "devflow" / "backends" / "samples"
NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def test_a_plan_is_a_table_of_its_phases() -> None:
    plan = json.loads((SAMPLES / "phase-plan.json").read_text())
    view = render.artifact_view(plan)
    assert view is not None and view.kind == "plan"
    assert view.columns[:3] == ["key", "title", "role"]
    assert "artifact" not in view.columns  # not a scalar: in the JSON below the table
    assert [row[0] for row in view.rows] == [p["key"] for p in plan["phases"]]
    assert view.summary == plan["summary"]


def test_findings_are_grouped_by_severity_worst_first() -> None:
    findings = [{"key": "a", "severity": "minor"}, {"key": "b", "severity": "blocker"},
                {"key": "c", "severity": "minor"}, {"key": "d", "severity": "odd"},
                {"key": "e"}]
    view = render.artifact_view({"verdict": "approve", "findings": findings})
    assert view is not None and view.kind == "findings"
    assert [(name, [f["key"] for f in items]) for name, items in view.groups] == [
        ("blocker", ["b"]), ("minor", ["a", "c"]), ("odd", ["d"]), ("unrated", ["e"])]
    review = json.loads((SAMPLES / "review.json").read_text())
    assert [name for name, _ in render.artifact_view(review).groups] == ["minor", "info"]


def test_anything_else_is_shown_as_json_and_nothing_as_nothing() -> None:
    spec = json.loads((SAMPLES / "spec.json").read_text())
    assert render.artifact_view(spec).kind == "json"
    assert render.artifact_view([1, 2]).kind == "json"
    assert render.artifact_view(None) is None


def test_section_keys_follow_the_gate_s_pointer() -> None:
    review = json.loads((SAMPLES / "review.json").read_text())
    assert render.section_keys(review, "/findings") == ["truncate-off-by-one",
                                                       "cli-help-text"]
    assert render.section_keys(review, "/nothing") == []
    assert render.section_keys(review, None) == []
    assert render.section_keys({"a/b": [{"key": "k"}]}, "/a~1b") == ["k"]


def test_owner_lost_is_a_runnable_run_whose_lease_ran_out() -> None:
    run = model.Run(id="r", template_name="t", template_version="1", template_hash="h",
                    template_def={}, state=RunState.EXECUTING, lease_owner="w1",
                    lease_expires_at=NOW - timedelta(seconds=1))
    assert render.owner_lost(run, NOW)
    assert not render.owner_lost(replace(run, lease_expires_at=NOW + timedelta(seconds=30)),
                                 NOW)
    assert not render.owner_lost(replace(run, lease_owner=None, lease_expires_at=None), NOW)
    assert not render.owner_lost(replace(run, state=RunState.AWAITING_APPROVAL), NOW)


def test_a_request_is_decidable_while_pending_before_its_deadline_by_an_approver() -> None:
    approval = model.Approval(
        id=1, run_id="r", phase_key="spec", gate="spec_review", round=2,
        state=ApprovalState.PENDING, message="", options=("approve",), approvers=(),
        sections=None, evidence=model.Evidence(None, None, None, None),
        opened_at=NOW - timedelta(hours=1), deadline=NOW + timedelta(hours=1))
    assert render.not_decidable(approval, NOW, None) is None
    assert "viewer" in str(render.not_decidable(approval, NOW, "viewer"))
    late = NOW + timedelta(hours=2)
    assert render.expired(approval, late)
    assert str(render.not_decidable(approval, late, None)).startswith("expired")
    decided = replace(approval, state=ApprovalState.APPROVED, resolution="approved",
                      resolved_by="alice")
    assert render.not_decidable(decided, NOW, None) == "already decided: approved by alice"
    assert not render.expired(decided, late)
    assert render.not_decidable(replace(approval, deadline=None), late, None) is None


def _post(headers: dict[str, str], body: bytes) -> tuple[Any, list[int]]:
    """A POST to /ui/login as Starlette hands it over; ``read`` counts the body's reads."""
    read: list[int] = []
    chunks = [body[i:i + 65536] for i in range(0, len(body), 65536)] or [b""]

    async def receive() -> dict[str, Any]:
        chunk = chunks.pop(0) if chunks else b""
        read.append(len(chunk))
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}
    scope = {"type": "http", "method": "POST", "path": "/ui/login", "scheme": "http",
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
             "query_string": b"", "server": ("127.0.0.1", 8765)}
    return Request(scope, receive), read


def test_a_form_larger_than_the_limit_is_refused_without_being_held() -> None:
    same = {"host": "127.0.0.1:8765", "origin": "http://127.0.0.1:8765",
            "content-type": guard.FORM}
    small, _ = _post(same, b"token=t&csrf=c")
    assert anyio.run(guard.form, small) == {"token": "t", "csrf": "c"}
    big = b"token=" + b"x" * (4 * guard.MAX_FORM)
    declared, read = _post({**same, "content-length": str(len(big))}, big)
    with pytest.raises(DevflowError) as refused:
        anyio.run(guard.form, declared)
    assert refused.value.code is Code.BAD_REQUEST and read == []  # not a byte read
    undeclared, read = _post(same, big)  # chunked: read only up to the limit
    with pytest.raises(DevflowError):
        anyio.run(guard.form, undeclared)
    assert sum(read) <= guard.MAX_FORM + 65536 < len(big)
