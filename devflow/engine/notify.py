"""Webhook delivery: the outbox's messages sent to each endpoint, signed, retried.

Messages are fanned out to the endpoints subscribed (a delivery each), then each
endpoint is served by a task of its own, one message at a time, in order (a message
being retried holds back those after it): a slow or failing endpoint never delays
another. A 2xx delivers; 410 Gone disables the
endpoint (its messages stay, shown as pending); anything else is tried again after a
backoff with jitter, until ``webhooks.MAX_ATTEMPTS``. What failed is recorded with the
status and the error, never the URL (its path and query may hold a secret).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import anyio

from devflow import faults, logs, webhooks
from devflow.engine.context import Context
from devflow.store import Due

log = logs.get_logger("devflow.webhooks")


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A 3xx is the endpoint's answer, not a place to send the message again: urllib
    would re-send the POST as a GET without its body (and to any scheme or host)."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


async def deliver(ctx: Context, endpoints: Sequence[webhooks.Endpoint], base_url: str,
                  stop: anyio.Event, poll: float = 0.5) -> None:
    """Deliver until ``stop`` is set."""
    if not endpoints:
        return
    async with anyio.create_task_group() as group:
        group.start_soon(_fan, ctx, endpoints, stop, poll)
        for endpoint in endpoints:
            group.start_soon(_serve, ctx, endpoint, base_url, stop, poll)
        await stop.wait()
        group.cancel_scope.cancel()


async def _fan(ctx: Context, endpoints: Sequence[webhooks.Endpoint], stop: anyio.Event,
               poll: float) -> None:
    subscribed = [(e.key, e.events) for e in endpoints]
    while not stop.is_set():
        try:
            await ctx.call(ctx.store.outbox.fan_out, subscribed)
        except Exception as exc:  # noqa: BLE001 - the database may be away for a moment
            log.warning("webhook_fan_out_failed", error=str(exc))
        await anyio.sleep(poll)


async def _serve(ctx: Context, endpoint: webhooks.Endpoint, base_url: str, stop: anyio.Event,
                 poll: float) -> None:
    while not stop.is_set():
        try:
            while not stop.is_set():  # one message at a time, each claimed while sent
                due = await ctx.call(ctx.store.outbox.due, endpoint.key, 1,
                                          endpoint.claim)
                if not due or not await _send(ctx, endpoint, base_url, due[0]):
                    break  # none due, or to be tried again later (those after it wait)
        except Exception as exc:  # noqa: BLE001 - as above: try again at the next look
            log.warning("webhook_delivery_failed", endpoint=endpoint.shown, error=str(exc))
        await anyio.sleep(poll)


async def _send(ctx: Context, endpoint: webhooks.Endpoint, base_url: str,
                item: Due) -> bool:
    """One try; whether it was delivered (or given up on, after the last try)."""
    body = json.dumps(webhooks.message(item.event, base_url), separators=(",", ":")).encode()
    message_id = f"msg_{item.event['run_id']}_{item.event['seq']}"
    faults.point("webhook_sending")
    status, error = await ctx.call(_post, endpoint, message_id, body)
    attempts = item.attempts + 1
    if status is not None and 200 <= status < 300:
        await ctx.call(ctx.store.outbox.record, item.id, state="delivered", status=status,
                       error=None)
        return True
    if status == 410:
        await ctx.call(ctx.store.outbox.record, item.id, state="pending", status=status,
                       error="410 Gone: endpoint disabled")
        await ctx.call(ctx.store.outbox.disable, endpoint.key, endpoint.shown, status)
        log.warning("webhook_endpoint_disabled", endpoint=endpoint.shown)
        return False
    final = attempts >= webhooks.MAX_ATTEMPTS
    await ctx.call(ctx.store.outbox.record, item.id,
                   state="failed" if final else "pending", status=status, error=error,
                   next_at=ctx.clock() + timedelta(seconds=webhooks.backoff(attempts)))
    log.warning("webhook_try_failed", endpoint=endpoint.shown, status=status, error=error,
                attempts=attempts, final=final)
    return final


def _post(endpoint: webhooks.Endpoint, message_id: str, body: bytes,
          ) -> tuple[int | None, str | None]:
    timestamp = int(time.time())
    request = urllib.request.Request(endpoint.url, data=body, method="POST", headers={  # noqa: S310 - http(s) only (webhooks.endpoints)
        "Content-Type": "application/json", "User-Agent": "devflow-webhooks",
        "webhook-id": message_id, "webhook-timestamp": str(timestamp),
        "webhook-signature": webhooks.sign(endpoint.secrets, message_id, timestamp, body)})
    try:
        with _OPENER.open(request, timeout=endpoint.timeout) as response:
            status = int(response.status)
            return (status, None) if status < 300 else (status, f"HTTP {status}")
    except urllib.error.HTTPError as exc:
        return exc.code, f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return None, type(reason).__name__ if not isinstance(reason, str) else reason
