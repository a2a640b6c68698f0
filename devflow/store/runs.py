"""The verbs on runs: create one (under the concurrency limits), change one, read them."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

import sqlalchemy as sa

from devflow import events, model, states
from devflow.definitions import PhaseDef
from devflow.errors import Code, DevflowError
from devflow.requests import DeliveryClaim, TickClaim
from devflow.states import RunState
from devflow.store import statements
from devflow.store.approvals import approval_not_found, approvals_in, decisions_in
from devflow.store.database import Database
from devflow.store.events import tail_in
from devflow.store.rows import APPROVALS, ARTIFACTS, BINDINGS, INVOCATIONS, PHASES, RUNS
from devflow.store.runtx import Redactor, RunTx
from devflow.store.statements import APPROVAL, ARTIFACT, BINDING, INVOCATION, RUN

T = TypeVar("T")
Clock = Callable[[], datetime]


@dataclass(frozen=True, slots=True)
class NewRun:
    id: str
    template_name: str
    template_version: str
    template_hash: str
    template_def: dict[str, Any]
    repo: str
    base: str
    base_sha: str | None
    branch: str
    workspace: str
    worktree: str
    host: str
    requirements: str
    objective: str | None
    created_by: str
    bindings: Sequence[model.Binding]
    phases: Sequence[PhaseDef]
    options: dict[str, Any] = field(default_factory=dict)
    port_base: int | None = None
    #: role -> how its agent runs here (its sandbox, or why none), for ``run.bound``
    sandboxes: Mapping[str, str] = field(default_factory=dict)
    #: the trigger's tick this run starts: claimed in the transaction that inserts it
    tick: TickClaim | None = None
    #: the webhook delivery this run starts: claimed in the transaction that inserts it
    delivery: DeliveryClaim | None = None


@dataclass(frozen=True, slots=True)
class History:
    """A run and all that belongs to it: what its report is made of."""

    run: model.Run
    phases: list[model.Phase]
    bindings: list[model.Binding]
    approvals: list[model.Approval]
    decisions: list[model.Decision]
    invocations: list[model.Invocation]
    events: list[model.Event]


@dataclass(frozen=True, slots=True)
class Deciding:
    """A run, the request a decision on it is for, and whether its token decided it already.

    The request is the one named, or else the run's only pending one (None when it has
    none or several); the choice is made again under the run's lock.
    """

    run: model.Run
    approval: model.Approval | None
    token_used: bool


@dataclass(frozen=True, slots=True)
class Limits:
    max_active_per_branch: int = 1
    max_concurrent_runs: int = 50


@dataclass(frozen=True, slots=True)
class Ports:
    """Blocks of TCP ports for runs: ``size`` ports from ``first`` up to ``last``."""

    first: int
    last: int
    size: int
    is_free: Callable[[int, int], bool]


class Runs:
    def __init__(self, db: Database, clock: Clock, redact: Redactor | None = None) -> None:
        self.db = db
        self.clock = clock
        self.redact = redact
        self._lock_query = db.lock_run_query(statements.by_id(RUN))
        self._lock_with_phase = db.lock_run_query(statements.RUN_WITH_PHASE,
                                                  of=(RUN, statements.PHASE))
        # SQLite's inserts cost no round trip: a decision is inserted where it is added
        self._lock_for_decision = self._lock_with_phase if db.is_sqlite else db.lock_run_query(
            statements.RUN_WITH_PHASE.add_columns(statements.NEXT_DECISION_ID),
            of=(RUN, statements.PHASE))

    # -- changing a run --------------------------------------------------------------------
    def change(self, run_id: str, fn: Callable[[RunTx], T], *,
               lease: model.Lease | None = None, phase: str | None = None,
               deciding: bool = False) -> T:
        """Run ``fn`` on the locked run in one transaction; with ``lease``, only while held.

        ``phase``: the key of the phase ``fn`` will read, read with the lock (one round
        trip less on PostgreSQL); with it, ``deciding``: ``fn`` may add a decision, whose
        id is then read with the lock where the database hands ids out.
        """
        def tx(conn: sa.Connection) -> T:
            row, held, decision_id = self._locked(conn, run_id, phase, deciding)
            runtx = RunTx(conn, row, self.clock(), self.redact, held, decision_id)
            if lease is not None:
                runtx.check_lease(lease)
            result = fn(runtx)
            runtx.finish()
            return result
        return self.db.write(tx)

    def _locked(self, conn: sa.Connection, run_id: str, phase: str | None,
                deciding: bool = False) -> tuple[model.Run, model.Phase | None, int | None]:
        """The locked run; its phase when asked; a new decision's id when deciding (and
        the database hands ids out)."""
        if phase is not None:
            query = self._lock_for_decision if deciding else self._lock_with_phase
            row = conn.execute(query, {"id": run_id, "key": phase}).first()
            if row is not None:
                values = row._mapping
                return (RUNS.load(values), PHASES.load(values, "p_"),
                        values.get("next_decision_id"))
        # no such phase (the transaction will say so) or none asked for
        row = conn.execute(self._lock_query, {"id": run_id}).first()
        if row is None:
            raise _not_found(run_id)
        return RUNS.load(row._mapping), None, None

    def create(self, new: NewRun, limits: Limits, *, lease_owner: str | None = None,
               lease_seconds: float = 60.0, ports: Ports | None = None) -> model.Run:
        """Insert the run, its bindings and phases, bound, within the concurrency limits."""
        def tx(conn: sa.Connection) -> model.Run:
            self.db.serialize(conn, "devflow-run-start")
            if new.tick is not None:  # a trigger's run (its modules loaded only for one)
                from devflow.store.triggers import claim_in  # noqa: PLC0415
                claim_in(conn, new.tick, new.id, self.clock())
            if new.delivery is not None:
                from devflow.store.deliveries import claim_delivery_in  # noqa: PLC0415
                claim_delivery_in(conn, new.delivery, new.id, self.clock())
            # one read for all the checks: a run of this id, and every active run
            found = conn.execute(_START_READ, {"id": new.id}).all()
            if any(r.id == new.id for r in found):
                raise DevflowError(Code.RUN_ID_EXISTS, f"a run with id {new.id} exists already",
                                   hint="choose another --run-id, or leave it out")
            active = [r for r in found if r.state in _ACTIVE]
            _check_limits(active, new, limits)
            port_base = _port_block(active, ports) if ports else new.port_base
            now = self.clock()
            values: dict[str, Any] = dict(
                id=new.id, template_name=new.template_name,
                template_version=new.template_version, template_hash=new.template_hash,
                template_def=new.template_def, repo=new.repo, base=new.base,
                base_sha=new.base_sha, checkpoint_sha=new.base_sha, branch=new.branch,
                workspace=new.workspace,
                worktree=new.worktree, host=new.host, state=str(RunState.CREATED),
                requirements=new.requirements, objective=new.objective, options=new.options,
                created_by=new.created_by, created_at=now, updated_at=now,
                port_base=port_base)
            if lease_owner is not None:
                values.update(lease_owner=lease_owner, lease_fence=1,
                              lease_expires_at=now + timedelta(seconds=lease_seconds))
            run = RUNS.load(conn.execute(statements.insert_returning(RUN), values).one()._mapping)
            if new.bindings:
                conn.execute(statements.plain_insert(BINDING), [
                    {**BINDINGS.columns(b), "run_id": new.id} for b in new.bindings])
            runtx = RunTx(conn, run, now, self.redact)
            runtx.event(events.RUN_CREATED.new(payload={
                "template": f"{new.template_name}@{new.template_version}",
                "template_hash": new.template_hash, "repo": new.repo, "base": new.base,
                "branch": new.branch, "by": new.created_by}))
            runtx.add_phases(new.phases, origin="template")
            bound = runtx.move_run(RunState.BOUND, events.RUN_BOUND.new(payload={
                "bindings": {b.role: b.persona_ref for b in new.bindings},
                **({"sandbox": dict(new.sandboxes)} if new.sandboxes else {})}))
            runtx.finish()
            return bound
        return self.db.write(tx)

    # -- reading ---------------------------------------------------------------------------
    def get(self, run_id: str) -> model.Run:
        return self.db.read(lambda conn: RUNS.load(_run(conn, run_id)._mapping))

    def find(self, *, states_in: Sequence[RunState] | None = None, repo: str | None = None,
             limit: int = 200, before: tuple[datetime, str] | None = None) -> list[model.Run]:
        """Runs, newest first; ``before`` (created_at, id) continues a list from its last."""
        def tx(conn: sa.Connection) -> list[model.Run]:
            query = sa.select(RUN)
            if states_in:
                query = query.where(RUN.c.state.in_([str(s) for s in states_in]))
            if repo:
                query = query.where(RUN.c.repo == repo)
            if before is not None:
                query = query.where(sa.or_(RUN.c.created_at < before[0], sa.and_(
                    RUN.c.created_at == before[0], RUN.c.id < before[1])))
            query = query.order_by(RUN.c.created_at.desc(), RUN.c.id.desc()).limit(limit)
            return [RUNS.load(r._mapping) for r in conn.execute(query)]
        return self.db.read(tx)

    def snapshot(self, run_id: str) -> tuple[model.Run, list[model.Phase]]:
        """The run and its phases, read together on one connection."""
        def tx(conn: sa.Connection) -> tuple[model.Run, list[model.Phase]]:
            row = conn.execute(statements.by_id(RUN), {"id": run_id}).first()
            if row is None:
                raise _not_found(run_id)
            return RUNS.load(row._mapping), _phases(conn, run_id)
        return self.db.read(tx)

    def history(self, run_id: str, last_events: int = 200) -> History:
        """Everything a report tells of a run, read on one connection."""
        def tx(conn: sa.Connection) -> History:
            run = RUNS.load(_run(conn, run_id)._mapping)
            return History(run, _phases(conn, run.id), _bindings(conn, run.id),
                           approvals_in(conn, run_id=run.id),
                           decisions_in(conn, run_id=run.id), _invocations(conn, run.id),
                           tail_in(conn, run.id, last_events))
        return self.db.read(tx)

    def deciding(self, run_id: str, approval_id: int | None, token: str) -> Deciding:
        """What a decision on the run starts from, in one read."""
        def tx(conn: sa.Connection) -> Deciding:
            if approval_id is not None:
                run = RUNS.load(_run(conn, run_id)._mapping)
                row = conn.execute(statements.by_id(APPROVAL), {"id": approval_id}).first()
                if row is None:
                    raise approval_not_found(approval_id)
                approval = APPROVALS.load(row._mapping)
                used = any(d.client_token == token
                           for d in decisions_in(conn, approval_id=approval.id))
                return Deciding(run, approval, used)
            # the run and its candidate requests in one statement, by the exact id
            found = conn.execute(statements.RUN_GATE, {"id": run_id, "token": token}).all()
            if found:
                run = RUNS.load(found[0]._mapping)
                gate = [APPROVALS.load(r._mapping, "a_") for r in found if r.a_id is not None]
                decided = [r.a_id for r in found if r.a_d_id is not None]
            else:  # an id prefix
                run = RUNS.load(_run(conn, run_id)._mapping)
                rest = conn.execute(statements.GATE, {"run_id": run.id, "token": token}).all()
                gate = [APPROVALS.load(r._mapping) for r in rest]
                decided = [r.id for r in rest if r.d_id is not None]
            if decided:  # a retry: the request its token decided
                return Deciding(run, next(a for a in gate if a.id == decided[0]), True)
            return Deciding(run, gate[0] if len(gate) == 1 else None, False)
        return self.db.read(tx)

    def phases(self, run_id: str) -> list[model.Phase]:
        return self.db.read(lambda conn: _phases(conn, run_id))

    def bindings(self, run_id: str) -> list[model.Binding]:
        return self.db.read(lambda conn: _bindings(conn, run_id))

    def invocations(self, run_id: str) -> list[model.Invocation]:
        return self.db.read(lambda conn: _invocations(conn, run_id))

    def artifacts(self, run_id: str) -> list[model.ArtifactRecord]:
        def tx(conn: sa.Connection) -> list[model.ArtifactRecord]:
            found = conn.execute(
                sa.select(ARTIFACT).where(ARTIFACT.c.run_id == run_id).order_by(ARTIFACT.c.id))
            return [ARTIFACTS.load(a._mapping) for a in found]
        return self.db.read(tx)

    def missing_reports(self, limit: int = 100) -> list[str]:
        terminal = [str(s) for s in states.TERMINAL]
        query = sa.select(RUN.c.id).where(RUN.c.state.in_(terminal),
                                          RUN.c.report_status.is_(None)).limit(limit)
        return self.db.read(lambda conn: list(conn.execute(query).scalars()))


_ACTIVE = frozenset(str(s) for s in states.ACTIVE)
_START_READ = (sa.select(RUN.c.id, RUN.c.state, RUN.c.repo, RUN.c.base, RUN.c.port_base,
                         RUN.c.created_at)
               .where(sa.or_(RUN.c.id == sa.bindparam("id"),
                             RUN.c.state.in_(sorted(_ACTIVE)))))


def _check_limits(active: Sequence[Any], new: NewRun, limits: Limits) -> None:
    same = [r.id for r in sorted(active, key=lambda r: r.created_at)
            if r.repo == new.repo and r.base == new.base]
    if len(same) >= limits.max_active_per_branch:
        raise DevflowError(
            Code.ACTIVE_RUN_EXISTS,
            f"run {same[0]} is already active on {new.base} of {new.repo}"
            + (f" ({len(same)} active, the limit is {limits.max_active_per_branch})"
               if limits.max_active_per_branch > 1 else ""),
            hint=f"wait for it (devflow run status {same[0]}), abort it (devflow run abort "
                 f"{same[0]}), or raise max_active_per_branch", active_runs=list(same))
    total = len(active)
    if total >= limits.max_concurrent_runs:
        raise DevflowError(
            Code.ACTIVE_RUN_EXISTS,
            f"{total} runs are active, the limit is "
            f"max_concurrent_runs={limits.max_concurrent_runs}",
            hint="wait for a run to finish (devflow run list --state executing) or raise "
                 "max_concurrent_runs")


def _port_block(active: Sequence[Any], ports: Ports) -> int:
    """The first block no active run holds and whose ports are free on this machine."""
    taken = {r.port_base for r in active if r.port_base is not None}
    for base in range(ports.first, ports.last - ports.size + 2, ports.size):
        if base not in taken and ports.is_free(base, ports.size):
            return base
    raise DevflowError(Code.ACTIVE_RUN_EXISTS,
                       f"no free block of {ports.size} ports between {ports.first} and "
                       f"{ports.last}", hint="widen port_range in config.yaml or wait for runs "
                                             "to end")


def _run(conn: sa.Connection, run_id: str) -> sa.Row[Any]:
    """The run of this id, or of the only id starting with it (at least four characters)."""
    row = conn.execute(statements.by_id(RUN), {"id": run_id}).first()
    if row is not None:
        return row
    if len(run_id) >= 4:
        found = conn.execute(sa.select(RUN).where(RUN.c.id.startswith(run_id, autoescape=True))
                             .limit(2)).all()
        if len(found) == 1:
            return found[0]
    raise _not_found(run_id)


def _phases(conn: sa.Connection, run_id: str) -> list[model.Phase]:
    return [PHASES.load(p._mapping)
            for p in conn.execute(statements.RUN_PHASES, {"run_id": run_id})]


def _bindings(conn: sa.Connection, run_id: str) -> list[model.Binding]:
    return [BINDINGS.load(b._mapping) for b in conn.execute(
        sa.select(BINDING).where(BINDING.c.run_id == run_id).order_by(BINDING.c.role))]


def _invocations(conn: sa.Connection, run_id: str) -> list[model.Invocation]:
    return [INVOCATIONS.load(i._mapping) for i in conn.execute(
        sa.select(INVOCATION).where(INVOCATION.c.run_id == run_id).order_by(INVOCATION.c.id))]


def _not_found(run_id: str) -> DevflowError:
    return DevflowError(Code.RUN_NOT_FOUND, f"no run {run_id}",
                        hint="`devflow run list` shows the runs", run_id=run_id)
