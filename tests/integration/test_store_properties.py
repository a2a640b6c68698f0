"""A property test of the store's state changes: random operations through ``Runs.change``.

Hypothesis drives a real store (SQLite and PostgreSQL) with random run moves, phase
moves, events (some with idempotency keys used before), compound transactions and
terminations, and after every step checks against a model and the move tables:
a terminal run never changes, event numbers are 1..n without gaps, every state
reached was allowed by the table, and a refused operation writes nothing.
"""

from __future__ import annotations

import itertools
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from devflow import model, states
from devflow.catalog import Catalog, Dirs
from devflow.definitions import Template
from devflow.errors import Code, DevflowError
from devflow.states import PhaseState, RunState
from devflow.store import Limits, NewRun, RunTx, Store
from devflow.transitions import terminate_in

# Moves between live states are drawn often; ending the run is a rule of its own, enabled
# only after a while, so that runs live long enough to pause, resume and wait at gates,
# and the steps after the end show that a terminal run never changes.
LIVE_TARGETS = [s for s in RunState if s not in states.TERMINAL]
ENDS = sorted(states.TERMINAL)
PHASE_TARGETS = list(PhaseState)
STEPS = 30
END_AFTER = 15
LIMITS = Limits(max_active_per_branch=10_000, max_concurrent_runs=10_000)
_ids = itertools.count()


def new_run(template: Template, catalog: Catalog, run_id: str) -> NewRun:
    personas = {role: catalog.persona(f"scripted-{role}@1") for role in template.roles}
    bindings = [model.Binding(role=role, persona_name=p.name, persona_version=p.version,
                              persona_hash=p.hash, backend=p.backend, backend_version=None,
                              persona_def=dict(p.definition)) for role, p in personas.items()]
    return NewRun(
        id=run_id, template_name=template.name, template_version=template.version,
        template_hash=template.hash, template_def=dict(template.definition), repo="/srv/repo",
        base=f"branch-{run_id}", base_sha=None, branch=f"devflow/{run_id}/main",
        workspace=f"/srv/ws/{run_id}", worktree=f"/srv/ws/{run_id}/main", host="test-host",
        requirements="Add a farewell.", objective=None, created_by="tester",
        bindings=bindings, phases=template.phases)


class RunMachine(RuleBasedStateMachine):
    store: ClassVar[Store]
    catalog: ClassVar[Catalog]
    template: ClassVar[Template]

    @initialize()
    def create(self) -> None:
        self.run_id = f"prop-{next(_ids)}"
        run = self.store.runs.create(new_run(self.template, self.catalog, self.run_id), LIMITS)
        assert run.state is RunState.BOUND
        self.state = RunState.BOUND
        self.paused_from: RunState | None = None
        self.phases = {p.key: PhaseState.PENDING for p in self.template.phases}
        self.events = 2  # run.created, run.bound
        self.keys: dict[str, int] = {}
        self.observed = [RunState.CREATED, RunState.BOUND]
        self.ended_at: Any = None
        self.steps = 0

    # -- helpers ---------------------------------------------------------------------------
    def _change(self, fn: Any) -> Any:
        self.steps += 1
        return self.store.runs.change(self.run_id, fn)

    def _refused(self, fn: Any) -> None:
        self.steps += 1
        before = self.store.runs.get(self.run_id)
        with pytest.raises(DevflowError) as caught:
            self._change(fn)
        assert caught.value.code is Code.ILLEGAL_TRANSITION
        assert caught.value.hint
        after = self.store.runs.get(self.run_id)
        assert after == before, "a refused change wrote something"

    def _run_moved(self, to: RunState) -> None:
        if to is RunState.PAUSED:
            self.paused_from = self.state
        elif self.state is RunState.PAUSED:
            self.paused_from = None
        self.state = to

    # -- rules -----------------------------------------------------------------------------
    @rule(to=st.sampled_from(LIVE_TARGETS), with_event=st.booleans())
    def move_run(self, to: RunState, with_event: bool) -> None:
        event = model.NewEvent(f"run.{to}") if with_event else None
        if to not in states.RUN_MOVES[self.state]:
            self._refused(lambda tx: tx.move_run(to, event))
            return
        run = self._change(lambda tx: tx.move_run(to, event))
        assert run.state is to
        self._run_moved(to)
        self.events += with_event

    @rule(index=st.integers(0, 3), to=st.sampled_from(PHASE_TARGETS), with_event=st.booleans())
    def move_phase(self, index: int, to: PhaseState, with_event: bool) -> None:
        key = self.template.phases[index].key
        event = model.NewEvent("phase.moved", key, {"to": str(to)}) if with_event else None
        # the phases of a terminal run never move either
        if self.state in states.TERMINAL or to not in states.PHASE_MOVES[self.phases[key]]:
            self._refused(lambda tx: tx.move_phase(key, to, event))
            return
        phase = self._change(lambda tx: tx.move_phase(key, to, event))
        assert phase.state is to
        self.phases[key] = to
        self.events += with_event

    @rule(key=st.one_of(st.none(), st.sampled_from(["a", "b", "c"])), note=st.integers(0, 9))
    def event(self, key: str | None, note: int) -> None:
        full_key = f"{self.run_id}:{key}" if key else None
        appended = self._change(lambda tx: tx.event(
            model.NewEvent("note.added", payload={"note": note}, key=full_key)))
        if full_key in self.keys:
            assert appended.seq == self.keys[full_key]  # the existing event, nothing written
            return
        self.events += 1
        assert appended.seq == self.events
        assert dict(appended.payload) == {"note": note}
        if full_key:
            self.keys[full_key] = appended.seq

    @rule(run_to=st.sampled_from(LIVE_TARGETS), index=st.integers(0, 3),
          phase_to=st.sampled_from(PHASE_TARGETS))
    def compound(self, run_to: RunState, index: int, phase_to: PhaseState) -> None:
        """Two moves in one transaction: both happen, or neither."""
        key = self.template.phases[index].key

        def both(tx: RunTx) -> None:
            tx.move_run(run_to, model.NewEvent(f"run.{run_to}"))
            tx.move_phase(key, phase_to, model.NewEvent("phase.moved", key))

        if (run_to in states.RUN_MOVES[self.state]
                and phase_to in states.PHASE_MOVES[self.phases[key]]):
            self._change(both)
            self._run_moved(run_to)
            self.phases[key] = phase_to
            self.events += 2
        else:
            self._refused(both)

    @precondition(lambda self: self.steps >= END_AFTER)
    @rule(to=st.sampled_from(ENDS), directly=st.booleans())
    def end(self, to: RunState, directly: bool) -> None:
        """End the run: a bare move, or terminate_in (active phases fail with it)."""
        if directly:
            self.move_run(to, with_event=True)
            return
        if self.state in states.TERMINAL:
            self._refused(lambda tx: terminate_in(tx, to, reason="again"))
            return
        self._change(lambda tx: terminate_in(tx, to, code="test_end", reason="ended"))
        for key, phase_state in self.phases.items():
            if phase_state in states.PHASE_ACTIVE:
                self.phases[key] = PhaseState.FAILED
                self.events += 1
        self._run_moved(to)
        self.events += 1

    # -- invariants ------------------------------------------------------------------------
    @invariant()
    def store_agrees_with_the_model_and_the_tables(self) -> None:
        run = self.store.runs.get(self.run_id)
        # the state the store holds, and every state it held, was reached by a legal move
        if run.state is not self.observed[-1]:
            self.observed.append(run.state)
        for before, after in itertools.pairwise(self.observed):
            assert after in states.RUN_MOVES[before], f"{before} -> {after}"
        terminal_at = [i for i, s in enumerate(self.observed) if s in states.TERMINAL]
        assert terminal_at in ([], [len(self.observed) - 1]), "a terminal state was left"
        # a terminal run never changes
        if self.state in states.TERMINAL:
            assert run.ended_at is not None
            if self.ended_at is None:
                self.ended_at = run.ended_at
            assert run.ended_at == self.ended_at, "a terminal run changed"
        else:
            assert run.ended_at is None
        assert run.state is self.state
        assert run.paused_from == self.paused_from
        assert {p.key: p.state for p in self.store.runs.phases(self.run_id)} == self.phases
        # events are numbered 1..n without gaps, n is the run's counter
        assert run.last_seq == self.events
        seqs = [e.seq for e in self.store.events.after(self.run_id)]
        assert seqs == list(range(1, self.events + 1))


def _drive(url: str, examples: int) -> None:
    store = Store.open(url)
    try:
        catalog = Catalog(Dirs.with_builtins())
        RunMachine.store = store
        RunMachine.catalog = catalog
        RunMachine.template = catalog.template("development@1")
        run_state_machine_as_test(RunMachine, settings=settings(
            max_examples=examples, stateful_step_count=STEPS, deadline=None, database=None,
            suppress_health_check=[HealthCheck.too_slow]))
        # the runs the examples made are all there, each with its own gapless log
        runs = store.runs.find(limit=1000)
        assert len(runs) >= examples
        for run in runs:
            assert [e.seq for e in store.events.after(run.id)] == list(
                range(1, run.last_seq + 1))
    finally:
        store.close()


def test_random_operations_keep_the_store_consistent(sqlite_url: str) -> None:
    _drive(sqlite_url, examples=25)


@pytest.mark.slow
@pytest.mark.postgresql
def test_random_operations_keep_the_store_consistent_on_postgresql(pg_url: str) -> None:
    _drive(pg_url, examples=15)
