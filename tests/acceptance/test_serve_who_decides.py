"""Over HTTP, who decides is the token's actor, checked as the CLI checks an OS account:
a gate's approvers (groups included) decide it, the operators group may pause, resume
and abort, anyone else is refused (403 not_authorized) and nothing is recorded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from devflow.app import App
from devflow.settings import Settings
from tests.acceptance.serve_support import Served, wait_for
from tests.acceptance.test_who_decides_cli import TEMPLATES

pytestmark = pytest.mark.slow


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    directory = tmp_path / "templates"
    directory.mkdir()
    for name, body in TEMPLATES.items():
        (directory / name).write_text(body, encoding="utf-8")
    return directory


@pytest.fixture
def server(settings: Settings, home: Path, templates: Path) -> Iterator[Served]:
    (home / "config.yaml").write_text(yaml.safe_dump(
        {"groups": {"leads": ["alice"], "operators": ["olga"]}}), encoding="utf-8")
    served = Served(settings, home, ("--workers", "1", "--poll", "0.2"),
                    env={"DEVFLOW_TEMPLATES_DIR": str(templates)}).start()
    yield served
    assert served.stop() == 0, served.log()


def test_a_restricted_gate_is_decided_by_its_approvers_tokens_only(
        app: App, server: Served, repo: Path) -> None:
    clients = {name: server.client(app.token_create(name, role, "test")[0])
               for name, role in (("alice", "approver"), ("mallory", "admin"),
                                  ("olga", "operator"))}
    status, body = clients["olga"].call("POST", "/runs", {
        "repo": str(repo), "base": "main", "template": "restricted@1",
        "requirements": "Do the steps.", "binds": {"implementer": "scripted-implementer"}})
    assert status == 201, body
    run_id = body["run"]["id"]
    stream = clients["alice"].stream(f"/runs/{run_id}/events/stream")
    gate = wait_for(stream, "approval.requested").data["payload"]
    stream.close()
    decide = f"/approvals/{gate['approval_id']}/decisions"

    # an admin token is not an approver of the gate; an operator may not decide either
    for name in ("mallory", "olga"):
        status, answer = clients[name].call("POST", decide, {"action": "approve",
                                                             "token": name})
        assert (status, answer["error"]["code"]) == (403, "not_authorized"), answer
        assert "API token" in answer["error"]["message"] and name in answer["error"]["message"]
        assert "leads (alice)" in answer["error"]["hint"]
    assert clients["alice"].call("GET", f"/approvals/{gate['approval_id']}")[1][
        "decisions"] == []
    # mallory's admin role reaches pause, but the run waits at the leads' gate
    status, answer = clients["mallory"].call("POST", f"/runs/{run_id}/pause")
    assert (status, answer["error"]["code"]) == (403, "not_authorized")
    # the operators group may steer it
    status, paused = clients["olga"].call("POST", f"/runs/{run_id}/pause")
    assert (status, paused["changed"]) == (200, True)
    assert clients["olga"].call("POST", f"/runs/{run_id}/resume")[0] == 200

    status, body = clients["alice"].call("POST", decide, {"action": "approve", "token": "a"})
    assert status == 201, body
    assert body["decision"]["actor"] == "alice"
    assert body["decision"]["authentication"]["attribution"] == "self"
    assert body["decision"]["authentication"]["method"] == "token"
