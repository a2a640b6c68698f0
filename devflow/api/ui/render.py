"""HTML out of stored state: the templates' environment and the views they are given.

An artifact is shown for what it is: a plan (a list of phases) as a table, a review's
findings grouped by severity (worst first), anything else as indented JSON. Whether a
run's owner is lost is read off its stored lease: a runnable run held by a worker
whose lease ran out (the worker stopped renewing it) shows "owner lost".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import jinja2
from fastapi.responses import HTMLResponse

from devflow import model
from devflow.states import RUNNABLE, ApprovalState

#: the order severities are shown in; others follow, by name
SEVERITIES = ("blocker", "critical", "major", "minor", "info")

_ENV = jinja2.Environment(loader=jinja2.PackageLoader("devflow.api.ui", "templates"),
                          autoescape=True, undefined=jinja2.StrictUndefined,
                          trim_blocks=True, lstrip_blocks=True)
_ENV.filters["when"] = lambda t: "" if t is None else f"{t:%Y-%m-%d %H:%M:%S} UTC"
_ENV.filters["usd"] = lambda v: "" if v is None else f"${v:,.4f}"
_ENV.filters["pretty"] = lambda v: json.dumps(v, indent=2, ensure_ascii=False, default=str)

#: headers of every page: no framing, no inline script, nothing cached
HEADERS = {"Content-Security-Policy": "default-src 'self'; script-src 'self'; "
                                      "style-src 'self'; img-src 'self' data:; "
                                      "frame-ancestors 'none'; form-action 'self'; "
                                      "base-uri 'none'",
           "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
           "Referrer-Policy": "same-origin", "Cache-Control": "no-store"}


def page(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    html = _ENV.get_template(name).render(**context)
    return HTMLResponse(html, status_code=status, headers=HEADERS)


def owner_lost(run: model.Run, now: datetime) -> bool:
    return (run.state in RUNNABLE and run.lease_owner is not None
            and run.lease_expires_at is not None and run.lease_expires_at <= now)


def expired(approval: model.Approval, now: datetime) -> bool:
    """A pending request whose deadline passed (the sweep decides it as the gate says)."""
    return (approval.state is ApprovalState.PENDING and approval.deadline is not None
            and approval.deadline <= now)


def not_decidable(approval: model.Approval, now: datetime,
                  looking_role: str | None) -> str | None:
    """Why the request's buttons cannot be clicked, or None; ``looking_role``: the role
    of a token that may look but not decide (None: it may decide)."""
    if approval.state is not ApprovalState.PENDING:
        return f"already decided: {approval.resolution or approval.state}" + (
            f" by {approval.resolved_by}" if approval.resolved_by else "")
    if expired(approval, now):
        return "expired: its deadline passed; the sweep decides it as the gate says"
    if looking_role is not None:
        return f"your token's role ({looking_role}) may look, not decide"
    return None


@dataclass(frozen=True)
class ArtifactView:
    """How an artifact is shown: ``kind`` is plan, findings or json."""

    kind: str
    summary: str | None = None
    columns: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    groups: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)
    document: Any = None


def artifact_view(document: Any) -> ArtifactView | None:
    if document is None:
        return None
    summary = document.get("summary") if isinstance(document, dict) else None
    summary = summary if isinstance(summary, str) else None
    phases = document.get("phases") if isinstance(document, dict) else None
    if isinstance(phases, list) and _records(phases):
        columns: list[str] = []
        for item in phases:
            columns += [k for k, v in item.items() if k not in columns and _scalar(v)]
        rows = [[_cell(item.get(c)) for c in columns] for item in phases]
        return ArtifactView("plan", summary, columns, rows, document=document)
    findings = document.get("findings") if isinstance(document, dict) else None
    if isinstance(findings, list) and all(isinstance(f, dict) for f in findings):
        return ArtifactView("findings", summary, groups=_by_severity(findings),
                            document=document)
    return ArtifactView("json", summary, document=document)


def _records(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def _by_severity(findings: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for finding in findings:
        groups.setdefault(str(finding.get("severity") or "unrated"), []).append(finding)
    order = {name: n for n, name in enumerate(SEVERITIES)}
    return sorted(groups.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))


def section_keys(document: Any, pointer: str | None) -> list[str]:
    """The keys of the items at a gate's ``sections`` pointer in its artifact."""
    if not pointer or document is None:
        return []
    value = document
    for raw in pointer.lstrip("/").split("/") if pointer != "/" else []:
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return []
    if not isinstance(value, list):
        return []
    return [str(item["key"]) for item in value if isinstance(item, dict) and "key" in item]
