"""The verbs on triggers: evaluate one under its lock, claim a tick with its run, read them.

Evaluating a trigger is one write transaction that locks its ``trigger_state`` row
(PostgreSQL: ``FOR UPDATE``; SQLite: the immediate transaction), reads its open ticks
and active runs, asks the caller's ``decide`` (``devflow.ticks.plan``) what becomes of
them, and writes that: so two workers or sweeps never decide a tick twice, and the
unique ``(trigger, scheduled_at)`` stands behind the lock. A tick to start is left
``pending`` with a claim; the run that starts it flips it to ``started`` in the very
transaction that inserts the run (``claim_in``), or not at all, so a tick has at most
one run whoever starts it. A starter that fails hands the tick back (``release``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import sqlalchemy as sa

from devflow import states, ticks
from devflow.errors import Code, DevflowError
from devflow.requests import TickClaim
from devflow.store.database import Database
from devflow.store.rows import Mapper
from devflow.store.tables import RUN, TRIGGER_EVENT, TRIGGER_STATE, TRIGGER_TICK

TRIGGER_STATES: Final = Mapper(ticks.TriggerState, TRIGGER_STATE,
                               unread=frozenset({"created_at", "updated_at"}))
TICKS: Final = Mapper(ticks.Tick, TRIGGER_TICK, unread=frozenset({"id"}))
TRIGGER_EVENTS: Final = Mapper(ticks.TriggerEvent, TRIGGER_EVENT)
Clock = Callable[[], datetime]
Decide = Callable[[ticks.TriggerState, list[ticks.Tick], list[str]], ticks.Plan]
_TERMINAL = sorted(str(s) for s in states.TERMINAL)


@dataclass(frozen=True, slots=True)
class Overview:
    state: ticks.TriggerState | None
    open_ticks: list[ticks.Tick]


class Triggers:
    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock

    # -- evaluating ------------------------------------------------------------------------
    def overview(self, names: Sequence[str]) -> dict[str, Overview]:
        """Each trigger's state and open ticks, in one read (to see what is worth a lock)."""
        def tx(conn: sa.Connection) -> dict[str, Overview]:
            found = {r.name: TRIGGER_STATES.load(r._mapping) for r in conn.execute(
                sa.select(TRIGGER_STATE).where(TRIGGER_STATE.c.name.in_(names)))}
            open_ticks: dict[str, list[ticks.Tick]] = {}
            for row in conn.execute(sa.select(TRIGGER_TICK).where(
                    TRIGGER_TICK.c.trigger.in_(names), TRIGGER_TICK.c.state.in_(ticks.OPEN))
                    .order_by(TRIGGER_TICK.c.scheduled_at)):
                open_ticks.setdefault(row.trigger, []).append(TICKS.load(row._mapping))
            return {n: Overview(found.get(n), open_ticks.get(n, [])) for n in names}
        return self.db.read(tx)

    def evaluate(self, name: str, decide: Decide,
                 claim_seconds: float) -> tuple[ticks.Plan, list[ticks.Tick]]:
        """Decide the trigger's ticks under its lock: the plan, and the ticks the caller
        must start now (pending, claimed by it for ``claim_seconds``)."""
        def tx(conn: sa.Connection) -> tuple[ticks.Plan, list[ticks.Tick]]:
            now = self.clock()
            state = self._locked_state(conn, name, now)
            open_ticks = _ticks(conn, sa.select(TRIGGER_TICK).where(
                TRIGGER_TICK.c.trigger == name, TRIGGER_TICK.c.state.in_(ticks.OPEN))
                .order_by(TRIGGER_TICK.c.scheduled_at))
            plan = decide(state, open_ticks, _active_runs(conn, name))
            claim = now + timedelta(seconds=claim_seconds)
            for decided in plan.decided:
                _apply(conn, self._insert_tick(), name, decided, now, claim)
            if plan.checked_until != state.checked_until:
                conn.execute(sa.update(TRIGGER_STATE).where(TRIGGER_STATE.c.name == name)
                             .values(checked_until=plan.checked_until, updated_at=now))
            if not plan.to_start:
                return plan, []
            return plan, _ticks(conn, sa.select(TRIGGER_TICK).where(
                TRIGGER_TICK.c.trigger == name,
                TRIGGER_TICK.c.scheduled_at.in_(plan.to_start))
                .order_by(TRIGGER_TICK.c.scheduled_at))
        return self.db.write(tx)

    def fire(self, name: str, actor: str, claim_seconds: float) -> ticks.Tick:
        """A tick of the trigger now, by hand: pending, claimed by the caller."""
        def tx(conn: sa.Connection) -> ticks.Tick:
            now = self.clock()
            self._locked_state(conn, name, now)
            made = conn.execute(self._insert_tick().values(
                trigger=name, scheduled_at=now, kind="fire", state=ticks.PENDING,
                fired_by=actor, claimed_until=now + timedelta(seconds=claim_seconds),
                created_at=now, updated_at=now)).first()
            if made is None:
                raise DevflowError(Code.TICK_TAKEN, f"trigger {name} has a tick at "
                                   f"{now.isoformat()} already", hint="fire it again")
            _event(conn, name, "tick.fired", now, now, payload={"by": actor})
            return TICKS.load(conn.execute(sa.select(TRIGGER_TICK).where(
                TRIGGER_TICK.c.trigger == name,
                TRIGGER_TICK.c.scheduled_at == now)).one()._mapping)
        return self.db.write(tx)

    def _insert_tick(self) -> Any:
        """An insert of a tick that does nothing when the tick exists (a fire at the very
        time of a scheduled tick): the tick is decided once."""
        insert = self.db.insert(TRIGGER_TICK)
        # RETURNING says whether a row was made (rowcount does not, on every driver)
        return insert.on_conflict_do_nothing(
            index_elements=["trigger", "scheduled_at"]).returning(TRIGGER_TICK.c.id)

    def _locked_state(self, conn: sa.Connection, name: str, now: datetime) -> ticks.TriggerState:
        return lock_trigger(self.db, conn, name, now)

    def release(self, claim: TickClaim, error: DevflowError, *, give_up: bool) -> None:
        """A start that failed: the tick is ``failed`` (``give_up``), or left pending for
        the next evaluation to try again (its claim lifted, the reason kept)."""
        def tx(conn: sa.Connection) -> None:
            now = self.clock()
            where = (TRIGGER_TICK.c.trigger == claim.trigger,
                     TRIGGER_TICK.c.scheduled_at == claim.scheduled_at,
                     TRIGGER_TICK.c.state == ticks.PENDING)
            row = conn.execute(sa.select(TRIGGER_TICK).where(*where)).first()
            if row is None:
                return  # started after all (the run failed later), or decided by another
            reason = f"{error.code}: {error.message}"
            conn.execute(sa.update(TRIGGER_TICK).where(*where).values(
                state=ticks.FAILED if give_up else ticks.PENDING, claimed_until=None,
                reason=reason, updated_at=now))
            if give_up or row.reason != reason:
                _event(conn, claim.trigger, "tick.failed" if give_up else "tick.deferred",
                       claim.scheduled_at, now, payload={"code": str(error.code),
                                                         "message": error.message})
        self.db.write(tx)

    # -- pausing ---------------------------------------------------------------------------
    def set_paused(self, name: str, paused: bool, actor: str,
                   reason: str | None) -> tuple[ticks.TriggerState, bool]:
        """Pause or resume; (the state, whether it changed). Resumed, the trigger counts its
        ticks from now: those of the pause are not missed, they were not wanted."""
        def tx(conn: sa.Connection) -> tuple[ticks.TriggerState, bool]:
            now = self.clock()
            state = self._locked_state(conn, name, now)
            if state.paused == paused:
                return state, False
            values: dict[str, Any] = {"paused": paused, "updated_at": now}
            if paused:
                values.update(paused_by=actor, paused_at=now, reason=reason)
            else:
                values.update(paused_by=None, paused_at=None, reason=None, checked_until=now)
            conn.execute(sa.update(TRIGGER_STATE).where(TRIGGER_STATE.c.name == name)
                         .values(**values))
            _event(conn, name, "trigger.paused" if paused else "trigger.resumed", None, now,
                   payload={"by": actor, **({"reason": reason} if reason else {})})
            return TRIGGER_STATES.load(conn.execute(sa.select(TRIGGER_STATE).where(
                TRIGGER_STATE.c.name == name)).one()._mapping), True
        return self.db.write(tx)

    # -- reading ---------------------------------------------------------------------------
    def states(self) -> dict[str, ticks.TriggerState]:
        return self.db.read(lambda conn: {r.name: TRIGGER_STATES.load(r._mapping)
                                          for r in conn.execute(sa.select(TRIGGER_STATE))})

    def recent_ticks(self, name: str, *, limit: int = 50,
              states_in: Sequence[str] | None = None) -> list[ticks.Tick]:
        """The trigger's ticks, newest first."""
        query = sa.select(TRIGGER_TICK).where(TRIGGER_TICK.c.trigger == name)
        if states_in:
            query = query.where(TRIGGER_TICK.c.state.in_(states_in))
        query = query.order_by(TRIGGER_TICK.c.scheduled_at.desc()).limit(limit)
        return self.db.read(lambda conn: _ticks(conn, query))

    def counts(self, name: str) -> dict[str, int]:
        query = (sa.select(TRIGGER_TICK.c.state, sa.func.count()).where(
            TRIGGER_TICK.c.trigger == name).group_by(TRIGGER_TICK.c.state))
        return self.db.read(lambda conn: {s: int(n) for s, n in conn.execute(query)})

    def events(self, name: str, *, limit: int = 50) -> list[ticks.TriggerEvent]:
        """The trigger's last events, oldest first."""
        query = (sa.select(TRIGGER_EVENT).where(TRIGGER_EVENT.c.trigger == name)
                 .order_by(TRIGGER_EVENT.c.id.desc()).limit(limit))
        return self.db.read(lambda conn: [TRIGGER_EVENTS.load(r._mapping)
                                          for r in reversed(conn.execute(query).all())])


def lock_trigger(db: Database, conn: sa.Connection, name: str,
                 now: datetime) -> ticks.TriggerState:
    """The trigger's state row, locked; made when the trigger is first seen (its ticks
    count from then: nothing before a trigger existed is missed)."""
    insert = db.insert(TRIGGER_STATE)
    conn.execute(insert.values(name=name, paused=False, checked_until=now, created_at=now,
                               updated_at=now).on_conflict_do_nothing())
    query = sa.select(TRIGGER_STATE).where(TRIGGER_STATE.c.name == name)
    return TRIGGER_STATES.load(conn.execute(db.lock_run_query(query)).one()._mapping)


def claim_in(conn: sa.Connection, claim: TickClaim, run_id: str,
                 now: datetime) -> None:
        """In the transaction that inserts run ``run_id``: the tick is started by it, or
        ``tick_taken`` (and the run is not inserted) when it is no longer pending."""
        done = conn.execute(sa.update(TRIGGER_TICK).where(
            TRIGGER_TICK.c.trigger == claim.trigger,
            TRIGGER_TICK.c.scheduled_at == claim.scheduled_at,
            TRIGGER_TICK.c.state == ticks.PENDING).values(
            state=ticks.STARTED, run_id=run_id, claimed_until=None, updated_at=now))
        if done.rowcount != 1:
            raise DevflowError(Code.TICK_TAKEN, f"the tick of trigger {claim.trigger} at "
                               f"{claim.scheduled_at.isoformat()} is no longer pending",
                               hint=f"devflow triggers show {claim.trigger}")
        _event(conn, claim.trigger, "tick.started", claim.scheduled_at, now, run_id=run_id)


def _apply(conn: sa.Connection, insert: Any, name: str, decided: ticks.Decided,
           now: datetime, claim: datetime) -> None:
    claimed_until = claim if decided.state == ticks.PENDING else None
    if decided.new:
        made = conn.execute(insert.values(
            trigger=name, scheduled_at=decided.scheduled_at, kind="schedule",
            state=decided.state, reason=decided.reason, claimed_until=claimed_until,
            created_at=now, updated_at=now)).first()
        if made is None:
            return  # decided already (fired by hand at that very time)
    else:
        conn.execute(sa.update(TRIGGER_TICK).where(
            TRIGGER_TICK.c.trigger == name,
            TRIGGER_TICK.c.scheduled_at == decided.scheduled_at).values(
            state=decided.state, reason=decided.reason, claimed_until=claimed_until,
            updated_at=now))
    if decided.state != ticks.PENDING:
        _event(conn, name, f"tick.{decided.state}", decided.scheduled_at, now,
               payload={"reason": decided.reason} if decided.reason else {})


def _event(conn: sa.Connection, name: str, type_: str, scheduled_at: datetime | None,
           now: datetime, *, run_id: str | None = None,
           payload: dict[str, Any] | None = None) -> None:
    conn.execute(sa.insert(TRIGGER_EVENT).values(
        trigger=name, type=type_, scheduled_at=scheduled_at, run_id=run_id,
        payload=payload or {}, ts=now))


def _active_runs(conn: sa.Connection, name: str) -> list[str]:
    query = (sa.select(RUN.c.id).join(TRIGGER_TICK, TRIGGER_TICK.c.run_id == RUN.c.id)
             .where(TRIGGER_TICK.c.trigger == name, TRIGGER_TICK.c.state == ticks.STARTED,
                    RUN.c.state.not_in(_TERMINAL)))
    return [r.id for r in conn.execute(query)]


def _ticks(conn: sa.Connection, query: sa.Select[Any]) -> list[ticks.Tick]:
    return [TICKS.load(r._mapping) for r in conn.execute(query)]
