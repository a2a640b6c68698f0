"""Tokens, for admins: list and revoke. No route creates one: a token cannot mint tokens
(``devflow tokens create`` does, on the machine)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from devflow.api.auth import Admin, AppDep, Viewer, role

router = APIRouter(tags=["tokens"])


@router.get("/me", openapi_extra=role("viewer"))
def whoami(caller: Viewer) -> dict[str, Any]:
    """The calling token: its id, actor and role."""
    return {"token": caller.token.to_json()}


@router.get("/tokens", openapi_extra=role("admin"))
def list_tokens(caller: Admin, app: AppDep, all: bool = False) -> dict[str, Any]:
    """API tokens (never the tokens themselves); `all` includes revoked and expired ones."""
    return {"tokens": [t.to_json() for t in app.tokens(include_dead=all)]}


@router.delete("/tokens/{token_id}", openapi_extra=role("admin"))
def revoke_token(token_id: str, caller: Admin, app: AppDep) -> dict[str, Any]:
    """Revoke a token; its next request is refused (401 `unauthenticated`)."""
    kept, changed = app.token_revoke(token_id)
    return {"token": kept.to_json(), "changed": changed}


@router.get("/webhooks", openapi_extra=role("admin"), tags=["webhooks"])
def webhook_status(caller: Admin, app: AppDep) -> dict[str, Any]:
    """Each webhook endpoint (URL redacted): deliveries by state, the last failure, and
    whether a 410 disabled it."""
    return {"webhooks": app.webhooks()}
