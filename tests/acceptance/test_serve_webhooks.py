"""Webhooks from `devflow serve` to a loopback receiver that checks every signature: each
event once, retries after failures, 410 disables, and a message committed but not sent
when the server was killed is sent after its restart."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from devflow import webhooks
from devflow.app import App
from devflow.settings import Settings
from tests.acceptance.serve_support import Served, wait_for
from tests.acceptance.test_serve_decisions import start_body

pytestmark = pytest.mark.slow

OLD_SECRET = "whsec_" + base64.b64encode(b"o" * 32).decode()
NEW_SECRET = "whsec_" + base64.b64encode(b"n" * 32).decode()


@dataclass
class Received:
    path: str
    id: str
    timestamp: int
    signature: str
    body: bytes
    status: int

    @property
    def message(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """Answers /ok with 204, /flaky with 500 twice then 200, /gone with 410."""

    server: ThreadingHTTPServer | None = None
    seen: list[Received] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                path = urlsplit(self.path).path
                with receiver.changed:
                    tries = sum(1 for r in receiver.seen if r.path == path)
                    status = {"/ok": 204, "/gone": 410}.get(path, 500 if tries < 2 else 200)
                    receiver.seen.append(Received(
                        path, self.headers["webhook-id"],
                        int(self.headers["webhook-timestamp"]),
                        self.headers["webhook-signature"], body, status))
                    receiver.changed.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def url(self, path: str) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}?key=s3cret"

    def wait(self, path: str, count: int, status: int | None = None) -> list[Received]:
        def found() -> list[Received]:
            return [r for r in self.seen if r.path == path
                    and (status is None or r.status == status)]
        with self.changed:
            assert self.changed.wait_for(lambda: len(found()) >= count, timeout=120), self.seen
            return found()

    def stop(self) -> None:
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver().start()
    yield running
    running.stop()


def configure(home: Path, receiver: Receiver, *paths: str, timeout: str = "10s") -> None:
    hooks = [{"url": receiver.url(path),
              "secrets": [OLD_SECRET, NEW_SECRET] if path == "/ok" else [NEW_SECRET],
              "timeout": timeout}
             for path in paths]
    (home / "config.yaml").write_text(yaml.safe_dump({"webhooks": hooks}), encoding="utf-8")


def test_each_event_is_sent_once_signed_retried_and_a_gone_endpoint_disabled(
        app: App, settings: Settings, home: Path, repo: Path, receiver: Receiver) -> None:
    configure(home, receiver, "/ok", "/flaky", "/gone")
    server = Served(settings, home, ("--workers", "1", "--poll", "0.2")).start()
    try:
        admin = server.client(app.token_create("root", "admin", "test")[0])
        status, body = admin.call("POST", "/runs", start_body(repo))
        assert status == 201, body
        run_id = body["run"]["id"]
        stream = admin.stream(f"/runs/{run_id}/events/stream")
        for _ in range(2):
            gate = wait_for(stream, "approval.requested").data["payload"]
            status, _ = admin.call("POST", f"/approvals/{gate['approval_id']}/decisions",
                                   {"action": "approve", "token": f"t-{gate['gate']}"})
            assert status == 201
        stream.close()

        ok = receiver.wait("/ok", 3)
        flaky = receiver.wait("/flaky", 3, status=200)
        gone = receiver.wait("/gone", 1)
        state = admin.call("GET", "/webhooks")[1]["webhooks"]
    finally:
        assert server.stop() == 0, server.log()

    # each event once, in order, signed with both secrets during the rotation
    assert [r.message["type"] for r in ok] == ["approval.requested", "approval.requested",
                                               "run.completed"]
    assert len({r.id for r in ok}) == 3
    for r in ok:
        assert len(r.signature.split()) == 2
        for secret in (OLD_SECRET, NEW_SECRET):
            assert webhooks.verify(secret, r.id, r.timestamp, r.body, r.signature)
        assert not webhooks.verify(NEW_SECRET, r.id, r.timestamp + 1, r.body, r.signature)
        data = r.message["data"]
        assert data["run_id"] == run_id and data["api"].endswith(f"/api/v1/runs/{run_id}")
        assert data["link"].endswith(f"/ui/approvals/{data['approval_id']}"
                                     if data["approval_id"] else f"/ui/runs/{run_id}")
    assert [r.message["data"]["gate"] for r in ok[:2]] == ["spec_review", "final_review"]
    assert ok[0].message["data"]["round"] == 1
    assert ok[2].message["data"]["state"] == "completed"
    # two failures, then success: the same message (webhook-id) each time
    tries = [r for r in receiver.seen if r.path == "/flaky"]
    assert [r.status for r in tries[:3]] == [500, 500, 200]
    assert len({r.id for r in tries[:3]}) == 1
    assert [r.message["type"] for r in flaky] == [r.message["type"] for r in ok]
    assert all(webhooks.verify(NEW_SECRET, r.id, r.timestamp, r.body, r.signature)
               for r in tries)
    # 410 disabled the endpoint after its first message; the failures show, URL redacted
    assert len([r for r in receiver.seen if r.path == "/gone"]) == 1 == len(gone)
    shown = json.dumps(state)
    assert "s3cret" not in shown and "/gone" not in shown and "/flaky" not in shown
    disabled = [w for w in state if "disabled" in w]
    assert len(disabled) == 1 and disabled[0]["disabled"]["status"] == 410
    flaky_state = next(w for w in state if w.get("last_failure", {}).get("status") == 500)
    # (read as the last one came in: it may not be recorded yet)
    assert flaky_state.get("delivered", 0) + flaky_state.get("pending", 0) == 3
    assert flaky_state["last_failure"]["error"] == "HTTP 500"


def test_a_message_committed_but_not_sent_when_the_server_died_is_sent_after_restart(
        app: App, settings: Settings, home: Path, repo: Path, receiver: Receiver) -> None:
    configure(home, receiver, "/ok", timeout="1s")  # a dead sender's claim lasts 3 s
    marker = home / "crashed"
    doomed = Served(settings, home, ("--workers", "1", "--poll", "0.2"),
                    env={"DEVFLOW_CRASH_AT": "webhook_sending",
                         "DEVFLOW_CRASH_MARKER": str(marker)}).start()
    operator = doomed.client(app.token_create("olga", "operator", "test")[0])
    status, body = operator.call("POST", "/runs", start_body(repo))
    assert status == 201, body
    assert doomed.wait() == -9  # killed itself at its first send, after the commit
    assert marker.read_text(encoding="utf-8").startswith("webhook_sending")
    assert receiver.seen == []

    again = Served(settings, home, ("--workers", "0", "--poll", "0.2")).start()
    try:
        (sent,) = receiver.wait("/ok", 1)
    finally:
        assert again.stop() == 0, again.log()
    assert sent.message["type"] == "approval.requested"
    assert sent.message["data"]["run_id"] == body["run"]["id"]
    assert webhooks.verify(OLD_SECRET, sent.id, sent.timestamp, sent.body, sent.signature)
