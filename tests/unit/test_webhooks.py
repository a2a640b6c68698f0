"""Webhook configuration, Standard Webhooks signatures and the retry delays."""

from __future__ import annotations

import base64
import hashlib
import hmac
import random

import pytest

from devflow import webhooks
from devflow.errors import DevflowError

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()


def test_a_signature_is_the_hmac_of_id_timestamp_and_body_per_secret() -> None:
    body = b'{"type":"run.completed"}'
    header = webhooks.sign([SECRET], "msg_1", 1700000000, body)
    expected = base64.b64encode(hmac.new(bytes(range(32)), b"msg_1.1700000000." + body,
                                         hashlib.sha256).digest()).decode()
    assert header == f"v1,{expected}"
    other = "whsec_" + base64.b64encode(b"x" * 32).decode()
    both = webhooks.sign([SECRET, other], "msg_1", 1700000000, body)
    assert webhooks.verify(SECRET, "msg_1", 1700000000, body, both)
    assert webhooks.verify(other, "msg_1", 1700000000, body, both)
    assert not webhooks.verify(SECRET, "msg_1", 1700000000, body + b" ", both)


@pytest.mark.parametrize("config", [
    {"url": "ftp://example.org/x", "secret": SECRET},
    {"url": "https://example.org/x"},
    {"url": "https://example.org/x", "secret": "whsec_short"},
    {"url": "https://example.org/x", "secret": SECRET, "events": ["run.created"]},
    {"url": "https://example.org/x", "secret": SECRET, "retries": 3},
    {"url": "https://example.org/x", "secrets": [SECRET, SECRET, SECRET]},
    {"url": "https://example.org/x", "secret": SECRET, "timeout": "0.5s"},
    {"url": "https://example.org/x", "secret": SECRET, "timeout": "1h"},
    {"url": "https://example.org/x", "secret": SECRET, "timeout": "soon"},
    {"url": "https://example.org/x", "secret": SECRET, "timeout": True},
])
def test_a_bad_webhook_is_refused_as_configuration_without_its_url_s_secrets(
        config: dict[str, object]) -> None:
    with pytest.raises(DevflowError) as refused:
        webhooks.endpoints([{**config, "url": str(config["url"]) + "?token=abc"}])
    assert refused.value.code == "config_invalid"
    assert "abc" not in refused.value.message


def test_a_try_waits_the_endpoints_timeout_and_a_send_is_held_three_times_that() -> None:
    default, slow = webhooks.endpoints([
        {"url": "https://example.org/a", "secret": SECRET},
        {"url": "https://example.org/b", "secret": SECRET, "timeout": "1m"}])
    assert (default.timeout, default.claim) == (10.0, 30.0)
    assert (slow.timeout, slow.claim) == (60.0, 180.0)


def test_retries_back_off_exponentially_with_jitter_up_to_a_ceiling() -> None:
    rand = random.Random(7)
    for attempts in range(1, 20):
        ceiling = min(webhooks.MAX_DELAY, webhooks.FIRST_DELAY * 2 ** (attempts - 1))
        delay = webhooks.backoff(attempts, rand)
        assert ceiling / 2 <= delay <= ceiling
    assert webhooks.redact_url("https://u:p@hooks.example.org:8443/a/b?k=v") == \
        "https://hooks.example.org:8443/…"


def test_a_message_carries_the_run_gate_round_and_a_deep_link() -> None:
    event = {"run_id": "r1", "seq": 7, "type": "approval.expiring", "phase": "spec",
             "ts": "2026-12-07T08:00:00+00:00",
             "payload": {"approval_id": 3, "gate": "spec_review", "round": 2,
                         "deadline": "2026-12-07T09:00:00+00:00"}}
    sent = webhooks.message(event, "https://devflow.example.org/")
    assert sent["type"] == "approval.expiring"
    assert sent["data"] == {"run_id": "r1", "seq": 7, "phase": "spec", "gate": "spec_review",
                            "round": 2, "approval_id": 3,
                            "deadline": "2026-12-07T09:00:00+00:00",
                            "link": "https://devflow.example.org/ui/approvals/3",
                            "api": "https://devflow.example.org/api/v1/runs/r1"}
    ended = webhooks.message({**event, "type": "run.failed", "payload": {
        "code": "approval_rejected", "reason": "no"}}, "http://x")
    assert (ended["data"]["state"], ended["data"]["code"]) == ("failed", "approval_rejected")
    assert ended["data"]["link"] == "http://x/ui/runs/r1"  # an ended run: its page
