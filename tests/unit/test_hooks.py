"""devflow.hooks: the signature over the raw body, the delivery read from GitHub's and a
generic sender's headers, and the filter's refusals, in order."""

from __future__ import annotations

import json
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from devflow import hooks
from devflow.errors import Code, DevflowError
from devflow.triggerdefs import Trigger, Webhook

SECRET = "shh"


def _trigger(source: str = "github", **webhook: Any) -> Trigger:
    hook = Webhook(source=source, secret_env="S", **webhook)
    return Trigger(name="t", description="", template="quick@1", repo=str(Path("/r")),
                   base="main", requirements="x", bindings=MappingProxyType({}),
                   schedule=None, webhook=hook, definition={}, hash="h")


def _github(raw: bytes, delivery: str = "d1", event: str = "issues") -> dict[str, str]:
    return {"x-hub-signature-256": hooks.signature(SECRET, raw), "x-github-delivery": delivery,
            "x-github-event": event}


def test_the_signature_is_the_hmac_of_the_exact_body() -> None:
    trigger = _trigger()
    assert trigger.webhook is not None
    raw = b'{"action": "labeled"}'
    hooks.verify(trigger.webhook, SECRET, _github(raw), raw)
    for secret, body, headers in ((SECRET, raw + b" ", _github(raw)),
                                  ("other", raw, _github(raw)),
                                  (None, raw, _github(raw)),
                                  (SECRET, raw, {})):
        with pytest.raises(DevflowError) as caught:
            hooks.verify(trigger.webhook, secret, headers, body)
        assert caught.value.code is Code.UNAUTHENTICATED


def test_a_github_delivery_names_its_event_subject_sender_and_fields() -> None:
    body = {"action": "labeled", "label": {"name": "agent"}, "sender": {"login": "alice"},
            "repository": {"full_name": "acme/app"},
            "issue": {"number": 12, "title": "T", "body": "B", "html_url": "u"}}
    raw = json.dumps(body).encode()
    got = hooks.parse(_trigger(), _github(raw), raw)
    assert (got.event, got.subject, got.sender) == ("issues.labeled", "acme/app#12", "alice")
    assert got.fields["title"] == "T" and got.fields["label"] == "agent"
    assert got.fields["number"] == "12" and got.fields["url"] == "u"
    # no issue: the delivery is its own subject
    ping = hooks.parse(_trigger(), _github(b"{}", event="ping"), b"{}")
    assert (ping.event, ping.subject) == ("ping", "d1")
    for raw_body in (b"not json", b"[1]"):
        with pytest.raises(DevflowError) as caught:
            hooks.parse(_trigger(), _github(raw_body), raw_body)
        assert caught.value.code is Code.BAD_REQUEST
    with pytest.raises(DevflowError):
        hooks.parse(_trigger(), {"x-github-event": "issues"}, raw)


def test_a_generic_delivery_reads_its_own_headers_and_top_level_fields() -> None:
    raw = json.dumps({"subject": "job-7", "sender": "ci", "title": "Fix"}).encode()
    headers = {"x-devflow-signature": hooks.signature(SECRET, raw),
               "x-devflow-delivery": "g1", "x-devflow-event": "build.failed"}
    trigger = _trigger("generic")
    assert trigger.webhook is not None
    hooks.verify(trigger.webhook, SECRET, headers, raw)
    got = hooks.parse(trigger, headers, raw)
    assert (got.source, got.id, got.event, got.subject, got.sender) == \
        ("generic", "g1", "build.failed", "job-7", "ci")
    assert got.fields["title"] == "Fix"


def test_the_refusals_come_in_order_and_say_why() -> None:
    body = {"action": "labeled", "label": {"name": "agent"}, "sender": {"login": "alice"},
            "repository": {"full_name": "a/b"}, "issue": {"number": 1}}
    raw = json.dumps(body).encode()
    delivery = hooks.parse(_trigger(), _github(raw), raw)
    hook = Webhook("github", "S", events=("issues.labeled",),
                   filter=MappingProxyType({"label.name": "agent"}),
                   senders=("alice",), ignore_senders=("bot",))
    assert hooks.refusal(hook, delivery) is None
    assert "ignore_senders" in (hooks.refusal(
        Webhook("github", "S", ignore_senders=("alice",)), delivery) or "")
    assert "not one of the senders" in (hooks.refusal(
        Webhook("github", "S", senders=("bob",)), delivery) or "")
    assert hooks.refusal(Webhook("github", "S", events=("issues.opened",)), delivery) == \
        "event issues.labeled is not one of issues.opened"
    assert hooks.refusal(Webhook("github", "S", filter=MappingProxyType(
        {"label.name": "bug"})), delivery) == "filter label.name: agent is not bug"
    assert hooks.refusal(Webhook("github", "S", filter=MappingProxyType(
        {"issue.locked": "true"})), delivery) == "filter issue.locked: (missing) is not true"


def _gitlab(token: str = SECRET, key: str = "k1", uuid_only: bool = False) -> dict[str, str]:
    headers = {"x-gitlab-token": token, "x-gitlab-event": "Issue Hook"}
    headers["x-gitlab-event-uuid" if uuid_only else "idempotency-key"] = key
    return headers


def test_a_gitlab_delivery_is_checked_by_its_token_and_reads_its_payload() -> None:
    trigger = _trigger("gitlab")
    assert trigger.webhook is not None
    body = {"object_kind": "issue", "user": {"username": "carol"},
            "project": {"path_with_namespace": "acme/app"},
            "object_attributes": {"iid": 9, "action": "update", "title": "T",
                                  "description": "D", "url": "u"},
            "changes": {"labels": {"previous": [{"title": "bug"}],
                                   "current": [{"title": "bug"}, {"title": "agent"}]}}}
    raw = json.dumps(body).encode()
    hooks.verify(trigger.webhook, SECRET, _gitlab(), raw)
    for secret, headers in ((SECRET, _gitlab(token="other")), (SECRET, {}), (None, _gitlab())):
        with pytest.raises(DevflowError) as caught:
            hooks.verify(trigger.webhook, secret, headers, raw)
        assert caught.value.code is Code.UNAUTHENTICATED
    got = hooks.parse(trigger, _gitlab(), raw)
    assert (got.source, got.id, got.event, got.subject, got.sender) == (
        "gitlab", "k1", "issue.update", "acme/app#9", "carol")
    assert (got.fields["label"], got.fields["title"], got.fields["body"],
            got.fields["url"]) == ("agent", "T", "D", "u")
    # before GitLab 17.4 there is no Idempotency-Key: the event UUID names the delivery
    assert hooks.parse(trigger, _gitlab(key="e-uuid", uuid_only=True), raw).id == "e-uuid"
    # a comment on a merge request is about the merge request
    note = {"object_kind": "note", "user": {"username": "dan"},
            "project": {"path_with_namespace": "acme/app"},
            "object_attributes": {"note": "please redo", "url": "n"},
            "merge_request": {"iid": 4, "title": "MR"}}
    raw = json.dumps(note).encode()
    got = hooks.parse(trigger, _gitlab(), raw)
    assert (got.event, got.subject, got.fields["body"], got.fields["title"]) == (
        "note", "acme/app!4", "please redo", "MR")
