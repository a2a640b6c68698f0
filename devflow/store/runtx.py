"""RunTx: one transaction on one locked run, the only way a run's state changes.

Opened by ``Runs.change`` (which locks the run row and checks the lease), a RunTx
offers the verbs that change a run, its phases, approvals, artifacts and
invocations. Every state move is checked against ``devflow.states`` and appends its
event in the same transaction; event numbers come from the locked run row, so they
are gapless per run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields, replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from devflow import model, states, webhooks
from devflow.definitions import PhaseDef
from devflow.errors import Code, DevflowError
from devflow.states import ApprovalState, PhaseState, RunState
from devflow.store import leases, records, rows
from devflow.store.records import (
    APPROVAL,
    DECISION,
    INVOCATION,
    PHASE,
    Record,
)
from devflow.store.tables import WEBHOOK_OUTBOX

Redactor = Callable[[Mapping[str, Any]], dict[str, Any]]


class RunTx:
    def __init__(self, conn: sa.Connection, run: Record, now: datetime,
                 redact: Redactor | None = None, phase: Record | None = None,
                 decision_id: int | None = None) -> None:
        self.conn = conn
        #: the last writes go as one statement where the database allows it
        self._together = self.conn.dialect.name == "postgresql"
        self._row = run
        self.now = now
        self._redact = redact
        self._phases: dict[str, Record] | None = None
        self._some_phases: dict[str, Record] = {phase.key: phase} if phase else {}
        #: other rows read or written in this transaction, by (table, id): changes to
        #: them are written before the next query and at the end
        self._held: dict[tuple[str, int], Record] = {}
        self.events: list[model.Event] = []
        # New events are numbered at once but written together by ``finish`` (one batched
        # insert and one update of the run's counter, not one of each per event).
        self._seq = run.last_seq
        self._new_events: dict[str, dict[str, Any]] = {}
        #: rows to insert that nothing reads back, written with the changed rows
        self._inserts: list[tuple[sa.Table, dict[str, Any]]] = []
        #: decision tokens looked up in the run and not found
        self._unused_tokens: set[str] = set()
        #: the id a decision added here takes, when the lock read one
        self._decision_id = decision_id
        #: invocations this transaction closed while their process may still run
        self.closed: list[model.Invocation] = []
        #: the terminal state this transaction moved the run to: its report is written
        #: once the transaction committed (``Context.change``)
        self.ended: RunState | None = None

    # -- the run ---------------------------------------------------------------------------
    @property
    def run(self) -> model.Run:
        run = rows.run(self._row)
        return run if run.last_seq == self._seq else replace(run, last_seq=self._seq)

    def finish(self) -> None:
        """Write what this transaction changed; ``Runs.change`` calls it last."""
        if self._new_events:
            self._row.set({"last_seq": self._seq})
        if self._together:
            records.write_together(
                self.conn, [self._row, *(self._phases or self._some_phases).values(),
                            *self._held.values()], self._inserts,
                list(self._new_events.values()))
            self._new_events, self._inserts = {}, []
            return
        self._flush()
        if self._new_events:
            self.conn.execute(records.INSERT_EVENTS, list(self._new_events.values()))
            self._new_events = {}

    def _flush(self) -> None:
        """Write the changed rows, so that a query sees them."""
        self._row.write(self.conn)
        for phase in (self._phases or self._some_phases).values():
            phase.write(self.conn)
        for held in self._held.values():
            held.write(self.conn)
        for table, values in self._inserts:
            self.conn.execute(records.plain_insert(table), values)
        self._inserts = []

    @property
    def state(self) -> RunState:
        return RunState(self._row.state)

    def move_run(self, to: RunState, event: model.NewEvent | None = None, *,
                 failure: tuple[str, str] | None = None) -> model.Run:
        current = RunState(self._row.state)
        states.check_run_move(current, to)
        fields: dict[str, Any] = {"state": str(to), "updated_at": self.now}
        if to is RunState.PAUSED:
            fields["paused_from"] = str(current)
        elif current is RunState.PAUSED:
            fields["paused_from"] = None
        if to in states.TERMINAL:
            fields.update(ended_at=self.now, lease_owner=None, lease_expires_at=None)
            self.ended = to
        if failure:
            fields["failure_code"], fields["failure_reason"] = failure
        self._row.set(fields)
        if event is not None:
            self.event(event)
        return self.run

    def settle(self, to: RunState, event: model.NewEvent | None = None) -> model.Run:
        """Move the run to ``to``; a paused run instead remembers ``to`` as where resume goes."""
        if RunState(self._row.state) is RunState.PAUSED:
            self._row.set({"paused_from": str(to)})
            if event is not None:
                self.event(event)
            return self.run
        if RunState(self._row.state) is to:
            if event is not None:
                self.event(event)
            return self.run
        return self.move_run(to, event)

    def set_run(self, **fields: Any) -> model.Run:
        """Change fields of the run that are not its state (usage totals, lease, report)."""
        if "state" in fields:
            raise ValueError("a run's state changes through move_run only")
        self._row.set({**fields, "updated_at": self.now})
        return self.run

    def check_lease(self, lease: model.Lease) -> None:
        row = self._row
        leases.check(lease, row.id, row.lease_owner, row.lease_fence, row.lease_expires_at,
                     self.now)

    def redact_list(self, values: list[str]) -> list[str]:
        """``values`` with secrets replaced, for what is stored beside events (argv)."""
        if self._redact is None:
            return values
        return list(self._redact({"v": values})["v"])

    # -- events ----------------------------------------------------------------------------
    def event(self, new: model.NewEvent, *, unseen: bool = False) -> model.Event:
        """Append an event; with a key that is already recorded, return that event instead.

        ``unseen``: the caller knows the key was never used (what it records happens once,
        under this lock), so it is not looked up; the unique index still refuses a second.
        """
        if new.key is not None and (pending := self._new_events.get(new.key)) is not None:
            return _event(pending)
        if new.key is not None and not unseen:
            existing = self.conn.execute(records.EVENT_BY_KEY, {"key": new.key}).first()
            if existing is not None:
                if existing.run_id != self._row.id:
                    raise DevflowError(Code.INTERNAL, f"idempotency key {new.key!r} belongs to "
                                       f"run {existing.run_id}, not {self._row.id}",
                                       hint="idempotency keys start with their run's id")
                return _event(existing._mapping)
        payload = dict(new.payload)
        if self._redact is not None:
            payload = self._redact(payload)
        self._seq += 1
        key = new.key or f"{self._row.id}:{self._seq}"
        row = {"run_id": self._row.id, "seq": self._seq, "type": new.type, "phase": new.phase,
               "payload": payload, "ts": self.now, "idem_key": key}
        self._new_events[key] = row
        if new.type in webhooks.EVENTS:  # the outbox row commits with its event
            self._inserts.append((WEBHOOK_OUTBOX, {
                "run_id": self._row.id, "seq": self._seq, "type": new.type,
                "phase": new.phase, "payload": payload, "ts": self.now, "fanned": False}))
        appended = _event(row)
        self.events.append(appended)
        return appended

    # -- phases ----------------------------------------------------------------------------
    def _phase_rows(self) -> dict[str, Record]:
        if self._phases is None:
            found = self.conn.execute(records.RUN_PHASES, {"run_id": self._row.id})
            # a phase already held (and maybe changed) in this transaction stays the one
            self._phases = {r.key: self._some_phases.get(r.key) or Record(PHASE, r._mapping)
                            for r in found}
        return self._phases

    def phases(self) -> list[model.Phase]:
        return [rows.phase(p) for p in self._phase_rows().values()]

    def phase(self, key: str) -> model.Phase:
        return rows.phase(self._phase_row(key))

    def _phase_row(self, key: str) -> Record:
        if self._phases is not None:
            row = self._phases.get(key)
        elif (row := self._some_phases.get(key)) is None:
            # one row by its unique key, without loading the run's other phases
            found = self.conn.execute(records.RUN_PHASE, {"run_id": self._row.id,
                                                          "key": key}).first()
            if found is not None:
                row = self._some_phases[key] = Record(PHASE, found._mapping)
        if row is None:
            raise DevflowError(Code.INVALID_INPUT, f"run {self._row.id} has no phase {key!r}",
                               hint=f"devflow run status {self._row.id}")
        return row

    def add_phases(self, defs: Sequence[PhaseDef], origin: str) -> list[model.Phase]:
        existing = self._phase_rows()
        position = max((p.position for p in existing.values()), default=0)
        values: list[dict[str, Any]] = []
        for d in defs:
            if d.key in existing or any(v["key"] == d.key for v in values):
                raise DevflowError(Code.DUPLICATE_PHASE, f"run {self._row.id} already has a "
                                   f"phase {d.key!r}", hint="phase keys must be unique in a run")
            position += 1
            values.append({"run_id": self._row.id, "position": position, "key": d.key,
                           "origin": origin, "definition": d.to_json(),
                           "state": str(PhaseState.PENDING)})
        if not values:
            return []
        added = [Record(PHASE, r._mapping)
                 for r in self.conn.execute(records.INSERT_PHASES, values)]
        existing.update((r.key, r) for r in added)
        return [rows.phase(r) for r in added]

    def move_phase(self, key: str, to: PhaseState, event: model.NewEvent | None = None,
                   **fields: Any) -> model.Phase:
        if RunState(self._row.state) in states.TERMINAL:
            raise DevflowError(Code.ILLEGAL_TRANSITION,
                               f"run {self._row.id} is {self._row.state}: its phases never "
                               f"change again", hint="a terminal run is final")
        row = self._phase_row(key)
        states.check_phase_move(PhaseState(row.state), to)
        moved: dict[str, Any] = {"state": str(to)}
        if to is PhaseState.RUNNING and row.started_at is None:
            moved["started_at"] = self.now
        if to in states.PHASE_FINAL:
            moved["ended_at"] = self.now
        row.set({**moved, **fields})
        if event is not None:
            self.event(event)
        return rows.phase(row)

    def set_phase(self, key: str, **fields: Any) -> model.Phase:
        if "state" in fields:
            raise ValueError("a phase's state changes through move_phase only")
        row = self._phase_row(key)
        row.set(fields)
        return rows.phase(row)

    # -- rows of the other tables ----------------------------------------------------------
    def _insert(self, table: sa.Table, **values: Any) -> Record:
        return self._hold(table, self.conn.execute(records.insert_returning(table),
                                                    values).one()._mapping)

    def _get(self, table: sa.Table, row_id: int) -> Record | None:
        held = self._held.get((table.name, row_id))
        if held is None:
            found = self.conn.execute(records.by_id(table), {"id": row_id}).first()
            if found is not None:
                held = self._hold(table, found._mapping)
        return held

    def _query(self, table: sa.Table, query: sa.Select[Any]) -> list[Record]:
        """The rows ``query`` finds, as the ones held where this transaction holds them."""
        self._flush()
        return [self._hold(table, r._mapping) for r in self.conn.execute(query)]

    # -- artifacts and invocations ---------------------------------------------------------
    def add_artifact(self, record: model.ArtifactRecord) -> None:
        self._inserts.append((records.ARTIFACT, {
            "run_id": record.run_id, "phase_key": record.phase_key, "attempt": record.attempt,
            "path": record.path, "schema_id": record.schema_id, "sha256": record.sha256,
            "size": record.size, "stored_path": record.stored_path,
            "created_at": record.created_at}))

    def start_invocation(self, **fields: Any) -> model.Invocation:
        return rows.invocation(self._insert(INVOCATION, run_id=self._row.id,
                                            started_at=self.now, **fields))

    def update_invocation(self, invocation: model.Invocation, **fields: Any) -> model.Invocation:
        """Change an invocation of this run.

        One this transaction has not read is taken as the caller holds it (a transaction
        of this run returned it) instead of being read again: only the changed columns
        are written, with this transaction's other writes.
        """
        if invocation.run_id != self._row.id:
            raise DevflowError(Code.INTERNAL, f"invocation {invocation.id} is not of run "
                               f"{self._row.id}", hint="this is a bug in devflow")
        row = self._held.get((INVOCATION.name, invocation.id))
        if row is None:
            row = self._hold(INVOCATION, {**{f: getattr(invocation, f) for f in _INVOCATION},
                                          "argv": list(invocation.argv)})
        row.set(fields)
        return rows.invocation(row)

    def close_invocations(self, outcome: str, reason: str) -> list[model.Invocation]:
        """Close the run's unfinished invocations; their processes are the caller's to stop."""
        closed = [self.update_invocation(inv, ended_at=self.now, outcome=outcome,
                                         reason=reason) for inv in self.open_invocations()]
        self.closed += closed
        return closed

    def open_invocations(self) -> list[model.Invocation]:
        found = self._query(INVOCATION, sa.select(INVOCATION).where(
            INVOCATION.c.run_id == self._row.id, INVOCATION.c.ended_at.is_(None))
            .order_by(INVOCATION.c.id))
        return [rows.invocation(r) for r in found]

    # -- approvals -------------------------------------------------------------------------
    def open_approval(self, **fields: Any) -> model.Approval:
        return rows.approval(self._insert(APPROVAL, run_id=self._row.id,
                                          state=str(ApprovalState.PENDING),
                                          opened_at=self.now, **fields))

    def approvals(self, *, pending: bool = False) -> list[model.Approval]:
        query = sa.select(APPROVAL).where(APPROVAL.c.run_id == self._row.id)
        if pending:
            query = query.where(APPROVAL.c.state == str(ApprovalState.PENDING))
        return [rows.approval(r) for r in self._query(APPROVAL, query.order_by(APPROVAL.c.id))]

    def _approval_row(self, approval_id: int) -> Record:
        row = self._get(APPROVAL, approval_id)
        if row is None or row.run_id != self._row.id:
            raise DevflowError(Code.APPROVAL_NOT_FOUND, f"no approval request {approval_id} on "
                               f"run {self._row.id}", hint=f"devflow approvals list --run "
                               f"{self._row.id}")
        return row

    def approval(self, approval_id: int) -> model.Approval:
        return rows.approval(self._approval_row(approval_id))

    def resolve_approval(self, approval_id: int, to: ApprovalState, *, by: str,
                         resolution: str) -> model.Approval:
        row = self._approval_row(approval_id)
        states.check_approval_move(ApprovalState(row.state), to)
        row.set({"state": str(to), "resolved_at": self.now, "resolved_by": by,
                 "resolution": resolution})
        return rows.approval(row)

    def set_approval(self, approval_id: int, **fields: Any) -> model.Approval:
        if "state" in fields:
            raise ValueError("an approval's state changes through resolve_approval only")
        row = self._approval_row(approval_id)
        row.set(fields)
        return rows.approval(row)

    def decision_by_token(self, approval_id: int, token: str) -> model.Decision | None:
        if token in self._unused_tokens:  # looked up in the whole run already
            self._approval_row(approval_id)  # (which holds this request)
            return None
        found = self._query(DECISION, sa.select(DECISION).where(
            DECISION.c.approval_id == approval_id, DECISION.c.client_token == token))
        return rows.decision(found[0]) if found else None

    def gate(self, token: str) -> tuple[list[model.Approval], model.Decision | None]:
        """The run's pending requests and the decision ``token`` made in the run, if any.

        One query; the requests and the decision are held like rows read one by one.
        """
        self._flush()
        pending, decided = [], None
        for r in self.conn.execute(records.GATE, {"run_id": self._row.id, "token": token}):
            approval = self._hold(APPROVAL, records.columns(APPROVAL, r._mapping))
            if r.d_id is not None and decided is None:  # the first, as deciding()
                decided = self._hold(DECISION, records.columns(DECISION, r._mapping, "d_"))
            if approval.state == str(ApprovalState.PENDING):
                pending.append(rows.approval(approval))
        if decided is None:
            self._unused_tokens.add(token)
        return pending, rows.decision(decided) if decided else None

    def _hold(self, table: sa.Table, values: Mapping[Any, Any], *, new: bool = False) -> Record:
        row = self._held.get((table.name, values["id"]))
        if row is None:
            row = self._held[(table.name, values["id"])] = Record(table, values, new=new)
        return row

    def add_decision(self, **fields: Any) -> model.Decision:
        self._unused_tokens.discard(fields["client_token"])
        decision_id, self._decision_id = self._decision_id, None
        if decision_id is None:
            return rows.decision(self._insert(DECISION, created_at=self.now, **fields))
        # its id known, it is inserted whole with the other writes, as the transaction
        # leaves it (its outcome is set later)
        return rows.decision(self._hold(DECISION, {
            **dict.fromkeys(DECISION.c.keys()), "sections": {}, "evidence": {}, "outcome": {},
            "id": decision_id, "created_at": self.now, **fields}, new=True))

    def decision_outcome(self, decision_id: int) -> dict[str, Any]:
        row = self._get(DECISION, decision_id)
        return dict(row.outcome) if row else {}

    def set_decision_outcome(self, decision_id: int, outcome: Mapping[str, Any]) -> None:
        row = self._get(DECISION, decision_id)
        if row is not None:
            row.set({"outcome": dict(outcome)})


_INVOCATION = tuple(f.name for f in fields(model.Invocation))


def _event(row: Mapping[Any, Any]) -> model.Event:
    return model.Event(run_id=row["run_id"], seq=row["seq"], type=row["type"],
                       phase=row["phase"], payload=row["payload"], ts=row["ts"])
