"""The verbs on webhook deliveries: record one under its trigger's lock, claim it with its
run, hand it back, read them.

Recording is one write transaction that locks the trigger's ``trigger_state`` row (as
evaluating a schedule does) and decides the delivery once: a delivery id seen before
is answered as it was (a failed one, or a pending one whose starter's claim ran out, is
claimed again); a refused one is kept with why; one whose subject has an active run
(a pending delivery, or a started one whose run has not ended) is a ``duplicate`` of
it; otherwise it is ``pending``, claimed by the caller, who starts its run. The run's
insert flips it to ``started`` in the same transaction (``claim_delivery_in``), or the
run is not inserted: a delivery starts at most one run. A start that fails hands the
delivery back (``release``: ``failed``, with the error; a redelivery tries again).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, Final

import sqlalchemy as sa

from devflow import hooks, states
from devflow.errors import Code, DevflowError
from devflow.requests import DeliveryClaim
from devflow.store.database import Database
from devflow.store.rows import Mapper
from devflow.store.tables import RUN, TRIGGER_DELIVERY
from devflow.store.triggers import _event, lock_trigger

Clock = Callable[[], datetime]
_TERMINAL = sorted(str(s) for s in states.TERMINAL)
D = TRIGGER_DELIVERY
DELIVERIES: Final = Mapper(hooks.Stored, D, unread=frozenset({"id"}),
                           unstored=frozenset({"repeat"}))


class Deliveries:
    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock

    def record(self, trigger: str, delivery: hooks.Delivery, refusal: str | None,
               claim_seconds: float) -> tuple[hooks.Stored, bool]:
        """The delivery as decided, and whether the caller must start its run now. A paused
        trigger refuses new deliveries."""
        def tx(conn: sa.Connection) -> tuple[hooks.Stored, bool]:
            now = self.clock()
            paused = lock_trigger(self.db, conn, trigger, now).paused
            claim = now + timedelta(seconds=claim_seconds)
            where = (D.c.trigger == trigger, D.c.source == delivery.source,
                     D.c.delivery_id == delivery.id)
            seen = conn.execute(sa.select(D).where(*where)).first()
            if seen is not None:
                stale = seen.state == hooks.PENDING and (
                    seen.claimed_until is None or seen.claimed_until <= now)
                retry = seen.state == hooks.FAILED and _active(
                    conn, trigger, seen.subject) is None
                if stale or retry:
                    conn.execute(sa.update(D).where(*where).values(
                        state=hooks.PENDING, claimed_until=claim, updated_at=now))
                else:
                    _event(conn, trigger, "delivery.repeated", None, now, run_id=seen.run_id,
                           payload={"delivery": delivery.id, "state": seen.state})
                return dataclasses.replace(_stored(conn.execute(sa.select(D).where(
                    *where)).one()), repeat=True), stale or retry
            values: dict[str, Any] = dict(
                trigger=trigger, source=delivery.source, delivery_id=delivery.id,
                event=delivery.event[:128], subject=delivery.subject[:255],
                sender=delivery.sender[:255] if delivery.sender else None,
                fields=delivery.fields, created_at=now, updated_at=now)
            why = refusal or ("the trigger is paused" if paused else None)
            active = None if why else _active(conn, trigger, delivery.subject)
            if why is not None:
                values.update(state=hooks.REFUSED, reason=why)
            elif active is not None:
                values.update(state=hooks.DUPLICATE, run_id=active.run_id,
                              reason=f"subject {delivery.subject} has an active run: "
                                     + (active.run_id or
                                        f"(being started for delivery {active.delivery_id})"))
            else:
                values.update(state=hooks.PENDING, claimed_until=claim)
            conn.execute(sa.insert(D).values(**values))
            if values["state"] != hooks.PENDING:
                _event(conn, trigger, f"delivery.{values['state']}", None, now,
                       run_id=values.get("run_id"),
                       payload={"delivery": delivery.id, "reason": values["reason"]})
            return _stored(conn.execute(sa.select(D).where(*where)).one()), \
                values["state"] == hooks.PENDING
        return self.db.write(tx)

    def stale(self, names: Sequence[str], claim_seconds: float) -> list[hooks.Stored]:
        """The pending deliveries of these triggers whose starter's claim ran out (it died
        between recording them and starting their runs), claimed again by the caller."""
        def stale_ids(conn: sa.Connection) -> list[int]:
            now = self.clock()
            return list(conn.execute(sa.select(D.c.id).where(
                D.c.trigger.in_(names), D.c.state == hooks.PENDING,
                sa.or_(D.c.claimed_until.is_(None), D.c.claimed_until <= now))
                .order_by(D.c.id)).scalars().all())

        if not self.db.read(stale_ids):  # the usual case: no write at each worker look
            return []

        def tx(conn: sa.Connection) -> list[hooks.Stored]:
            now = self.clock()
            found = stale_ids(conn)
            taken = []
            for delivery_id in found:
                done = conn.execute(sa.update(D).where(
                    D.c.id == delivery_id, D.c.state == hooks.PENDING,
                    sa.or_(D.c.claimed_until.is_(None), D.c.claimed_until <= now)).values(
                    claimed_until=now + timedelta(seconds=claim_seconds), updated_at=now))
                if done.rowcount == 1:
                    taken.append(_stored(conn.execute(sa.select(D).where(
                        D.c.id == delivery_id)).one()))
            return taken
        return self.db.write(tx)

    def release(self, claim: DeliveryClaim, error: DevflowError) -> None:
        """A start that failed: the delivery is ``failed`` with the error (a redelivery of
        it tries again), and its subject no longer has an active run."""
        def tx(conn: sa.Connection) -> None:
            now = self.clock()
            done = conn.execute(sa.update(D).where(
                D.c.trigger == claim.trigger, D.c.source == claim.source,
                D.c.delivery_id == claim.delivery_id, D.c.state == hooks.PENDING).values(
                state=hooks.FAILED, claimed_until=None,
                reason=f"{error.code}: {error.message}", updated_at=now))
            if done.rowcount == 1:
                _event(conn, claim.trigger, "delivery.failed", None, now,
                       payload={"delivery": claim.delivery_id, "code": str(error.code),
                                "message": error.message})
        self.db.write(tx)

    def get(self, trigger: str, source: str, delivery_id: str) -> hooks.Stored:
        return self.db.read(lambda conn: _stored(conn.execute(sa.select(D).where(
            D.c.trigger == trigger, D.c.source == source,
            D.c.delivery_id == delivery_id)).one()))

    def recent(self, name: str, *, limit: int = 50) -> list[hooks.Stored]:
        """The trigger's deliveries, newest first."""
        query = sa.select(D).where(D.c.trigger == name).order_by(D.c.id.desc()).limit(limit)
        return self.db.read(lambda conn: [_stored(r) for r in conn.execute(query)])

    def counts(self, name: str) -> dict[str, int]:
        query = (sa.select(D.c.state, sa.func.count()).where(D.c.trigger == name)
                 .group_by(D.c.state))
        return self.db.read(lambda conn: {s: int(n) for s, n in conn.execute(query)})


def claim_delivery_in(conn: sa.Connection, claim: DeliveryClaim, run_id: str,
                      now: datetime) -> None:
    """In the transaction that inserts run ``run_id``: the delivery is started by it, or
    ``delivery_taken`` (and the run is not inserted) when it is no longer pending."""
    done = conn.execute(sa.update(D).where(
        D.c.trigger == claim.trigger, D.c.source == claim.source,
        D.c.delivery_id == claim.delivery_id, D.c.state == hooks.PENDING).values(
        state=hooks.STARTED, run_id=run_id, claimed_until=None, updated_at=now))
    if done.rowcount != 1:
        raise DevflowError(Code.DELIVERY_TAKEN, f"delivery {claim.delivery_id} of trigger "
                           f"{claim.trigger} is no longer pending",
                           hint=f"devflow triggers show {claim.trigger}")
    _event(conn, claim.trigger, "delivery.started", None, now, run_id=run_id,
           payload={"delivery": claim.delivery_id})


def _active(conn: sa.Connection, trigger: str, subject: str) -> Any:
    """The delivery holding the subject's active run: pending, or started with a run
    that has not ended."""
    query = (sa.select(D.c.delivery_id, D.c.run_id)
             .select_from(D.outerjoin(RUN, RUN.c.id == D.c.run_id))
             .where(D.c.trigger == trigger, D.c.subject == subject,
                    sa.or_(D.c.state == hooks.PENDING,
                           sa.and_(D.c.state == hooks.STARTED,
                                   RUN.c.state.not_in(_TERMINAL))))
             .order_by(D.c.id).limit(1))
    return conn.execute(query).first()


def _stored(row: sa.Row[Any]) -> hooks.Stored:
    return DELIVERIES.load(row._mapping)
