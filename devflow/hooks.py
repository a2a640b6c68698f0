"""Inbound webhooks of triggers: the signature, the delivery, the filter. No I/O.

A delivery is checked in this order, and nothing is stored until the first step
passed: the HMAC-SHA256 of the raw body with the trigger's secret (GitLab's: the secret
token itself), compared in constant time with the signature header (``verify``); then
the headers and the JSON
body are read (``parse``); then the trigger's filter says whether it starts anything
(``refusal``: None, or why not).

Sources and their headers (docs/triggers.md):

- ``github``: ``X-Hub-Signature-256: sha256=HEX``, ``X-GitHub-Delivery``,
  ``X-GitHub-Event``; the event is ``EVENT.ACTION`` when the payload has an ``action``
  (``issues.labeled``); the subject ``OWNER/REPO#NUMBER`` of the issue or pull request;
  the sender ``sender.login``.
- ``gitlab``: ``X-Gitlab-Token: SECRET`` (GitLab sends the secret token, it signs
  nothing), ``Idempotency-Key`` (the same on GitLab's retries; ``X-Gitlab-Event-UUID``
  when absent), ``X-Gitlab-Event``; the event is ``OBJECT_KIND.ACTION`` of the payload
  (``issue.update``), the subject ``GROUP/PROJECT#IID`` of an issue (``!IID`` of a
  merge request, also of a comment on one), the sender ``user.username``, the label
  the first one the change added.
- ``generic``: ``X-Devflow-Signature: sha256=HEX``, ``X-Devflow-Delivery``,
  ``X-Devflow-Event``; the subject, sender, title, body, number, label and url are the
  payload's top-level fields of those names.

A delivery without a subject is its own subject (its delivery id).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from devflow.errors import Code, DevflowError
from devflow.triggerdefs import Trigger, Webhook

# the states of a delivery (docs/triggers.md)
PENDING: Final = "pending"
STARTED: Final = "started"
DUPLICATE: Final = "duplicate"
REFUSED: Final = "refused"
FAILED: Final = "failed"

#: the largest body read (a GitHub payload is at most 25 MB; issues are far smaller)
MAX_BODY: Final = 5 * 1024 * 1024

_HEADERS: Final = {
    "github": ("x-hub-signature-256", "x-github-delivery", "x-github-event"),
    "gitlab": ("x-gitlab-token", "idempotency-key", "x-gitlab-event"),
    "generic": ("x-devflow-signature", "x-devflow-delivery", "x-devflow-event"),
}
#: GitLab before 17.4 sends no Idempotency-Key: its event UUID names the delivery then
_GITLAB_EVENT_ID: Final = "x-gitlab-event-uuid"


@dataclass(frozen=True, slots=True)
class Delivery:
    """One delivery as read: who sent what about which subject, and its fields for the
    trigger's requirements."""

    source: str
    id: str
    event: str
    subject: str
    sender: str | None
    fields: dict[str, str]
    payload: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Stored:
    """A delivery as the store keeps it; ``repeat``: this very delivery id came before."""

    trigger: str
    source: str
    delivery_id: str
    event: str
    subject: str
    sender: str | None
    state: str
    reason: str | None
    run_id: str | None
    fields: dict[str, str]
    claimed_until: datetime | None
    created_at: datetime
    updated_at: datetime
    repeat: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"delivery": self.delivery_id, "source": self.source, "event": self.event,
                "subject": self.subject, "sender": self.sender, "state": self.state,
                "reason": self.reason, "run_id": self.run_id,
                "created_at": self.created_at.isoformat()}


def signature(secret: str, raw: bytes) -> str:
    """The signature header's value for ``raw``: ``sha256=`` and the hex HMAC."""
    return "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()


def verify(webhook: Webhook, secret: str | None, headers: Mapping[str, str],
           raw: bytes) -> None:
    """The body was signed with the trigger's secret, or ``unauthenticated``. ``headers``
    are lower-cased names."""
    if not secret:
        raise DevflowError(Code.UNAUTHENTICATED, "this trigger has no secret on the server",
                           hint=f"set {webhook.secret_env} in the server's environment")
    name = _HEADERS[webhook.source][0]
    given = headers.get(name, "")
    if webhook.source == "gitlab":
        if not hmac.compare_digest(given.encode(), secret.encode()):
            raise DevflowError(Code.UNAUTHENTICATED,
                               f"the {name} header is missing or is not the secret token",
                               hint="set the webhook's secret token in GitLab to the secret")
        return
    if not hmac.compare_digest(given.encode(), signature(secret, raw).encode()):
        raise DevflowError(Code.UNAUTHENTICATED,
                           f"the {name} header is missing or does not sign this body",
                           hint="sign the raw body with HMAC-SHA256 and the shared secret")


def parse(trigger: Trigger, headers: Mapping[str, str], raw: bytes) -> Delivery:
    """The delivery a verified request carries (``bad_request`` when unreadable)."""
    assert trigger.webhook is not None
    source = trigger.webhook.source
    _, id_header, event_header = _HEADERS[source]
    delivery_id = headers.get(id_header, "").strip()
    if source == "gitlab" and not delivery_id:
        delivery_id = headers.get(_GITLAB_EVENT_ID, "").strip()
    event = headers.get(event_header, "").strip()
    if not delivery_id or len(delivery_id) > 200 or not event:
        raise DevflowError(Code.BAD_REQUEST, f"{id_header} (at most 200 characters) and "
                           f"{event_header} are required", hint="see docs/triggers.md")
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DevflowError(Code.BAD_REQUEST, "the body is not JSON",
                           hint="send the payload as application/json") from exc
    if not isinstance(payload, dict):
        raise DevflowError(Code.BAD_REQUEST, "the body is not a JSON object",
                           hint="send the payload as a JSON object")
    if source == "github":
        return _github(delivery_id, event, payload, trigger.name)
    if source == "gitlab":
        return _gitlab(delivery_id, event, payload, trigger.name)
    return _generic(delivery_id, event, payload, trigger.name)


def _github(delivery_id: str, event: str, payload: dict[str, Any], name: str) -> Delivery:
    action = payload.get("action")
    if isinstance(action, str) and action:
        event = f"{event}.{action}"
    repository = _text(lookup(payload, "repository.full_name"))
    item = payload.get("issue") or payload.get("pull_request") or {}
    item = item if isinstance(item, dict) else {}
    number = _text(item.get("number"))
    subject = (f"{repository}#{number}" if repository and number else delivery_id)[:255]
    sender = _text(lookup(payload, "sender.login")) or None
    fields = {"trigger": name, "event": event, "delivery": delivery_id, "subject": subject,
              "repository": repository, "number": number,
              "title": _text(item.get("title")), "body": _text(item.get("body")),
              "label": _text(lookup(payload, "label.name")), "sender": sender or "",
              "url": _text(item.get("html_url"))}
    return Delivery("github", delivery_id, event, subject, sender, fields, payload)


def _gitlab(delivery_id: str, event: str, payload: dict[str, Any], name: str) -> Delivery:
    kind = _text(payload.get("object_kind"))
    attributes = _mapping(payload.get("object_attributes"))
    action = _text(attributes.get("action"))
    if kind:
        event = f"{kind}.{action}" if action else kind
    # a comment is about the issue or merge request it is on
    item = ((_mapping(payload.get("merge_request")) or _mapping(payload.get("issue")))
            if kind == "note" else attributes)
    request = kind == "merge_request" or (kind == "note" and "merge_request" in payload)
    project = _text(lookup(payload, "project.path_with_namespace"))
    number = _text(item.get("iid"))
    mark = "!" if request else "#"
    subject = (f"{project}{mark}{number}" if project and number else delivery_id)[:255]
    sender = _text(lookup(payload, "user.username")) or None
    fields = {"trigger": name, "event": event, "delivery": delivery_id, "subject": subject,
              "repository": project, "number": number, "title": _text(item.get("title")),
              "body": _text(attributes.get("note") if kind == "note"
                            else item.get("description")),
              "label": _label_added(payload), "sender": sender or "",
              "url": _text(attributes.get("url"))}
    return Delivery("gitlab", delivery_id, event, subject, sender, fields, payload)


def _label_added(payload: Mapping[str, Any]) -> str:
    """The first label a GitLab change added (``changes.labels``: previous, current)."""
    labels = _mapping(lookup(payload, "changes.labels"))

    def titles(key: str) -> list[str]:
        found = labels.get(key)
        return [_text(_mapping(x).get("title")) for x in found] if isinstance(found, list) else []

    before = set(titles("previous"))
    return next((title for title in titles("current") if title and title not in before), "")


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _generic(delivery_id: str, event: str, payload: dict[str, Any], name: str) -> Delivery:
    subject = (_text(payload.get("subject")) or delivery_id)[:255]
    sender = _text(payload.get("sender")) or None
    fields = {"trigger": name, "event": event, "delivery": delivery_id, "subject": subject,
              "repository": _text(payload.get("repository")),
              **{key: _text(payload.get(key)) for key in ("number", "title", "body", "label",
                                                          "url")},
              "sender": sender or ""}
    return Delivery("generic", delivery_id, event, subject, sender, fields, payload)


def refusal(webhook: Webhook, delivery: Delivery) -> str | None:
    """Why the delivery starts nothing (None: it may start a run). In order: the agent's
    own account, the senders allowed, the events, the filter."""
    sender = delivery.sender or ""
    if sender and sender in webhook.ignore_senders:
        return f"sender {sender} is ignored (ignore_senders: the agent's own account)"
    if webhook.senders and sender not in webhook.senders:
        return f"sender {sender or '(none)'} is not one of the senders allowed"
    if webhook.events and delivery.event not in webhook.events:
        return f"event {delivery.event} is not one of {', '.join(webhook.events)}"
    for path, wanted in webhook.filter.items():
        found = lookup(delivery.payload, path)
        if found is None or _text(found) != _text(wanted):
            return f"filter {path}: {_text(found) or '(missing)'} is not {_text(wanted)}"
    return None


def lookup(payload: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path (``label.name``), or None."""
    found: Any = payload
    for part in path.split("."):
        if not isinstance(found, Mapping):
            return None
        found = found.get(part)
    return found


def _text(value: Any) -> str:
    if value is None or isinstance(value, (dict, list)):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
