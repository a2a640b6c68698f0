"""The webhook outbox: messages fanned out to endpoints, their tries, disabled endpoints."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from devflow.store.database import Database
from devflow.store.tables import WEBHOOK_DELIVERY, WEBHOOK_ENDPOINT, WEBHOOK_OUTBOX

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


@dataclass(frozen=True)
class Due:
    """A message to send to an endpoint: the delivery, its tries so far, the event."""

    id: int
    attempts: int
    event: dict[str, Any]


class Outbox:
    def __init__(self, db: Database, clock: Callable[[], datetime]) -> None:
        self.db = db
        self.clock = clock

    def fan_out(self, endpoints: Sequence[tuple[str, Sequence[str]]], limit: int = 500) -> int:
        """A delivery per endpoint subscribed, for each message not fanned out yet."""
        def tx(conn: sa.Connection) -> int:
            self.db.serialize(conn, "devflow-webhook-fan")
            found = conn.execute(sa.select(WEBHOOK_OUTBOX.c.id, WEBHOOK_OUTBOX.c.type)
                                 .where(WEBHOOK_OUTBOX.c.fanned.is_(False))
                                 .order_by(WEBHOOK_OUTBOX.c.id).limit(limit)).all()
            if not found:
                return 0
            now = self.clock()
            rows = [{"outbox_id": item.id, "endpoint": key, "state": PENDING, "attempts": 0,
                     "next_at": now} for item in found for key, events in endpoints
                    if item.type in events]
            if rows:
                conn.execute(sa.insert(WEBHOOK_DELIVERY), rows)
            conn.execute(sa.update(WEBHOOK_OUTBOX).where(
                WEBHOOK_OUTBOX.c.id.in_([item.id for item in found])).values(fanned=True))
            return len(found)
        return self.db.write(tx)

    def due(self, endpoint: str, limit: int = 20, hold: float = 300.0) -> list[Due]:
        """Claim the endpoint's pending messages in order, up to the first whose next try
        is not due yet (an endpoint gets its messages in order); none once it is disabled.

        Claimed: their next try is moved ``hold`` seconds on in the same transaction, so
        another server sending for the same endpoint finds them not due and waits (one
        send each, in order). ``record`` ends the claim; a sender that died leaves them
        to be tried again once ``hold`` passed.
        """
        query = (sa.select(WEBHOOK_DELIVERY.c.id, WEBHOOK_DELIVERY.c.attempts,
                           WEBHOOK_DELIVERY.c.next_at, WEBHOOK_OUTBOX)
                 .join(WEBHOOK_OUTBOX, WEBHOOK_OUTBOX.c.id == WEBHOOK_DELIVERY.c.outbox_id)
                 .where(WEBHOOK_DELIVERY.c.endpoint == endpoint,
                        WEBHOOK_DELIVERY.c.state == PENDING,
                        ~sa.exists().where(WEBHOOK_ENDPOINT.c.key == endpoint))
                 .order_by(WEBHOOK_DELIVERY.c.id).limit(limit))

        def tx(conn: sa.Connection) -> list[Due]:
            self.db.serialize(conn, f"wh{endpoint[:6]}")  # senders of one endpoint in turn
            now = self.clock()
            found = []
            for r in conn.execute(query):
                if r[2] > now:
                    break
                found.append(Due(r[0], r[1], {"run_id": r.run_id, "seq": r.seq,
                                              "type": r.type, "phase": r.phase,
                                              "payload": r.payload, "ts": r.ts.isoformat()}))
            if found:
                conn.execute(sa.update(WEBHOOK_DELIVERY).where(
                    WEBHOOK_DELIVERY.c.id.in_([d.id for d in found]))
                    .values(next_at=now + timedelta(seconds=hold)))
            return found
        return self.db.write(tx)

    def record(self, delivery_id: int, *, state: str, status: int | None,
               error: str | None, next_at: datetime | None = None) -> None:
        values: dict[str, Any] = {"state": state, "attempts": WEBHOOK_DELIVERY.c.attempts + 1}
        if next_at is not None:
            values["next_at"] = next_at
        if state == DELIVERED:  # the last failure, if any, stays to be seen
            values["delivered_at"] = self.clock()
        else:
            values.update(last_status=status, last_error=error)
        self.db.write(lambda conn: conn.execute(
            sa.update(WEBHOOK_DELIVERY).where(WEBHOOK_DELIVERY.c.id == delivery_id)
            .values(**values)))

    def disable(self, endpoint: str, shown: str, status: int) -> None:
        def tx(conn: sa.Connection) -> None:
            if conn.execute(sa.select(WEBHOOK_ENDPOINT.c.key).where(
                    WEBHOOK_ENDPOINT.c.key == endpoint)).first() is None:
                conn.execute(sa.insert(WEBHOOK_ENDPOINT).values(
                    key=endpoint, shown=shown, disabled_at=self.clock(), status=status))
        self.db.write(tx)

    def status(self) -> list[dict[str, Any]]:
        """Per endpoint: deliveries by state, the last failure, whether it is disabled."""
        def tx(conn: sa.Connection) -> list[dict[str, Any]]:
            counts = conn.execute(sa.select(WEBHOOK_DELIVERY.c.endpoint,
                                            WEBHOOK_DELIVERY.c.state, sa.func.count())
                                  .group_by(WEBHOOK_DELIVERY.c.endpoint,
                                            WEBHOOK_DELIVERY.c.state)).all()
            failures = conn.execute(
                sa.select(WEBHOOK_DELIVERY.c.endpoint, WEBHOOK_DELIVERY.c.last_status,
                          WEBHOOK_DELIVERY.c.last_error, WEBHOOK_DELIVERY.c.attempts)
                .where(WEBHOOK_DELIVERY.c.last_error.is_not(None))
                .order_by(WEBHOOK_DELIVERY.c.id)).all()
            disabled = {r.key: r for r in conn.execute(sa.select(WEBHOOK_ENDPOINT))}
            found: dict[str, dict[str, Any]] = {}
            for endpoint, state, count in counts:
                found.setdefault(endpoint, {"endpoint": endpoint})[state] = count
            for r in failures:
                found.setdefault(r.endpoint, {"endpoint": r.endpoint})["last_failure"] = {
                    "status": r.last_status, "error": r.last_error, "attempts": r.attempts}
            for key, row in disabled.items():
                found.setdefault(key, {"endpoint": key})["disabled"] = {
                    "at": row.disabled_at.isoformat(), "status": row.status}
            return list(found.values())
        return self.db.read(tx)
