"""Leases and workers: who drives a run right now, until when, under which fencing number.

A lease is taken only on a runnable run that nobody holds; every take grows the
fencing number. A lease that expired is not taken over here: the sweep first
records the interrupted attempt and kills what the dead driver left running.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import Session, col, select

from devflow import model, states
from devflow.errors import LeaseLost
from devflow.store import rows
from devflow.store.database import Database
from devflow.store.tables import RunRow, WorkerRow


@dataclass(frozen=True, slots=True)
class Claimed:
    run_id: str
    lease: model.Lease


class Leases:
    def __init__(self, db: Database, clock: Callable[[], datetime]) -> None:
        self.db = db
        self.clock = clock

    def claim(self, run_id: str, owner: str, seconds: float) -> model.Lease | None:
        """Take the lease of one run if it is runnable and free; None otherwise."""
        def tx(session: Session) -> model.Lease | None:
            row = session.exec(self.db.lock_run_query(
                select(RunRow).where(RunRow.id == run_id))).first()
            if row is None or row.state not in _RUNNABLE or row.lease_owner is not None:
                return None
            return _take(session, row, owner, self.clock() + timedelta(seconds=seconds))
        return self.db.write(tx)

    def claim_next(self, owner: str, seconds: float, limit: int,
                   exclude: frozenset[str] = frozenset()) -> list[Claimed]:
        """Take up to ``limit`` free runnable runs, oldest first, skipping locked ones."""
        def tx(session: Session) -> list[Claimed]:
            query = (select(RunRow).where(col(RunRow.state).in_(_RUNNABLE),
                                          col(RunRow.lease_owner).is_(None))
                     .order_by(col(RunRow.updated_at)).limit(limit + len(exclude)))
            if not self.db.is_sqlite:
                query = query.with_for_update(skip_locked=True)
            expires = self.clock() + timedelta(seconds=seconds)
            claimed: list[Claimed] = []
            for row in session.exec(query).all():
                if row.id in exclude or len(claimed) >= limit:
                    continue
                claimed.append(Claimed(row.id, _take(session, row, owner, expires)))
            return claimed
        return self.db.write(tx)

    def renew(self, run_id: str, lease: model.Lease, seconds: float) -> model.Run:
        """Extend a held lease; LeaseLost when it is no longer ours."""
        def tx(session: Session) -> model.Run:
            row = session.exec(self.db.lock_run_query(
                select(RunRow).where(RunRow.id == run_id))).first()
            now = self.clock()
            if (row is None or row.lease_owner != lease.owner or row.lease_fence != lease.fence
                    or row.lease_expires_at is None or row.lease_expires_at <= now):
                raise LeaseLost(run_id)
            row.lease_expires_at = now + timedelta(seconds=seconds)
            session.add(row)
            return rows.run(row)
        return self.db.write(tx)

    def release(self, run_id: str, lease: model.Lease) -> bool:
        def tx(session: Session) -> bool:
            row = session.exec(self.db.lock_run_query(
                select(RunRow).where(RunRow.id == run_id))).first()
            if row is None or row.lease_owner != lease.owner or row.lease_fence != lease.fence:
                return False
            row.lease_owner, row.lease_expires_at = None, None
            session.add(row)
            return True
        return self.db.write(tx)

    def expired(self, limit: int = 500) -> list[str]:
        """Non-terminal runs whose lease ran out: their driver is gone."""
        def tx(session: Session) -> list[str]:
            query = (select(RunRow.id).where(col(RunRow.lease_expires_at) < self.clock(),
                                             col(RunRow.state).not_in(_TERMINAL))
                     .order_by(col(RunRow.lease_expires_at)).limit(limit))
            return list(session.exec(query))
        return self.db.read(tx)

    # -- workers ---------------------------------------------------------------------------
    def register_worker(self, worker_id: str, name: str, host: str, pid: int,
                        concurrency: int) -> None:
        def tx(session: Session) -> None:
            now = self.clock()
            session.merge(WorkerRow(id=worker_id, name=name, host=host, pid=pid, started_at=now,
                                    heartbeat_at=now, concurrency=concurrency))
        self.db.write(tx)

    def worker_heartbeat(self, worker_id: str, *, stopped: bool = False) -> None:
        def tx(session: Session) -> None:
            row = session.get(WorkerRow, worker_id)
            if row is not None:
                row.heartbeat_at = self.clock()
                if stopped:
                    row.stopped_at = row.heartbeat_at
                session.add(row)
        self.db.write(tx)

    def workers(self, *, include_stopped: bool = False) -> list[model.Worker]:
        def tx(session: Session) -> list[model.Worker]:
            query = select(WorkerRow)
            if not include_stopped:
                query = query.where(col(WorkerRow.stopped_at).is_(None))
            return [rows.worker(w) for w in session.exec(query.order_by(col(WorkerRow.started_at)))]
        return self.db.read(tx)


_RUNNABLE = [str(s) for s in states.RUNNABLE]
_TERMINAL = [str(s) for s in states.TERMINAL]


def _take(session: Session, row: RunRow, owner: str, expires: datetime) -> model.Lease:
    row.lease_owner, row.lease_expires_at = owner, expires
    row.lease_fence += 1
    session.add(row)
    return model.Lease(owner=owner, fence=row.lease_fence)
