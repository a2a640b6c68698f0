"""Inbound webhooks of triggers: ``POST /hooks/{trigger}``, authenticated by the trigger's
HMAC secret, not by an API token.

The raw body is read whole (up to ``hooks.MAX_BODY``) and handed to ``App.receive_hook``
with the headers, which checks the signature before anything else: a bad or missing one
is 401 and nothing is stored. The answer says what became of the delivery: 202 when it
started a run, 200 otherwise (a duplicate with the run it joined, refused and why, or
pending: another request is starting its run).
"""

from __future__ import annotations

from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Request, Response

from devflow.api.auth import AppDep, role
from devflow.errors import Code, DevflowError
from devflow.hooks import MAX_BODY

router = APIRouter(tags=["hooks"])


@router.post("/hooks/{trigger}", status_code=202, openapi_extra=role("signed"),
             responses={200: {"description": "Nothing started: a duplicate (with the run it "
                                             "joined), refused (and why), or pending."},
                        401: {"description": "The signature is missing or wrong: nothing "
                                             "was stored."}})
async def receive(trigger: str, request: Request, response: Response,
                  app: AppDep) -> dict[str, Any]:
    """A delivery to a webhook trigger, signed with its secret (docs/triggers.md)."""
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise DevflowError(Code.BAD_REQUEST, f"the body is larger than {MAX_BODY} bytes",
                               hint="send a smaller payload")
    headers = {k.lower(): v for k, v in request.headers.items()}
    received = await anyio.to_thread.run_sync(app.receive_hook, trigger, headers, raw)
    if received.error is not None and received.outcome == "failed":
        raise received.error
    if received.outcome != "started":
        response.status_code = 200
    return received.to_json()
