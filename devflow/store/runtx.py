"""RunTx: one transaction on one locked run, the only way a run's state changes.

Opened by ``Runs.change`` (which locks the run row and checks the lease), a RunTx
offers the verbs that change a run, its phases, approvals, artifacts and
invocations. Every state move is checked against ``devflow.states`` and appends its
event in the same transaction; event numbers come from the locked run row, so they
are gapless per run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import insert
from sqlmodel import Session, col, select

from devflow import model, states
from devflow.definitions import PhaseDef
from devflow.errors import Code, DevflowError, LeaseLost
from devflow.states import ApprovalState, PhaseState, RunState
from devflow.store import rows
from devflow.store.tables import (
    ApprovalRow,
    ArtifactRow,
    DecisionRow,
    EventRow,
    InvocationRow,
    PhaseRow,
    RunRow,
)

Redactor = Callable[[Mapping[str, Any]], dict[str, Any]]


class RunTx:
    def __init__(self, session: Session, row: RunRow, now: datetime,
                 redact: Redactor | None = None) -> None:
        self.session = session
        self._row = row
        self.now = now
        self._redact = redact
        self._phases: dict[str, PhaseRow] | None = None
        self._some_phases: dict[str, PhaseRow] = {}
        self.events: list[model.Event] = []
        # New events are numbered at once but written together by ``finish`` (one batched
        # insert and one update of the run's counter, not one of each per event).
        self._seq = row.last_seq
        self._new_events: dict[str, EventRow] = {}
        #: invocations this transaction closed while their process may still run
        self.closed: list[model.Invocation] = []

    # -- the run ---------------------------------------------------------------------------
    @property
    def run(self) -> model.Run:
        return self._view(self._row)

    def _view(self, row: RunRow) -> model.Run:
        run = rows.run(row)
        return run if run.last_seq == self._seq else replace(run, last_seq=self._seq)

    def finish(self) -> None:
        """Write the events appended in this transaction; ``Runs.change`` calls it last."""
        if self._new_events:
            self._row.last_seq = self._seq
            self.session.add(self._row)
            self.session.execute(insert(EventRow), [
                {"run_id": e.run_id, "seq": e.seq, "type": e.type, "phase": e.phase,
                 "payload": e.payload, "ts": e.ts, "idem_key": e.idem_key}
                for e in self._new_events.values()])
            self._new_events = {}

    @property
    def state(self) -> RunState:
        return RunState(self._row.state)

    def move_run(self, to: RunState, event: model.NewEvent | None = None, *,
                 failure: tuple[str, str] | None = None) -> model.Run:
        current = RunState(self._row.state)
        states.check_run_move(current, to)
        row = self._row
        if to is RunState.PAUSED:
            row.paused_from = str(current)
        elif current is RunState.PAUSED:
            row.paused_from = None
        row.state = str(to)
        row.updated_at = self.now
        if to in states.TERMINAL:
            row.ended_at = self.now
            row.lease_owner, row.lease_expires_at = None, None
        if failure:
            row.failure_code, row.failure_reason = failure
        self.session.add(row)
        if event is not None:
            self.event(event)
        return self._view(row)

    def settle(self, to: RunState, event: model.NewEvent | None = None) -> model.Run:
        """Move the run to ``to``; a paused run instead remembers ``to`` as where resume goes."""
        if RunState(self._row.state) is RunState.PAUSED:
            self._row.paused_from = str(to)
            self.session.add(self._row)
            if event is not None:
                self.event(event)
            return self._view(self._row)
        if RunState(self._row.state) is to:
            if event is not None:
                self.event(event)
            return self._view(self._row)
        return self.move_run(to, event)

    def set_run(self, **fields: Any) -> model.Run:
        """Change fields of the run that are not its state (usage totals, lease, report)."""
        if "state" in fields:
            raise ValueError("a run's state changes through move_run only")
        for name, value in fields.items():
            setattr(self._row, name, value)
        self._row.updated_at = self.now
        self.session.add(self._row)
        return self._view(self._row)

    def check_lease(self, lease: model.Lease) -> None:
        row = self._row
        if (row.lease_owner != lease.owner or row.lease_fence != lease.fence
                or row.lease_expires_at is None or row.lease_expires_at <= self.now):
            raise LeaseLost(row.id)

    def redact_list(self, values: list[str]) -> list[str]:
        """``values`` with secrets replaced, for what is stored beside events (argv)."""
        if self._redact is None:
            return values
        return list(self._redact({"v": values})["v"])

    # -- events ----------------------------------------------------------------------------
    def event(self, new: model.NewEvent) -> model.Event:
        """Append an event; with a key that is already recorded, return that event instead."""
        if new.key is not None:
            if (pending := self._new_events.get(new.key)) is not None:
                return rows.event(pending)
            existing = self.session.exec(
                select(EventRow).where(EventRow.idem_key == new.key)).first()
            if existing is not None:
                if existing.run_id != self._row.id:
                    raise DevflowError(Code.INTERNAL, f"idempotency key {new.key!r} belongs to "
                                       f"run {existing.run_id}, not {self._row.id}",
                                       hint="idempotency keys start with their run's id")
                return rows.event(existing)
        payload = dict(new.payload)
        if self._redact is not None:
            payload = self._redact(payload)
        self._seq += 1
        key = new.key or f"{self._row.id}:{self._seq}"
        row = EventRow(run_id=self._row.id, seq=self._seq, type=new.type, phase=new.phase,
                       payload=payload, ts=self.now, idem_key=key)
        self._new_events[key] = row
        appended = rows.event(row)
        self.events.append(appended)
        return appended

    # -- phases ----------------------------------------------------------------------------
    def _phase_rows(self) -> dict[str, PhaseRow]:
        if self._phases is None:
            found = self.session.exec(select(PhaseRow).where(PhaseRow.run_id == self._row.id)
                                      .order_by(col(PhaseRow.position))).all()
            # rows already read in this session are the same objects: identity map
            self._phases = {p.key: p for p in found}
        return self._phases

    def phases(self) -> list[model.Phase]:
        return [rows.phase(p) for p in self._phase_rows().values()]

    def phase(self, key: str) -> model.Phase:
        return rows.phase(self._phase_row(key))

    def _phase_row(self, key: str) -> PhaseRow:
        if self._phases is not None:
            row = self._phases.get(key)
        else:  # one row by its unique key, without loading the run's other phases
            row = self._some_phases.get(key) or self.session.exec(select(PhaseRow).where(
                PhaseRow.run_id == self._row.id, PhaseRow.key == key)).first()
            if row is not None:
                self._some_phases[key] = row
        if row is None:
            raise DevflowError(Code.INVALID_INPUT, f"run {self._row.id} has no phase {key!r}",
                               hint=f"devflow run status {self._row.id}")
        return row

    def add_phases(self, defs: Sequence[PhaseDef], origin: str) -> list[model.Phase]:
        existing = self._phase_rows()
        position = max((p.position for p in existing.values()), default=0)
        added = []
        for d in defs:
            if d.key in existing:
                raise DevflowError(Code.DUPLICATE_PHASE, f"run {self._row.id} already has a "
                                   f"phase {d.key!r}", hint="phase keys must be unique in a run")
            position += 1
            row = PhaseRow(run_id=self._row.id, position=position, key=d.key, origin=origin,
                           definition=d.to_json(), state=str(PhaseState.PENDING))
            self.session.add(row)
            existing[d.key] = row
            added.append(row)
        self.session.flush()
        return [rows.phase(r) for r in added]

    def move_phase(self, key: str, to: PhaseState, event: model.NewEvent | None = None,
                   **fields: Any) -> model.Phase:
        if RunState(self._row.state) in states.TERMINAL:
            raise DevflowError(Code.ILLEGAL_TRANSITION,
                               f"run {self._row.id} is {self._row.state}: its phases never "
                               f"change again", hint="a terminal run is final")
        row = self._phase_row(key)
        states.check_phase_move(PhaseState(row.state), to)
        row.state = str(to)
        if to is PhaseState.RUNNING and row.started_at is None:
            row.started_at = self.now
        if to in states.PHASE_FINAL:
            row.ended_at = self.now
        for name, value in fields.items():
            setattr(row, name, value)
        self.session.add(row)
        if event is not None:
            self.event(event)
        return rows.phase(row)

    def set_phase(self, key: str, **fields: Any) -> model.Phase:
        if "state" in fields:
            raise ValueError("a phase's state changes through move_phase only")
        row = self._phase_row(key)
        for name, value in fields.items():
            setattr(row, name, value)
        self.session.add(row)
        return rows.phase(row)

    # -- artifacts and invocations ---------------------------------------------------------
    def add_artifact(self, record: model.ArtifactRecord) -> None:
        self.session.add(ArtifactRow(
            run_id=record.run_id, phase_key=record.phase_key, attempt=record.attempt,
            path=record.path, schema_id=record.schema_id, sha256=record.sha256,
            size=record.size, stored_path=record.stored_path, created_at=record.created_at))

    def start_invocation(self, **fields: Any) -> model.Invocation:
        row = InvocationRow(run_id=self._row.id, started_at=self.now, **fields)
        self.session.add(row)
        self.session.flush()
        return rows.invocation(row)

    def update_invocation(self, invocation_id: int, **fields: Any) -> model.Invocation:
        row = self.session.get(InvocationRow, invocation_id)
        if row is None or row.run_id != self._row.id:
            raise DevflowError(Code.INTERNAL, f"invocation {invocation_id} is not of this run")
        for name, value in fields.items():
            setattr(row, name, value)
        self.session.add(row)
        return rows.invocation(row)

    def close_invocations(self, outcome: str, reason: str) -> list[model.Invocation]:
        """Close the run's unfinished invocations; their processes are the caller's to stop."""
        closed = [self.update_invocation(inv.id, ended_at=self.now, outcome=outcome,
                                         reason=reason) for inv in self.open_invocations()]
        self.closed += closed
        return closed

    def open_invocations(self) -> list[model.Invocation]:
        found = self.session.exec(select(InvocationRow).where(
            InvocationRow.run_id == self._row.id, col(InvocationRow.ended_at).is_(None))).all()
        return [rows.invocation(r) for r in found]

    # -- approvals -------------------------------------------------------------------------
    def open_approval(self, **fields: Any) -> model.Approval:
        row = ApprovalRow(run_id=self._row.id, state=str(ApprovalState.PENDING),
                          opened_at=self.now, **fields)
        self.session.add(row)
        self.session.flush()
        return rows.approval(row)

    def approvals(self, *, pending: bool = False) -> list[model.Approval]:
        query = select(ApprovalRow).where(ApprovalRow.run_id == self._row.id)
        if pending:
            query = query.where(ApprovalRow.state == str(ApprovalState.PENDING))
        return [rows.approval(r) for r in self.session.exec(query.order_by(col(ApprovalRow.id)))]

    def _approval_row(self, approval_id: int) -> ApprovalRow:
        row = self.session.get(ApprovalRow, approval_id)
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
        row.state, row.resolved_at = str(to), self.now
        row.resolved_by, row.resolution = by, resolution
        self.session.add(row)
        return rows.approval(row)

    def set_approval(self, approval_id: int, **fields: Any) -> model.Approval:
        if "state" in fields:
            raise ValueError("an approval's state changes through resolve_approval only")
        row = self._approval_row(approval_id)
        for name, value in fields.items():
            setattr(row, name, value)
        self.session.add(row)
        return rows.approval(row)

    def decision_by_token(self, approval_id: int, token: str) -> model.Decision | None:
        row = self.session.exec(select(DecisionRow).where(
            DecisionRow.approval_id == approval_id, DecisionRow.client_token == token)).first()
        return rows.decision(row) if row else None

    def decision_by_token_in_run(self, token: str) -> model.Decision | None:
        row = self.session.exec(select(DecisionRow).join(
            ApprovalRow, col(ApprovalRow.id) == DecisionRow.approval_id).where(
            ApprovalRow.run_id == self._row.id, DecisionRow.client_token == token)).first()
        return rows.decision(row) if row else None

    def add_decision(self, **fields: Any) -> model.Decision:
        row = DecisionRow(created_at=self.now, **fields)
        self.session.add(row)
        self.session.flush()
        return rows.decision(row)

    def decision_outcome(self, decision_id: int) -> dict[str, Any]:
        row = self.session.get(DecisionRow, decision_id)
        return dict(row.outcome) if row else {}

    def set_decision_outcome(self, decision_id: int, outcome: Mapping[str, Any]) -> None:
        row = self.session.get(DecisionRow, decision_id)
        if row is not None:
            row.outcome = dict(outcome)
            self.session.add(row)
