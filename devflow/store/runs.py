"""The verbs on runs: create one (under the concurrency limits), change one, read them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlmodel import Session, col, func, select

from devflow import model, states
from devflow.definitions import PhaseDef
from devflow.errors import Code, DevflowError
from devflow.states import RunState
from devflow.store import rows
from devflow.store.database import Database
from devflow.store.runtx import Redactor, RunTx
from devflow.store.tables import (
    ArtifactRow,
    BindingRow,
    InvocationRow,
    PhaseRow,
    RunRow,
)

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

    # -- changing a run --------------------------------------------------------------------
    def change(self, run_id: str, fn: Callable[[RunTx], T], *,
               lease: model.Lease | None = None) -> T:
        """Run ``fn`` on the locked run in one transaction; with ``lease``, only while held."""
        def tx(session: Session) -> T:
            row = self._locked(session, run_id)
            runtx = RunTx(session, row, self.clock(), self.redact)
            if lease is not None:
                runtx.check_lease(lease)
            result = fn(runtx)
            runtx.finish()
            return result
        return self.db.write(tx)

    def _locked(self, session: Session, run_id: str) -> RunRow:
        query = self.db.lock_run_query(select(RunRow).where(RunRow.id == run_id))
        row: RunRow | None = session.exec(query).first()
        if row is None:
            raise _not_found(run_id)
        return row

    def create(self, new: NewRun, limits: Limits, *, lease_owner: str | None = None,
               lease_seconds: float = 60.0, ports: Ports | None = None) -> model.Run:
        """Insert the run, its bindings and phases, bound, within the concurrency limits."""
        def tx(session: Session) -> model.Run:
            self.db.serialize(session, "devflow-run-start")
            if session.get(RunRow, new.id) is not None:
                raise DevflowError(Code.RUN_ID_EXISTS, f"a run with id {new.id} exists already",
                                   hint="choose another --run-id, or leave it out")
            _check_limits(session, new, limits)
            port_base = _port_block(session, ports) if ports else new.port_base
            now = self.clock()
            row = RunRow(
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
                row.lease_owner, row.lease_fence = lease_owner, 1
                row.lease_expires_at = now + timedelta(seconds=lease_seconds)
            session.add(row)
            session.flush()
            for b in new.bindings:
                session.add(BindingRow(
                    run_id=new.id, role=b.role, persona_name=b.persona_name,
                    persona_version=b.persona_version, persona_hash=b.persona_hash,
                    persona_def=dict(b.persona_def), backend=b.backend,
                    backend_version=b.backend_version))
            runtx = RunTx(session, row, now, self.redact)
            runtx.event(model.NewEvent("run.created", payload={
                "template": f"{new.template_name}@{new.template_version}",
                "template_hash": new.template_hash, "repo": new.repo, "base": new.base,
                "branch": new.branch, "by": new.created_by}))
            runtx.add_phases(new.phases, origin="template")
            bound = runtx.move_run(RunState.BOUND, model.NewEvent("run.bound", payload={
                "bindings": {b.role: b.persona_ref for b in new.bindings}}))
            runtx.finish()
            return bound
        return self.db.write(tx)

    # -- reading ---------------------------------------------------------------------------
    def get(self, run_id: str) -> model.Run:
        def tx(session: Session) -> model.Run:
            row = session.get(RunRow, run_id)
            if row is None:
                row = _by_prefix(session, run_id)
            return rows.run(row)
        return self.db.read(tx)

    def find(self, *, states_in: Sequence[RunState] | None = None, repo: str | None = None,
             limit: int = 200) -> list[model.Run]:
        def tx(session: Session) -> list[model.Run]:
            query = select(RunRow)
            if states_in:
                query = query.where(col(RunRow.state).in_([str(s) for s in states_in]))
            if repo:
                query = query.where(RunRow.repo == repo)
            query = query.order_by(col(RunRow.created_at).desc()).limit(limit)
            return [rows.run(r) for r in session.exec(query)]
        return self.db.read(tx)

    def snapshot(self, run_id: str) -> tuple[model.Run, list[model.Phase]]:
        """The run and its phases, read together in one transaction."""
        def tx(session: Session) -> tuple[model.Run, list[model.Phase]]:
            row = session.get(RunRow, run_id)
            if row is None:
                raise _not_found(run_id)
            found = session.exec(select(PhaseRow).where(PhaseRow.run_id == run_id)
                                 .order_by(col(PhaseRow.position)))
            return rows.run(row), [rows.phase(p) for p in found]
        return self.db.read(tx)

    def phases(self, run_id: str) -> list[model.Phase]:
        def tx(session: Session) -> list[model.Phase]:
            found = session.exec(select(PhaseRow).where(PhaseRow.run_id == run_id)
                                 .order_by(col(PhaseRow.position)))
            return [rows.phase(p) for p in found]
        return self.db.read(tx)

    def bindings(self, run_id: str) -> list[model.Binding]:
        def tx(session: Session) -> list[model.Binding]:
            found = session.exec(select(BindingRow).where(BindingRow.run_id == run_id)
                                 .order_by(col(BindingRow.role)))
            return [rows.binding(b) for b in found]
        return self.db.read(tx)

    def invocations(self, run_id: str) -> list[model.Invocation]:
        def tx(session: Session) -> list[model.Invocation]:
            found = session.exec(select(InvocationRow).where(InvocationRow.run_id == run_id)
                                 .order_by(col(InvocationRow.id)))
            return [rows.invocation(i) for i in found]
        return self.db.read(tx)

    def artifacts(self, run_id: str) -> list[model.ArtifactRecord]:
        def tx(session: Session) -> list[model.ArtifactRecord]:
            found = session.exec(select(ArtifactRow).where(ArtifactRow.run_id == run_id)
                                 .order_by(col(ArtifactRow.id)))
            return [rows.artifact(a) for a in found]
        return self.db.read(tx)

    def missing_reports(self, limit: int = 100) -> list[str]:
        def tx(session: Session) -> list[str]:
            terminal = [str(s) for s in states.TERMINAL]
            query = select(RunRow.id).where(col(RunRow.state).in_(terminal),
                                            col(RunRow.report_status).is_(None)).limit(limit)
            return list(session.exec(query))
        return self.db.read(tx)


def _check_limits(session: Session, new: NewRun, limits: Limits) -> None:
    active = [str(s) for s in states.ACTIVE]
    same = session.exec(select(RunRow.id).where(
        RunRow.repo == new.repo, RunRow.base == new.base, col(RunRow.state).in_(active))
        .order_by(col(RunRow.created_at))).all()
    if len(same) >= limits.max_active_per_branch:
        raise DevflowError(
            Code.ACTIVE_RUN_EXISTS,
            f"run {same[0]} is already active on {new.base} of {new.repo}"
            + (f" ({len(same)} active, the limit is {limits.max_active_per_branch})"
               if limits.max_active_per_branch > 1 else ""),
            hint=f"wait for it (devflow run status {same[0]}), abort it (devflow run abort "
                 f"{same[0]}), or raise max_active_per_branch", active_runs=list(same))
    total = session.exec(select(func.count()).select_from(RunRow)
                         .where(col(RunRow.state).in_(active))).one()
    if total >= limits.max_concurrent_runs:
        raise DevflowError(
            Code.ACTIVE_RUN_EXISTS,
            f"{total} runs are active, the limit is "
            f"max_concurrent_runs={limits.max_concurrent_runs}",
            hint="wait for a run to finish (devflow run list --state executing) or raise "
                 "max_concurrent_runs")


def _port_block(session: Session, ports: Ports) -> int:
    """The first block no active run holds and whose ports are free on this machine."""
    active = [str(s) for s in states.ACTIVE]
    taken = set(session.exec(select(RunRow.port_base).where(
        col(RunRow.state).in_(active), col(RunRow.port_base).is_not(None))).all())
    for base in range(ports.first, ports.last - ports.size + 2, ports.size):
        if base not in taken and ports.is_free(base, ports.size):
            return base
    raise DevflowError(Code.ACTIVE_RUN_EXISTS,
                       f"no free block of {ports.size} ports between {ports.first} and "
                       f"{ports.last}", hint="widen port_range in config.yaml or wait for runs "
                                             "to end")


def _by_prefix(session: Session, run_id: str) -> RunRow:
    if len(run_id) >= 4:
        found = session.exec(select(RunRow).where(col(RunRow.id).startswith(run_id))
                             .limit(2)).all()
        if len(found) == 1:
            return found[0]
    raise _not_found(run_id)


def _not_found(run_id: str) -> DevflowError:
    return DevflowError(Code.RUN_NOT_FOUND, f"no run {run_id}",
                        hint="`devflow run list` shows the runs", run_id=run_id)
