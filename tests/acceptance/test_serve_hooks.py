"""Webhook triggers through `devflow serve` (a real process on loopback), on SQLite and
PostgreSQL: the signature checked before anything is stored, a delivery started once,
one active run per subject, and a server killed between the delivery and its run."""

from __future__ import annotations

import json
import subprocess
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from devflow import hooks
from devflow.app import App
from devflow.model import utcnow
from devflow.settings import Settings
from tests.acceptance.serve_support import Client, Served

pytestmark = pytest.mark.slow

SECRET = "s3cret-" + "x" * 24

LABELLED = """\
name: labelled
template: quick@1
repo: {repo}
base: main
requirements: "Work on {{repository}}#{{number}}: {{title}} (label {{label}}, {{event}})."
bindings:
  implementer: scripted-implementer
  reviewer: scripted-reviewer
webhook:
  source: github
  secret_env: DEVFLOW_TEST_HOOK_SECRET
  events: [issues.labeled]
  filter: {{label.name: agent}}
  ignore_senders: [devflow-bot]
"""

BUILDS = """\
name: builds
template: quick@1
repo: {repo}
base: main
requirements: "Fix {{subject}}: {{title}}"
bindings:
  implementer: scripted-implementer
  reviewer: scripted-reviewer
webhook:
  source: generic
  secret_env: DEVFLOW_TEST_HOOK_SECRET
"""

MERGES = """\
name: merges
template: quick@1
repo: {repo}
base: main
requirements: "Review {{subject}} ({{event}} by {{sender}}): {{title}}"
bindings:
  implementer: scripted-implementer
  reviewer: scripted-reviewer
webhook:
  source: gitlab
  secret_env: DEVFLOW_TEST_HOOK_SECRET
  events: [merge_request.open]
"""


@pytest.fixture
def server(settings: Settings, home: Path, repo: Path) -> Iterator[Served]:
    """The server with no worker: the runs deliveries start stay active."""
    (home / "triggers").mkdir()
    (home / "triggers" / "labelled.yaml").write_text(LABELLED.format(repo=repo),
                                                     encoding="utf-8")
    (home / "triggers" / "builds.yaml").write_text(BUILDS.format(repo=repo), encoding="utf-8")
    (home / "triggers" / "merges.yaml").write_text(MERGES.format(repo=repo), encoding="utf-8")
    served = Served(settings, home, ("--workers", "0"),
                    env={"DEVFLOW_TEST_HOOK_SECRET": SECRET}).start()
    yield served
    assert served.stop() == 0, served.log()


def payload(label: str = "agent", action: str = "labeled", number: int = 7,
            sender: str = "alice") -> dict[str, Any]:
    return {"action": action, "label": {"name": label},
            "issue": {"number": number, "title": "Greet in French", "body": "Add bonjour().",
                      "html_url": f"https://github.com/acme/app/issues/{number}"},
            "repository": {"full_name": "acme/app"}, "sender": {"login": sender}}


def deliver(client: Client, body: dict[str, Any], delivery: str | None = None, *,
            secret: str = SECRET, event: str = "issues",
            signature: str | None = None) -> tuple[int, Any]:
    raw = json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "X-GitHub-Event": event,
               "X-GitHub-Delivery": delivery or str(uuid.uuid4())}
    if signature is None:
        headers["X-Hub-Signature-256"] = hooks.signature(secret, raw)
    elif signature:
        headers["X-Hub-Signature-256"] = signature
    return client.call("POST", "/hooks/labelled", headers=headers, raw=raw)


def test_a_bad_or_missing_signature_is_401_and_stores_nothing(app: App,
                                                              server: Served) -> None:
    client = server.client()
    body = payload()
    for status, answer in (deliver(client, body, secret="not-the-secret"),
                           deliver(client, body, signature=""),
                           deliver(client, body, signature="sha256=" + "0" * 64)):
        assert (status, answer["error"]["code"]) == (401, "unauthenticated"), answer
    assert app.runs() == []
    shown = app.trigger("labelled").to_json(detail=True)
    assert shown["deliveries"] == [] and shown["events"] == []
    # an unknown trigger is not found, and stores nothing either
    raw = json.dumps(body).encode()
    status, answer = client.call("POST", "/hooks/nope", raw=raw, headers={
        "X-Hub-Signature-256": hooks.signature(SECRET, raw)})
    assert (status, answer["error"]["code"]) == (404, "trigger_not_found")


def test_the_same_delivery_twice_starts_one_run_with_the_event_in_its_requirements(
        app: App, server: Served) -> None:
    client = server.client()
    status, first = deliver(client, payload(), "d-1")
    assert (status, first["outcome"]) == (202, "started"), first
    run_id = first["run_id"]
    status, again = deliver(client, payload(), "d-1")
    assert (status, again["outcome"], again["run_id"], again["repeat"]) == \
        (200, "duplicate", run_id, True)
    assert [r.id for r in app.runs()] == [run_id]
    run = app.view(run_id).to_json()["run"]
    assert run["created_by"] == "trigger:labelled"
    assert app.store.runs.get(run_id).requirements.strip() == \
        "Work on acme/app#7: Greet in French (label agent, issues.labeled)."
    shown = app.trigger("labelled").to_json(detail=True)
    assert shown["runs"] == [run_id] and shown["deliveries_by_state"] == {"started": 1}
    assert "delivery.repeated" in [e["type"] for e in shown["events"]]


def test_six_labels_at_once_start_one_run_and_the_filter_refuses_the_rest(
        app: App, server: Served) -> None:
    client = server.client()
    # six deliveries of one issue at once (each "agent": the race on the subject)
    results: list[tuple[int, Any]] = []
    barrier = threading.Barrier(6)

    def post(n: int) -> None:
        barrier.wait()
        results.append(deliver(client, payload(), f"six-{n}"))
    threads = [threading.Thread(target=post, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    outcomes = Counter((status, answer["outcome"]) for status, answer in results)
    assert outcomes[(202, "started")] == 1 and sum(outcomes.values()) == 6, results
    [run] = app.runs()
    assert {a["run_id"] for _, a in results if a["outcome"] == "started"} == {run.id}
    # another label, the bot's own label, another event: refused, and why
    refused = [deliver(client, payload(label="bug"))[1],
               deliver(client, payload(sender="devflow-bot"))[1],
               deliver(client, payload(action="opened"))[1]]
    assert [r["state"] for r in refused] == ["refused"] * 3
    assert "label.name" in refused[0]["reason"]
    assert "ignore_senders" in refused[1]["reason"]
    assert "issues.opened" in refused[2]["reason"]
    assert len(app.runs()) == 1
    counts = app.trigger("labelled").to_json()["deliveries_by_state"]
    assert counts["started"] == 1 and counts["refused"] == 3
    assert counts["started"] + counts.get("duplicate", 0) == 6


def test_removing_and_readding_the_label_joins_the_active_run_until_it_ends(
        app: App, server: Served, cli: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    """The policy (docs/triggers.md): one active run per (trigger, subject)."""
    client = server.client()
    status, first = deliver(client, payload())
    assert status == 202, first
    status, removed = deliver(client, payload(action="unlabeled"))
    assert (status, removed["outcome"]) == (200, "refused")
    status, readded = deliver(client, payload())
    assert (status, readded["outcome"], readded["run_id"]) == \
        (200, "duplicate", first["run_id"])
    assert "active run" in readded["reason"]
    app.abort(first["run_id"], "tester", "done with it")
    status, after = deliver(client, payload())
    assert (status, after["outcome"]) == (202, "started")
    assert after["run_id"] != first["run_id"]
    shown = app.trigger("labelled").to_json(detail=True)
    assert [d["state"] for d in shown["deliveries"]] == \
        ["started", "duplicate", "refused", "started"]
    assert shown["runs"] == [after["run_id"], first["run_id"]]
    text = cli("triggers", "show", "labelled", check=0).stdout
    assert "deliveries, newest first" in text and "issues.unlabeled" in text
    assert "POST /api/v1/hooks/labelled" in text and first["run_id"] in text


def test_a_refused_start_releases_the_delivery_and_its_redelivery_starts_it(
        app: App, server: Served) -> None:
    client = server.client()
    status, first = deliver(client, payload(number=7))
    assert status == 202, first
    # another issue while issue 7's run holds the branch: the start's own error
    status, refused = deliver(client, payload(number=8), "d-issue-8")
    assert (status, refused["error"]["code"]) == (409, "active_run_exists"), refused
    shown = app.trigger("labelled").to_json(detail=True)
    failed = next(d for d in shown["deliveries"] if d["delivery"] == "d-issue-8")
    assert failed["state"] == "failed" and "active_run_exists" in failed["reason"]
    assert "delivery.failed" in [e["type"] for e in shown["events"]]
    app.abort(first["run_id"], "tester")
    status, again = deliver(client, payload(number=8), "d-issue-8")
    assert (status, again["outcome"], again["repeat"]) == (202, "started", True), again
    assert len(app.runs()) == 2


def test_a_generic_sender_signs_with_its_own_headers(app: App, server: Served) -> None:
    client = server.client()
    raw = json.dumps({"subject": "nightly-build-41", "title": "the build broke"}).encode()

    def send(delivery: str, signed: bytes = raw) -> tuple[int, Any]:
        return client.call("POST", "/hooks/builds", raw=raw, headers={
            "X-Devflow-Signature": hooks.signature(SECRET, signed),
            "X-Devflow-Delivery": delivery, "X-Devflow-Event": "build.failed"})
    assert send("b-1", signed=b"something else")[0] == 401
    status, first = send("b-1")
    assert (status, first["outcome"], first["subject"]) == (202, "started", "nightly-build-41")
    status, second = send("b-2")  # the same subject, another delivery
    assert (status, second["outcome"], second["run_id"]) == (200, "duplicate", first["run_id"])
    assert app.store.runs.get(first["run_id"]).requirements.strip() == \
        "Fix nightly-build-41: the build broke"


def test_a_gitlab_delivery_carries_the_secret_token_and_an_idempotency_key(
        app: App, server: Served) -> None:
    client = server.client()
    body = {"object_kind": "merge_request", "user": {"username": "carol"},
            "project": {"path_with_namespace": "acme/app"},
            "object_attributes": {"iid": 5, "action": "open", "title": "Add bonjour()",
                                  "description": "d", "url": "https://gitlab/acme/app/-/5"}}
    raw = json.dumps(body).encode()

    def send(key: str, token: str = SECRET, action: str = "open") -> tuple[int, Any]:
        sent = raw if action == "open" else raw.replace(b'"open"', f'"{action}"'.encode())
        return client.call("POST", "/hooks/merges", raw=sent, headers={
            "X-Gitlab-Token": token, "Idempotency-Key": key,
            "X-Gitlab-Event": "Merge Request Hook"})
    assert send("k-1", token="not-it")[0] == 401
    assert app.runs() == []
    status, first = send("k-1")
    assert (status, first["outcome"], first["subject"]) == (202, "started", "acme/app!5"), first
    status, retried = send("k-1")  # GitLab's retry keeps its Idempotency-Key
    assert (status, retried["outcome"], retried["repeat"]) == (200, "duplicate", True)
    status, closed = send("k-2", action="close")
    assert (status, closed["outcome"]) == (200, "refused"), closed
    assert [r.id for r in app.runs()] == [first["run_id"]]
    assert app.store.runs.get(first["run_id"]).requirements.strip() == \
        "Review acme/app!5 (merge_request.open by carol): Add bonjour()"


@pytest.mark.parametrize("crash_at", ["delivery_recorded", "run_inserted"])
def test_a_server_killed_between_the_delivery_and_its_run_neither_loses_nor_doubles_it(
        settings: Settings, home: Path, repo: Path, tmp_path: Path, crash_at: str) -> None:
    (home / "triggers").mkdir()
    (home / "triggers" / "labelled.yaml").write_text(LABELLED.format(repo=repo),
                                                     encoding="utf-8")
    env = {"DEVFLOW_TEST_HOOK_SECRET": SECRET}
    marker = tmp_path / "crashed"
    doomed = Served(settings, home, ("--workers", "0"),
                    env={**env, "DEVFLOW_CRASH_AT": crash_at,
                         "DEVFLOW_CRASH_MARKER": str(marker)}).start()
    with pytest.raises(ConnectionError):
        deliver(doomed.client(), payload(), "d-killed")
    assert doomed.wait() == -9 and marker.read_text().startswith(crash_at)

    # a moment later, past the dead starter's claim, a worker (or the sweep) looks
    later = utcnow() + timedelta(minutes=5)
    app = App(settings.replace(home=home), clock=lambda: later)
    try:
        started = app.start_stale_deliveries()
        runs = app.runs()
        assert len(runs) == 1
        if crash_at == "delivery_recorded":  # pending: started now, once
            assert [(s.outcome, s.run_id) for s in started] == [("started", runs[0].id)]
        else:  # the run was inserted with its delivery: nothing to start again
            assert started == []
        assert app.start_stale_deliveries() == []
    finally:
        app.close()

    # the sender delivers it again to the restarted server: the same run
    served = Served(settings, home, ("--workers", "0"), env=env).start()
    try:
        status, again = deliver(served.client(), payload(), "d-killed")
        assert (status, again["outcome"], again["run_id"]) == (200, "duplicate", runs[0].id)
    finally:
        assert served.stop() == 0, served.log()
    check = App(settings.replace(home=home))
    try:
        assert [r.id for r in check.runs()] == [runs[0].id]
        assert check.trigger("labelled").to_json()["deliveries_by_state"] == {"started": 1}
    finally:
        check.close()
