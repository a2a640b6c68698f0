"""Webhook deliveries of triggers, received: verified, recorded once, started once.

``receive`` is what ``POST /api/v1/hooks/{trigger}`` does: the signature is checked
over the raw body before anything is read or stored (devflow.hooks); the delivery is
then recorded under the trigger's lock (store.deliveries: refused, a duplicate of its
subject's active run, or pending and claimed by this process) and, when pending, its
run is started detached, the run's insert claiming the delivery. A process that dies
between the two leaves the delivery pending: once its claim runs out, the next worker
look (or sweep) starts it (``start_stale``), and so does a redelivery of it; either way
once, since only the insert that flips it from pending inserts a run.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devflow import faults, hooks, logs, triggerdefs
from devflow.engine import schedule
from devflow.engine.context import Context, new_owner
from devflow.errors import Code, DevflowError
from devflow.requests import DeliveryClaim, StartRequest
from devflow.triggerdefs import Trigger

log = logs.get_logger("devflow.triggers")


@dataclass(frozen=True)
class Received:
    """What became of a delivery: ``outcome`` started, duplicate, refused, pending (its
    run is being started by another request) or failed; the run it started or joined."""

    delivery: hooks.Stored
    outcome: str
    error: DevflowError | None = None

    @property
    def run_id(self) -> str | None:
        return self.delivery.run_id

    def to_json(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "run_id": self.run_id,
                "repeat": self.delivery.repeat, **self.delivery.to_json()}


def receive(ctx: Context, name: str, headers: Mapping[str, str], raw: bytes) -> Received:
    """One delivery to trigger ``name`` (``headers`` with lower-cased names). An unknown
    name is refused without the catalog's hint: the caller is not authenticated yet, and
    the names of the other triggers are none of its business."""
    trigger = next((t for t in ctx.catalog.triggers() if t.name == name), None)
    webhook = trigger.webhook if trigger is not None else None
    if trigger is None or webhook is None:
        raise DevflowError(Code.TRIGGER_NOT_FOUND, f"no webhook trigger {name[:48]!r} is "
                           "served here", hint="the path is /api/v1/hooks/NAME of a webhook "
                                               "trigger (devflow triggers list)")
    hooks.verify(webhook, os.environ.get(webhook.secret_env), headers, raw)
    delivery = hooks.parse(trigger, headers, raw)
    why = hooks.refusal(webhook, delivery)
    stored, to_start = ctx.store.deliveries.record(trigger.name, delivery, why,
                                                   schedule.claim_seconds(ctx))
    faults.point("delivery_recorded")
    if to_start:
        return start(ctx, trigger, stored)
    outcome = stored.state
    if stored.state == hooks.PENDING:
        outcome = "pending"
    elif stored.state == hooks.STARTED and stored.repeat:
        outcome = "duplicate"
    log.info("delivery", trigger=trigger.name, delivery=stored.delivery_id,
             outcome=outcome, run_id=stored.run_id, reason=stored.reason)
    return Received(stored, outcome)


def start(ctx: Context, trigger: Trigger, stored: hooks.Stored) -> Received:
    """Start the run of a delivery this process has claimed (detached: workers drive it)."""
    claim = DeliveryClaim(trigger.name, stored.source, stored.delivery_id)
    request = StartRequest(
        repo=Path(trigger.repo).expanduser(), base=trigger.base, template=trigger.template,
        requirements=triggerdefs.requirements_for(trigger, stored.fields),
        actor=f"trigger:{trigger.name}", binds=dict(trigger.bindings), delivery=claim)
    try:
        run = schedule.start_detached(ctx, request, new_owner(f"trigger-{trigger.name}"))
    except DevflowError as exc:
        if exc.code is not Code.DELIVERY_TAKEN:
            ctx.store.deliveries.release(claim, exc)
        log.info("delivery", trigger=trigger.name, delivery=stored.delivery_id,
                 outcome="failed", reason=f"{exc.code}: {exc.message}")
        found = _again(ctx, stored)
        return Received(found, "duplicate" if found.state == hooks.STARTED else "failed",
                        error=exc)
    log.info("delivery", trigger=trigger.name, delivery=stored.delivery_id,
             outcome="started", run_id=run.id)
    return Received(_again(ctx, stored), "started")


def _again(ctx: Context, stored: hooks.Stored) -> hooks.Stored:
    """The delivery as stored now (its run, or why it failed), still a repeat if it was."""
    found = ctx.store.deliveries.get(stored.trigger, stored.source, stored.delivery_id)
    return dataclasses.replace(found, repeat=stored.repeat)


def start_stale(ctx: Context) -> list[Received]:
    """Start the pending deliveries whose starter died (their claims ran out)."""
    served = {t.name: t for t in ctx.catalog.triggers()
              if t.webhook is not None}
    if not served:
        return []
    return [start(ctx, served[stored.trigger], stored) for stored in
            ctx.store.deliveries.stale(sorted(served), schedule.claim_seconds(ctx))]
