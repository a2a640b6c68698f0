"""Leases and workers: who drives a run right now, until when, under which fencing number.

A lease is taken only on a runnable run that nobody holds; every take grows the
fencing number. Whether a driver still holds its lease is ``check``'s to say, here
only: a renewal and every transaction a driver opens (``RunTx.check_lease``) ask it.
A lease that expired is not taken over here: the sweep first records the interrupted
attempt and kills what the dead driver left running.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from devflow import model, states
from devflow.errors import LeaseLost
from devflow.store import statements
from devflow.store.database import Database
from devflow.store.rows import RUNS, WORKERS
from devflow.store.statements import RUN
from devflow.store.tables import WORKER


@dataclass(frozen=True, slots=True)
class Claimed:
    run_id: str
    lease: model.Lease


class Leases:
    def __init__(self, db: Database, clock: Callable[[], datetime]) -> None:
        self.db = db
        self.clock = clock
        self._lock_query = db.lock_run_query(statements.by_id(RUN))

    def _locked(self, conn: sa.Connection, run_id: str) -> model.Run | None:
        row = conn.execute(self._lock_query, {"id": run_id}).first()
        return RUNS.load(row._mapping) if row is not None else None

    def claim(self, run_id: str, owner: str, seconds: float) -> model.Lease | None:
        """Take the lease of one run if it is runnable and free; None otherwise."""
        def tx(conn: sa.Connection) -> model.Lease | None:
            row = self._locked(conn, run_id)
            if row is None or row.state not in _RUNNABLE or row.lease_owner is not None:
                return None
            return _take(conn, row, owner, self.clock() + timedelta(seconds=seconds))
        return self.db.write(tx)

    def claim_next(self, owner: str, seconds: float, limit: int,
                   exclude: frozenset[str] = frozenset()) -> list[Claimed]:
        """Take up to ``limit`` free runnable runs, oldest first, skipping locked ones."""
        def tx(conn: sa.Connection) -> list[Claimed]:
            query = (sa.select(RUN).where(RUN.c.state.in_(_RUNNABLE), RUN.c.lease_owner.is_(None))
                     .order_by(RUN.c.updated_at).limit(limit + len(exclude)))
            if not self.db.is_sqlite:
                query = query.with_for_update(skip_locked=True)
            expires = self.clock() + timedelta(seconds=seconds)
            claimed: list[Claimed] = []
            for found in conn.execute(query).all():
                if found.id in exclude or len(claimed) >= limit:
                    continue
                claimed.append(Claimed(found.id, _take(conn, RUNS.load(found._mapping),
                                                       owner, expires)))
            return claimed
        return self.db.write(tx)

    def renew(self, run_id: str, lease: model.Lease, seconds: float) -> model.Run:
        """Extend a held lease; LeaseLost when it is no longer ours."""
        def tx(conn: sa.Connection) -> model.Run:
            row = self._locked(conn, run_id)
            if row is None:
                raise LeaseLost(run_id)
            now = self.clock()
            check(lease, run_id, row.lease_owner, row.lease_fence, row.lease_expires_at, now)
            return _update(conn, row, lease_expires_at=now + timedelta(seconds=seconds))
        return self.db.write(tx)

    def release(self, run_id: str, lease: model.Lease) -> bool:
        def tx(conn: sa.Connection) -> bool:
            row = self._locked(conn, run_id)
            if row is None or row.lease_owner != lease.owner or row.lease_fence != lease.fence:
                return False
            _update(conn, row, lease_owner=None, lease_expires_at=None)
            return True
        return self.db.write(tx)

    def expired(self, limit: int = 500) -> list[str]:
        """Non-terminal runs whose lease ran out: their driver is gone."""
        def tx(conn: sa.Connection) -> list[str]:
            query = (sa.select(RUN.c.id).where(RUN.c.lease_expires_at < self.clock(),
                                               RUN.c.state.not_in(_TERMINAL))
                     .order_by(RUN.c.lease_expires_at).limit(limit))
            return list(conn.execute(query).scalars())
        return self.db.read(tx)

    # -- workers ---------------------------------------------------------------------------
    def register_worker(self, worker_id: str, name: str, host: str, pid: int,
                        concurrency: int) -> None:
        def tx(conn: sa.Connection) -> None:
            now = self.clock()
            values = {"name": name, "host": host, "pid": pid, "started_at": now,
                      "heartbeat_at": now, "stopped_at": None, "concurrency": concurrency}
            updated = conn.execute(sa.update(WORKER).where(WORKER.c.id == worker_id)
                                   .values(values))
            if updated.rowcount == 0:
                conn.execute(sa.insert(WORKER).values(id=worker_id, **values))
        self.db.write(tx)

    def worker_heartbeat(self, worker_id: str, *, stopped: bool = False) -> None:
        def tx(conn: sa.Connection) -> None:
            now = self.clock()
            values = {"heartbeat_at": now, **({"stopped_at": now} if stopped else {})}
            conn.execute(sa.update(WORKER).where(WORKER.c.id == worker_id).values(values))
        self.db.write(tx)

    def workers(self, *, include_stopped: bool = False) -> list[model.Worker]:
        query = sa.select(WORKER)
        if not include_stopped:
            query = query.where(WORKER.c.stopped_at.is_(None))
        query = query.order_by(WORKER.c.started_at)
        return self.db.read(lambda conn: [WORKERS.load(w._mapping) for w in conn.execute(query)])


def check(lease: model.Lease, run_id: str, owner: str | None, fence: int,
          expires: datetime | None, now: datetime) -> None:
    """LeaseLost unless ``lease`` is the run's (its owner and fencing number, as read under
    the run's lock) and has not run out at ``now``."""
    if owner != lease.owner or fence != lease.fence or expires is None or expires <= now:
        raise LeaseLost(run_id)


_RUNNABLE = [str(s) for s in states.RUNNABLE]
_TERMINAL = [str(s) for s in states.TERMINAL]


def _take(conn: sa.Connection, run: model.Run, owner: str, expires: datetime) -> model.Lease:
    fence = run.lease_fence + 1
    _update(conn, run, lease_owner=owner, lease_expires_at=expires, lease_fence=fence)
    return model.Lease(owner=owner, fence=fence)


def _update(conn: sa.Connection, run: model.Run, **fields: Any) -> model.Run:
    """``run`` with ``fields`` changed, written with one UPDATE."""
    statements.update(conn, RUN, run.id, RUNS.columns(**fields))
    return RUNS.replace(run, **fields)
