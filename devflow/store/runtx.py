"""RunTx: one transaction on one locked run, the only way a run's state changes.

Opened by ``Runs.change`` (which locks the run row and checks the lease), a RunTx
offers the verbs that change a run, its phases, approvals, artifacts and
invocations. Every state move is checked against ``devflow.states`` and appends its
event in the same transaction; event numbers come from the locked run row, so they
are gapless per run. The rows it reads are the frozen values of ``devflow.model``; a
change makes a new value (``dataclasses.replace``), and what differs from the row as
the database has it is written as explicit UPDATEs before the next query and at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any, Final, TypeVar

import sqlalchemy as sa

from devflow import model, states, webhooks
from devflow.definitions import PhaseDef
from devflow.errors import Code, DevflowError
from devflow.states import ApprovalState, PhaseState, RunState
from devflow.store import leases, rows, statements
from devflow.store.rows import APPROVALS, ARTIFACTS, DECISIONS, EVENTS, PHASES
from devflow.store.statements import APPROVAL, DECISION, INVOCATION, PHASE, RUN
from devflow.store.tables import WEBHOOK_OUTBOX

Redactor = Callable[[Mapping[str, Any]], dict[str, Any]]
V = TypeVar("V")
#: a row held by a transaction: (table name, id)
Key = tuple[str, Any]


class RunTx:
    def __init__(self, conn: sa.Connection, run: model.Run, now: datetime,
                 redact: Redactor | None = None, phase: model.Phase | None = None,
                 decision_id: int | None = None) -> None:
        self.conn = conn
        #: the last writes go as one statement where the database allows it
        self._together = self.conn.dialect.name == "postgresql"
        self.now = now
        self._redact = redact
        # The rows this transaction read or added, as it has them now (``_rows``) and as
        # the database has them (``_stored``; a row not there yet is to be inserted).
        # Writing is ``rows.Mapper.changes`` between the two: one UPDATE a changed row.
        self._rows: dict[Key, Any] = {}
        self._stored: dict[Key, Any] = {}
        self._run_key: Key = (RUN.name, run.id)
        self._keep(RUN.name, run)
        #: the ids of the phases held, by key; all of the run's once ``_all_phases``
        self._phase_ids: dict[str, int] = {}
        self._all_phases = False
        if phase is not None:
            self._phase_ids[phase.key] = self._keep(PHASE.name, phase).id
        self.events: list[model.Event] = []
        # New events are numbered at once but written together by ``finish`` (one batched
        # insert and one update of the run's counter, not one of each per event).
        self._seq = run.last_seq
        self._new_events: dict[str, dict[str, Any]] = {}
        #: rows to insert that nothing reads back, written with the changed rows
        self._inserts: list[statements.Insert] = []
        #: decision tokens looked up in the run and not found
        self._unused_tokens: set[str] = set()
        #: the id a decision added here takes, when the lock read one
        self._decision_id = decision_id
        #: invocations this transaction closed while their process may still run
        self.closed: list[model.Invocation] = []
        #: the terminal state this transaction moved the run to: its report is written
        #: once the transaction committed (``Context.change``)
        self.ended: RunState | None = None

    # -- the rows held ---------------------------------------------------------------------
    def _keep(self, table: str, value: V, *, new: bool = False) -> V:
        """Hold a row read (or, ``new``, one to insert); a row held already stays as held."""
        key = (table, value.id)  # type: ignore[attr-defined]
        held = self._rows.get(key)
        if held is not None:
            return held  # type: ignore[no-any-return]
        self._rows[key] = value
        if not new:
            self._stored[key] = value
        return value

    def _change(self, table: str, value: V, **fields: Any) -> V:
        """``value`` (a row held) with ``fields`` changed, held as changed."""
        changed: V = rows.BY_TABLE[table].replace(value, **fields)
        self._rows[(table, changed.id)] = changed  # type: ignore[attr-defined]
        return changed

    def _writes(self) -> tuple[list[statements.Update], list[statements.Insert]]:
        """What changed since the last write, as UPDATEs and INSERTs; then held as written."""
        updates: list[statements.Update] = []
        inserts = self._inserts
        self._inserts = []
        for key, value in self._rows.items():
            stored = self._stored.get(key, _NEW)
            if stored is value:
                continue
            mapper = rows.BY_TABLE[key[0]]
            if stored is _NEW:
                inserts = [*inserts, (mapper.table, mapper.columns(value))]
            elif columns := mapper.changes(stored, value):
                updates.append((mapper.table, key[1], columns))
            self._stored[key] = value
        return updates, inserts

    # -- the run ---------------------------------------------------------------------------
    @property
    def run(self) -> model.Run:
        run = self._run_now
        if run.last_seq != self._seq:  # events were appended: the run as they leave it
            run = self._rows[self._run_key] = replace(run, last_seq=self._seq)
        return run

    def _set_run(self, **fields: Any) -> model.Run:
        return self._change(RUN.name, self._run_now, **fields)

    def finish(self) -> None:
        """Write what this transaction changed; ``Runs.change`` calls it last."""
        if self._run_now.last_seq != self._seq:  # the new events' counter
            self._set_run(last_seq=self._seq)
        updates, inserts = self._writes()
        if self._together:
            statements.write_together(self.conn, updates, inserts,
                                      list(self._new_events.values()))
            self._new_events = {}
            return
        statements.write(self.conn, updates, inserts)
        if self._new_events:
            self.conn.execute(statements.INSERT_EVENTS, list(self._new_events.values()))
            self._new_events = {}

    def _flush(self) -> None:
        """Write the changed rows, so that a query sees them."""
        statements.write(self.conn, *self._writes())

    @property
    def state(self) -> RunState:
        return self._run_now.state

    @property
    def _run_now(self) -> model.Run:
        run: model.Run = self._rows[self._run_key]
        return run

    def move_run(self, to: RunState, event: model.NewEvent | None = None, *,
                 failure: tuple[str, str] | None = None) -> model.Run:
        current = self._run_now.state
        states.check_run_move(current, to)
        fields: dict[str, Any] = {"state": to, "updated_at": self.now}
        if to is RunState.PAUSED:
            fields["paused_from"] = current
        elif current is RunState.PAUSED:
            fields["paused_from"] = None
        if to in states.TERMINAL:
            fields.update(ended_at=self.now, lease_owner=None, lease_expires_at=None)
            self.ended = to
        if failure:
            fields["failure_code"], fields["failure_reason"] = failure
        self._set_run(**fields)
        if event is not None:
            self.event(event)
        return self.run

    def settle(self, to: RunState, event: model.NewEvent | None = None) -> model.Run:
        """Move the run to ``to``; a paused run instead remembers ``to`` as where resume goes."""
        if self._run_now.state is RunState.PAUSED:
            self._set_run(paused_from=to)
            if event is not None:
                self.event(event)
            return self.run
        if self._run_now.state is to:
            if event is not None:
                self.event(event)
            return self.run
        return self.move_run(to, event)

    def set_run(self, **fields: Any) -> model.Run:
        """Change fields of the run that are not its state (usage totals, lease, report)."""
        if "state" in fields:
            raise ValueError("a run's state changes through move_run only")
        self._set_run(**fields, updated_at=self.now)
        return self.run

    def check_lease(self, lease: model.Lease) -> None:
        run = self._run_now
        leases.check(lease, run.id, run.lease_owner, run.lease_fence, run.lease_expires_at,
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
        run_id = self._run_key[1]
        if new.key is not None and (pending := self._new_events.get(new.key)) is not None:
            return EVENTS.load(pending)
        if new.key is not None and not unseen:
            existing = self.conn.execute(statements.EVENT_BY_KEY, {"key": new.key}).first()
            if existing is not None:
                if existing.run_id != run_id:
                    raise DevflowError(Code.INTERNAL, f"idempotency key {new.key!r} belongs to "
                                       f"run {existing.run_id}, not {run_id}",
                                       hint="idempotency keys start with their run's id")
                return EVENTS.load(existing._mapping)
        payload = dict(new.payload)
        if self._redact is not None:
            payload = self._redact(payload)
        self._seq += 1
        key = new.key or f"{run_id}:{self._seq}"
        row = {"run_id": run_id, "seq": self._seq, "type": new.type, "phase": new.phase,
               "payload": payload, "ts": self.now, "idem_key": key}
        self._new_events[key] = row
        if new.type in webhooks.EVENTS:  # the outbox row commits with its event
            self._inserts.append((WEBHOOK_OUTBOX, {
                "run_id": run_id, "seq": self._seq, "type": new.type,
                "phase": new.phase, "payload": payload, "ts": self.now, "fanned": False}))
        appended = EVENTS.load(row)
        self.events.append(appended)
        return appended

    # -- phases ----------------------------------------------------------------------------
    def phases(self) -> list[model.Phase]:
        if not self._all_phases:
            found = self.conn.execute(statements.RUN_PHASES, {"run_id": self._run_key[1]})
            # in their order; a phase already held (and maybe changed) here stays the one
            self._phase_ids = {r.key: self._keep(PHASE.name, PHASES.load(r._mapping)).id
                               for r in found}
            self._all_phases = True
        return [self._rows[(PHASE.name, i)] for i in self._phase_ids.values()]

    def phase(self, key: str) -> model.Phase:
        phase_id = self._phase_ids.get(key)
        if phase_id is None and not self._all_phases:
            # one row by its unique key, without loading the run's other phases
            found = self.conn.execute(statements.RUN_PHASE, {"run_id": self._run_key[1],
                                                             "key": key}).first()
            if found is not None:
                phase_id = self._phase_ids[key] = self._keep(
                    PHASE.name, PHASES.load(found._mapping)).id
        if phase_id is None:
            raise DevflowError(Code.INVALID_INPUT, f"run {self._run_key[1]} has no phase "
                               f"{key!r}", hint=f"devflow run status {self._run_key[1]}")
        held: model.Phase = self._rows[(PHASE.name, phase_id)]
        return held

    def add_phases(self, defs: Sequence[PhaseDef], origin: str) -> list[model.Phase]:
        existing = {p.key: p for p in self.phases()}
        position = max((p.position for p in existing.values()), default=0)
        values: list[dict[str, Any]] = []
        for d in defs:
            if d.key in existing or any(v["key"] == d.key for v in values):
                raise DevflowError(Code.DUPLICATE_PHASE, f"run {self._run_key[1]} already has "
                                   f"a phase {d.key!r}", hint="phase keys must be unique in a run")
            position += 1
            values.append({"run_id": self._run_key[1], "position": position, "key": d.key,
                           "origin": origin, "definition": d.to_json(),
                           "state": str(PhaseState.PENDING)})
        if not values:
            return []
        added = [self._keep(PHASE.name, PHASES.load(r._mapping))
                 for r in self.conn.execute(statements.INSERT_PHASES, values)]
        self._phase_ids.update((p.key, p.id) for p in added)
        return added

    def move_phase(self, key: str, to: PhaseState, event: model.NewEvent | None = None,
                   **fields: Any) -> model.Phase:
        if self._run_now.state in states.TERMINAL:
            raise DevflowError(Code.ILLEGAL_TRANSITION,
                               f"run {self._run_key[1]} is {self._run_now.state}: its phases "
                               f"never change again", hint="a terminal run is final")
        phase = self.phase(key)
        states.check_phase_move(phase.state, to)
        moved: dict[str, Any] = {"state": to}
        if to is PhaseState.RUNNING and phase.started_at is None:
            moved["started_at"] = self.now
        if to in states.PHASE_FINAL:
            moved["ended_at"] = self.now
        phase = self._change(PHASE.name, phase, **moved, **fields)
        if event is not None:
            self.event(event)
        return phase

    def set_phase(self, key: str, **fields: Any) -> model.Phase:
        if "state" in fields:
            raise ValueError("a phase's state changes through move_phase only")
        return self._change(PHASE.name, self.phase(key), **fields)

    # -- rows of the other tables ----------------------------------------------------------
    def _insert(self, table: sa.Table, **values: Any) -> Any:
        found = self.conn.execute(statements.insert_returning(table), values).one()
        return self._keep(table.name, rows.BY_TABLE[table.name].load(found._mapping))

    def _get(self, table: sa.Table, row_id: int) -> Any:
        held = self._rows.get((table.name, row_id))
        if held is None:
            found = self.conn.execute(statements.by_id(table), {"id": row_id}).first()
            if found is not None:
                held = self._keep(table.name, rows.BY_TABLE[table.name].load(found._mapping))
        return held

    def _query(self, table: sa.Table, query: sa.Select[Any]) -> list[Any]:
        """The rows ``query`` finds, as the ones held where this transaction holds them."""
        self._flush()
        mapper = rows.BY_TABLE[table.name]
        return [self._keep(table.name, mapper.load(r._mapping)) for r in self.conn.execute(query)]

    # -- artifacts and invocations ---------------------------------------------------------
    def add_artifact(self, record: model.ArtifactRecord) -> None:
        self._inserts.append((ARTIFACTS.table, ARTIFACTS.columns(record)))

    def start_invocation(self, **fields: Any) -> model.Invocation:
        invocation: model.Invocation = self._insert(
            INVOCATION, run_id=self._run_key[1], started_at=self.now, **fields)
        return invocation

    def update_invocation(self, invocation: model.Invocation, **fields: Any) -> model.Invocation:
        """Change an invocation of this run.

        One this transaction has not read is taken as the caller holds it (a transaction
        of this run returned it) instead of being read again: only the changed columns
        are written, with this transaction's other writes.
        """
        if invocation.run_id != self._run_key[1]:
            raise DevflowError(Code.INTERNAL, f"invocation {invocation.id} is not of run "
                               f"{self._run_key[1]}", hint="this is a bug in devflow")
        held = self._keep(INVOCATION.name, invocation)
        return self._change(INVOCATION.name, held, **fields)

    def close_invocations(self, outcome: str, reason: str) -> list[model.Invocation]:
        """Close the run's unfinished invocations; their processes are the caller's to stop."""
        closed = [self.update_invocation(inv, ended_at=self.now, outcome=outcome,
                                         reason=reason) for inv in self.open_invocations()]
        self.closed += closed
        return closed

    def open_invocations(self) -> list[model.Invocation]:
        return self._query(INVOCATION, sa.select(INVOCATION).where(
            INVOCATION.c.run_id == self._run_key[1], INVOCATION.c.ended_at.is_(None))
            .order_by(INVOCATION.c.id))

    # -- approvals -------------------------------------------------------------------------
    def open_approval(self, **fields: Any) -> model.Approval:
        approval: model.Approval = self._insert(
            APPROVAL, run_id=self._run_key[1], state=str(ApprovalState.PENDING),
            opened_at=self.now, **fields)
        return approval

    def approvals(self, *, pending: bool = False) -> list[model.Approval]:
        query = sa.select(APPROVAL).where(APPROVAL.c.run_id == self._run_key[1])
        if pending:
            query = query.where(APPROVAL.c.state == str(ApprovalState.PENDING))
        return self._query(APPROVAL, query.order_by(APPROVAL.c.id))

    def approval(self, approval_id: int) -> model.Approval:
        approval: model.Approval | None = self._get(APPROVAL, approval_id)
        if approval is None or approval.run_id != self._run_key[1]:
            raise DevflowError(Code.APPROVAL_NOT_FOUND, f"no approval request {approval_id} on "
                               f"run {self._run_key[1]}", hint=f"devflow approvals list --run "
                               f"{self._run_key[1]}")
        return approval

    def resolve_approval(self, approval_id: int, to: ApprovalState, *, by: str,
                         resolution: str) -> model.Approval:
        approval = self.approval(approval_id)
        states.check_approval_move(approval.state, to)
        return self._change(APPROVAL.name, approval, state=to, resolved_at=self.now,
                            resolved_by=by, resolution=resolution)

    def set_approval(self, approval_id: int, **fields: Any) -> model.Approval:
        if "state" in fields:
            raise ValueError("an approval's state changes through resolve_approval only")
        return self._change(APPROVAL.name, self.approval(approval_id), **fields)

    def decision_by_token(self, approval_id: int, token: str) -> model.Decision | None:
        if token in self._unused_tokens:  # looked up in the whole run already
            self.approval(approval_id)  # (which holds this request)
            return None
        found: list[model.Decision] = self._query(DECISION, sa.select(DECISION).where(
            DECISION.c.approval_id == approval_id, DECISION.c.client_token == token))
        return found[0] if found else None

    def gate(self, token: str) -> tuple[list[model.Approval], model.Decision | None]:
        """The run's pending requests and the decision ``token`` made in the run, if any.

        One query; the requests and the decision are held like rows read one by one.
        """
        self._flush()
        pending: list[model.Approval] = []
        decided: model.Decision | None = None
        for r in self.conn.execute(statements.GATE, {"run_id": self._run_key[1],
                                                     "token": token}):
            approval = self._keep(APPROVAL.name, APPROVALS.load(r._mapping))
            if r.d_id is not None and decided is None:  # the first, as deciding()
                decided = self._keep(DECISION.name, DECISIONS.load(r._mapping, "d_"))
            if approval.state is ApprovalState.PENDING:
                pending.append(approval)
        if decided is None:
            self._unused_tokens.add(token)
        return pending, decided

    def add_decision(self, **fields: Any) -> model.Decision:
        self._unused_tokens.discard(fields["client_token"])
        decision_id, self._decision_id = self._decision_id, None
        if decision_id is None:
            decision: model.Decision = self._insert(DECISION, created_at=self.now, **fields)
            return decision
        # its id known, it is inserted whole with the other writes, as the transaction
        # leaves it (its outcome is set later)
        return self._keep(DECISION.name, DECISIONS.load({
            **dict.fromkeys(DECISION.c.keys()), "sections": {}, "evidence": {}, "outcome": {},
            "id": decision_id, "created_at": self.now, **fields}), new=True)

    def decision_outcome(self, decision_id: int) -> dict[str, Any]:
        decision: model.Decision | None = self._get(DECISION, decision_id)
        return dict(decision.outcome) if decision else {}

    def set_decision_outcome(self, decision_id: int, outcome: Mapping[str, Any]) -> None:
        decision = self._get(DECISION, decision_id)
        if decision is not None:
            self._change(DECISION.name, decision, outcome=dict(outcome))


#: a row this transaction holds that the database does not have yet
_NEW: Final = object()
