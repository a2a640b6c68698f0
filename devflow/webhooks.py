"""Webhook notifications: which events, the message, its Standard Webhooks signature, retries.

A message is signed as Standard Webhooks says: ``webhook-id`` (the same on every try),
``webhook-timestamp`` (Unix seconds) and ``webhook-signature``, ``v1,`` and the base64
HMAC-SHA256 of ``{id}.{timestamp}.{body}`` under the endpoint's secret (``whsec_`` and
base64 key bytes), one per secret, space-separated: during a rotation an endpoint has
two secrets, and a receiver holding either verifies the message. A failed try is
retried after an exponential backoff with full jitter, up to ``MAX_ATTEMPTS``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from devflow import events
from devflow.durations import parse_duration
from devflow.errors import Code, DevflowError

#: the events a webhook may subscribe to (all of them by default)
EVENTS: Final = tuple(e.name for e in (
    events.APPROVAL_REQUESTED, events.APPROVAL_EXPIRING, events.APPROVAL_ESCALATED,
    events.RUN_COMPLETED, events.RUN_FAILED, events.RUN_ABORTED))
MAX_ATTEMPTS: Final = 8
FIRST_DELAY: Final = 2.0
MAX_DELAY: Final = 3600.0
#: how long a try waits for the endpoint's answer, unless the endpoint says (``timeout``)
TIMEOUT: Final = 10.0
TIMEOUT_RANGE: Final = (1.0, 300.0)


@dataclass(frozen=True)
class Endpoint:
    url: str
    secrets: tuple[str, ...]
    events: tuple[str, ...] = EVENTS
    timeout: float = TIMEOUT

    @property
    def claim(self) -> float:
        """How long a server holds the message it took to send: a try ends within
        ``timeout``; another server leaves the message alone meanwhile, and one that
        died while sending has it sent again once this has passed."""
        return 3 * self.timeout

    @property
    def key(self) -> str:
        """The endpoint's name in the database: the URL's hash (its secrets may rotate)."""
        return hashlib.sha256(self.url.encode()).hexdigest()

    @property
    def shown(self) -> str:
        return redact_url(self.url)


def redact_url(url: str) -> str:
    """The URL without what may be a secret: credentials, path, query (host and port kept)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/…"


def endpoints(config: Any) -> tuple[Endpoint, ...]:
    """``webhooks:`` of config.yaml, checked: a list of {url, secret | secrets, events,
    timeout}."""
    if config is None:
        return ()
    if not isinstance(config, list):
        raise _bad("webhooks must be a list of {url, secret, events}")
    found = []
    for item in config:
        if not isinstance(item, Mapping) or not isinstance(item.get("url"), str):
            raise _bad("each webhook needs a url")
        url = item["url"]
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
            raise _bad(f"webhook url {redact_url(url)} is not an http(s) URL")
        secrets = item.get("secrets", [item["secret"]] if "secret" in item else [])
        if isinstance(secrets, str):
            secrets = [secrets]
        if not secrets or not all(isinstance(s, str) for s in secrets) or len(secrets) > 2:
            raise _bad(f"webhook {redact_url(url)} needs a secret (two during a rotation)")
        for secret in secrets:
            key_bytes(secret)
        events = item.get("events", list(EVENTS))
        unknown = [e for e in events if e not in EVENTS]
        if unknown:
            raise _bad(f"webhook {redact_url(url)}: unknown events {', '.join(map(str, unknown))}")
        extra = set(item) - {"url", "secret", "secrets", "events", "timeout"}
        if extra:
            raise _bad(f"webhook {redact_url(url)}: unknown keys {', '.join(sorted(extra))}")
        timeout = _timeout(item.get("timeout", TIMEOUT), url)
        found.append(Endpoint(url, tuple(secrets), tuple(events), timeout))
    return tuple(found)


def _timeout(value: Any, url: str) -> float:
    low, high = TIMEOUT_RANGE
    try:
        seconds = parse_duration(value, field="timeout")
    except DevflowError:
        seconds = -1.0
    if not low <= seconds <= high:
        raise _bad(f"webhook {redact_url(url)}: timeout must be a duration from "
                   f"{low:g}s to {high / 60:g}m, got {value!r}")
    return seconds


def _bad(message: str) -> DevflowError:
    return DevflowError(Code.CONFIG_INVALID, message,
                        hint="webhooks: [{url: https://..., secret: whsec_<base64>, "
                             "events: [approval.requested, run.completed], timeout: 10s}]")


def key_bytes(secret: str) -> bytes:
    body = secret.removeprefix("whsec_")
    try:
        key = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _bad("a webhook secret is whsec_ and base64") from exc
    if len(key) < 24:
        raise _bad("a webhook secret holds at least 24 bytes")
    return key


def sign(secrets: Sequence[str], message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header: one ``v1,<base64>`` per secret."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    return " ".join("v1," + base64.b64encode(hmac.new(key_bytes(s), signed,
                                                      hashlib.sha256).digest()).decode()
                    for s in secrets)


def verify(secret: str, message_id: str, timestamp: int, body: bytes, header: str) -> bool:
    """Whether one of the header's signatures is this secret's (what a receiver checks)."""
    wanted = sign([secret], message_id, timestamp, body)
    return any(hmac.compare_digest(wanted, part) for part in header.split())


def backoff(attempts: int, rand: random.Random | None = None) -> float:
    """Seconds before the next try after ``attempts`` failed ones: full jitter."""
    ceiling = min(MAX_DELAY, FIRST_DELAY * 2 ** max(attempts - 1, 0))
    return (rand or random.SystemRandom()).uniform(ceiling / 2, ceiling)


def message(event: Mapping[str, Any], base_url: str) -> dict[str, Any]:
    """What a webhook receives for an event: the run, gate, round and a deep link (the
    web page of the request, or of the run; ``api``: the run in the HTTP API)."""
    payload = event.get("payload") or {}
    run_id = event["run_id"]
    base = base_url.rstrip("/")
    approval_id = payload.get("approval_id")
    page = (f"approvals/{approval_id}" if approval_id is not None
            and str(event["type"]).startswith("approval.") else f"runs/{run_id}")
    data = {"run_id": run_id, "seq": event["seq"], "phase": event.get("phase"),
            "gate": payload.get("gate"), "round": payload.get("round"),
            "approval_id": approval_id, "deadline": payload.get("deadline"),
            "link": f"{base}/ui/{page}", "api": f"{base}/api/v1/runs/{run_id}"}
    if str(event["type"]).startswith("run."):
        data.update(state=str(event["type"]).removeprefix("run."),
                    reason=payload.get("reason"), code=payload.get("code"))
    return {"type": event["type"], "timestamp": event["ts"], "data": data}
