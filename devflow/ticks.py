"""Ticks of schedule triggers: what they are, and what becomes of the due ones.

A tick is one time a schedule names, ``(trigger, scheduled_at)``: unique in the store,
so however many workers and sweeps evaluate a trigger, a tick is decided once and
starts at most one run. ``plan`` is the decision, a pure function of the trigger's
stored state, its open ticks, whether its run is active, and the time: no I/O, so the
policies are tested without a database and the store applies the result in the
transaction that holds the trigger's lock.

Tick states::

    pending ──run created (same transaction)──▶ started
       │ (start refused past grace)                     missed   (late, not caught up)
       └──────────────────────────────▶ failed          skipped  (overlap: skip)
    buffered ──its trigger's run ended──▶ pending

A tick is *due* at ``scheduled_at + jitter offset`` (the offset the same for every
worker, from a hash of the tick); it is *late* once ``grace`` has passed since then.
Late ticks are missed and handled by ``catchup``: none started (``skip``), the latest
(``latest``), or all of them (``all``). A due tick meets the trigger's active run by
``overlap``: dropped (``skip``), kept, one at most, until the run ends (``buffer_one``),
or started beside it (``allow``). Ticks fired by hand (``kind="fire"``) ignore the
schedule's policies.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from devflow import cron
from devflow.hooks import Stored
from devflow.triggerdefs import Trigger

PENDING: Final = "pending"
STARTED: Final = "started"
MISSED: Final = "missed"
SKIPPED: Final = "skipped"
BUFFERED: Final = "buffered"
FAILED: Final = "failed"
OPEN: Final = (PENDING, BUFFERED)


@dataclass(frozen=True, slots=True)
class TriggerState:
    """What the store keeps of a trigger: paused or not, and up to when it was evaluated."""

    name: str
    paused: bool
    checked_until: datetime
    paused_by: str | None = None
    paused_at: datetime | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Tick:
    trigger: str
    scheduled_at: datetime
    kind: str
    state: str
    run_id: str | None
    reason: str | None
    claimed_until: datetime | None
    created_at: datetime
    updated_at: datetime
    fired_by: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"trigger": self.trigger, "scheduled_at": self.scheduled_at.isoformat(),
                "kind": self.kind, "state": self.state, "run_id": self.run_id,
                "reason": self.reason, "fired_by": self.fired_by,
                "updated_at": self.updated_at.isoformat()}


@dataclass(frozen=True, slots=True)
class TriggerEvent:
    id: int
    trigger: str
    type: str
    scheduled_at: datetime | None
    run_id: str | None
    payload: dict[str, Any]
    ts: datetime

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "trigger": self.trigger, "type": self.type,
                "scheduled_at": self.scheduled_at.isoformat() if self.scheduled_at else None,
                "run_id": self.run_id, "payload": self.payload, "ts": self.ts.isoformat()}


@dataclass(frozen=True, slots=True)
class Decided:
    """A tick's new state (``PENDING``: to be started by the caller now) and why."""

    scheduled_at: datetime
    state: str
    reason: str | None = None
    new: bool = True


@dataclass
class Plan:
    checked_until: datetime
    decided: list[Decided] = field(default_factory=list)

    @property
    def to_start(self) -> list[datetime]:
        return [d.scheduled_at for d in self.decided if d.state == PENDING]


def offset(trigger: Trigger, scheduled_at: datetime) -> timedelta:
    """The tick's jitter: in ``[0, jitter)``, the same wherever it is computed."""
    assert trigger.schedule is not None
    if trigger.schedule.jitter <= 0:
        return timedelta(0)
    digest = hashlib.sha256(f"{trigger.name}|{scheduled_at.isoformat()}".encode()).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2**64
    return timedelta(seconds=fraction * trigger.schedule.jitter)


def due_at(trigger: Trigger, scheduled_at: datetime) -> datetime:
    return scheduled_at + offset(trigger, scheduled_at)


def late(trigger: Trigger, scheduled_at: datetime, now: datetime) -> bool:
    assert trigger.schedule is not None
    return now >= due_at(trigger, scheduled_at) + timedelta(seconds=trigger.schedule.grace)


def next_tick(trigger: Trigger, after: datetime) -> datetime | None:
    assert trigger.schedule is not None
    return cron.next_after(trigger.schedule.cron, trigger.schedule.timezone, after)


def due(trigger: Trigger, checked_until: datetime, now: datetime) -> list[datetime]:
    """The ticks after ``checked_until`` that are due by ``now`` (those before the first
    one that is not due yet: a jitter never reorders ticks)."""
    assert trigger.schedule is not None
    found = []
    for at in cron.between(trigger.schedule.cron, trigger.schedule.timezone, checked_until,
                           now):
        if due_at(trigger, at) > now:
            break
        found.append(at)
    return found


def anything_due(trigger: Trigger, state: TriggerState | None, open_ticks: list[Tick],
                 now: datetime) -> bool:
    """Whether ``plan`` could decide anything: worth taking the trigger's lock for (not a
    pending tick another is starting now)."""
    if state is None:
        return True
    if state.paused:
        return False
    if any(t.state == BUFFERED or t.claimed_until is None or t.claimed_until <= now
           for t in open_ticks):
        return True
    first = next_tick(trigger, state.checked_until)
    return first is not None and due_at(trigger, first) <= now


def plan(trigger: Trigger, state: TriggerState, open_ticks: list[Tick], active: list[str],
         now: datetime) -> Plan:
    """What becomes of the trigger's due and open ticks at ``now``.

    ``active``: the trigger's runs not ended yet. ``open_ticks``: its pending and
    buffered ticks; a pending tick whose claim has not run out is being started by
    someone else and counts as active.
    """
    schedule = trigger.schedule
    assert schedule is not None
    result = Plan(checked_until=state.checked_until)
    if state.paused:
        return result
    claimed = [t for t in open_ticks if t.state == PENDING and t.claimed_until is not None
               and t.claimed_until > now]
    busy = bool(active or claimed)
    retry = [t for t in open_ticks if t.state == PENDING and t not in claimed]
    buffered = [t for t in open_ticks if t.state == BUFFERED]
    ticks = due(trigger, state.checked_until, now)
    if ticks:
        result.checked_until = ticks[-1]
    on_time = [t for t in ticks if not late(trigger, t, now)]
    missed = [t for t in ticks if late(trigger, t, now)]
    wanted = on_time
    if schedule.catchup == "all":
        wanted = missed + on_time
        missed = []
    elif schedule.catchup == "latest" and missed and not on_time:
        wanted = missed[-1:]
        missed = missed[:-1]
    why = f"not evaluated within grace (catchup: {schedule.catchup})"
    result.decided += [Decided(t, MISSED, why) for t in missed]
    # ticks left pending by a starter that gave up or died: started again, within grace
    for tick in retry:
        if now >= tick.created_at + timedelta(seconds=schedule.grace):
            result.decided.append(Decided(tick.scheduled_at, FAILED, "not started within "
                                          f"grace: {tick.reason or 'its starter stopped'}",
                                          new=False))
        else:
            result.decided.append(Decided(tick.scheduled_at, PENDING, tick.reason, new=False))
            busy = busy or tick.kind != "fire"
    has_buffer = bool(buffered)
    if not busy and buffered:
        result.decided.append(Decided(buffered[0].scheduled_at, PENDING,
                                      "its trigger's run ended", new=False))
        busy, has_buffer = True, False
    for at in wanted:
        if schedule.overlap == "allow" or not busy:
            result.decided.append(Decided(at, PENDING))
            busy = True
        elif schedule.overlap == "buffer_one" and not has_buffer:
            result.decided.append(Decided(at, BUFFERED, "waits for the trigger's run to end"))
            has_buffer = True
        else:
            result.decided.append(Decided(at, SKIPPED, f"overlap: {schedule.overlap}; the "
                                          "trigger's run was still active"))
    return result


def fields(trigger: Trigger, scheduled_at: datetime, kind: str,
           fired_by: str | None) -> dict[str, str]:
    """The fields a tick fills into its trigger's requirements."""
    zone_name = trigger.schedule.timezone if trigger.schedule else "UTC"
    local_zone = cron.zone(zone_name)
    local = scheduled_at.astimezone(local_zone) if local_zone else scheduled_at
    return {"trigger": trigger.name, "scheduled_at": local.isoformat(timespec="seconds"),
            "scheduled_at_utc": scheduled_at.isoformat(timespec="seconds"),
            "date": local.date().isoformat(), "kind": kind, "fired_by": fired_by or ""}


@dataclass(frozen=True)
class TriggerView:
    """A trigger as ``devflow triggers list|show`` tells it: its definition, its stored state,
    its last and next tick, its ticks by state, the runs it started, and its events."""

    trigger: Trigger
    state: TriggerState | None
    last: Tick | None
    next_at: datetime | None
    counts: dict[str, int]
    recent: list[Tick] = field(default_factory=list)
    events: list[TriggerEvent] = field(default_factory=list)
    #: a webhook trigger's deliveries, newest first, and their counts by state
    deliveries: list[Stored] = field(default_factory=list)
    delivery_counts: dict[str, int] = field(default_factory=dict)

    @property
    def paused(self) -> bool:
        return bool(self.state and self.state.paused)

    def to_json(self, *, detail: bool = False) -> dict[str, Any]:
        t = self.trigger
        body: dict[str, Any] = {
            "name": t.name, "kind": t.kind, "template": t.template,
            "repo": t.repo, "base": t.base, "source": str(t.source) if t.source else None,
            "schedule": ({"cron": t.schedule.cron, "timezone": t.schedule.timezone,
                          "catchup": t.schedule.catchup, "overlap": t.schedule.overlap,
                          "jitter": t.schedule.jitter, "grace": t.schedule.grace}
                         if t.schedule else None),
            "paused": self.paused,
            "paused_by": self.state.paused_by if self.state else None,
            "last_tick": self.last.to_json() if self.last else None,
            "next_tick": self.next_at.isoformat() if self.next_at else None,
            "ticks": dict(sorted(self.counts.items())),
        }
        if t.webhook is not None:
            body["webhook"] = {"source": t.webhook.source, "events": list(t.webhook.events),
                               "filter": dict(t.webhook.filter),
                               "senders": list(t.webhook.senders),
                               "ignore_senders": list(t.webhook.ignore_senders),
                               "path": f"/api/v1/hooks/{t.name}"}
            body["deliveries_by_state"] = dict(sorted(self.delivery_counts.items()))
            body["last_delivery"] = self.deliveries[0].to_json() if self.deliveries else None
        if detail:
            body["recent_ticks"] = [tick.to_json() for tick in self.recent]
            body["runs"] = [tick.run_id for tick in self.recent if tick.run_id]
            body["missed"] = [tick.to_json() for tick in self.recent if tick.state == MISSED]
            body["events"] = [event.to_json() for event in self.events]
            if t.webhook is not None:
                body["deliveries"] = [d.to_json() for d in self.deliveries]
                body["runs"] = [d.run_id for d in self.deliveries
                                if d.run_id and d.state == "started"]
            body["definition"] = dict(t.definition)
        return body


def next_due(trigger: Trigger, state: TriggerState | None, now: datetime) -> datetime | None:
    """When the trigger's next tick is due (None: paused, a webhook, or never)."""
    if trigger.schedule is None or (state is not None and state.paused):
        return None
    after = max(now, state.checked_until) if state is not None else now
    at = next_tick(trigger, after)
    return due_at(trigger, at) if at is not None else None
