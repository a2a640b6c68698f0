"""The move tables of devflow.states: walked as graphs, and every illegal move refused."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

import pytest

from devflow import states
from devflow.errors import Code, DevflowError, Kind
from devflow.states import ApprovalState, PhaseState, RunState

MACHINES = {
    "run": (states.RUN_MOVES, RunState.CREATED, states.TERMINAL, states.check_run_move),
    "phase": (states.PHASE_MOVES, PhaseState.PENDING, states.PHASE_FINAL,
              states.check_phase_move),
    "approval": (states.APPROVAL_MOVES, ApprovalState.PENDING, states.APPROVAL_FINAL,
                 states.check_approval_move),
}


def _walk(moves: Mapping[enum.StrEnum, frozenset[enum.StrEnum]],
          start: enum.StrEnum) -> set[enum.StrEnum]:
    """Breadth-first walk written here, independent of states.reachable."""
    seen, frontier = {start}, [start]
    while frontier:
        frontier = [n for s in frontier for n in moves[s] if n not in seen]
        seen.update(frontier)
    return seen


@pytest.mark.parametrize("machine", sorted(MACHINES))
def test_every_state_has_a_row_and_every_target_is_a_state(machine: str) -> None:
    moves, initial, _final, _check = MACHINES[machine]
    every = set(type(initial))
    assert set(moves) == every
    for targets in moves.values():
        assert targets <= every


@pytest.mark.parametrize("machine", sorted(MACHINES))
def test_every_state_is_reachable_from_the_initial_one(machine: str) -> None:
    moves, initial, _final, _check = MACHINES[machine]
    assert _walk(moves, initial) == set(type(initial))
    assert states.reachable(moves, initial) == frozenset(type(initial))


@pytest.mark.parametrize("machine", sorted(MACHINES))
def test_no_state_is_a_trap(machine: str) -> None:
    moves, _initial, final, _check = MACHINES[machine]
    for state in set(moves) - final:
        assert _walk(moves, state) & final, f"{state} cannot reach a final state"


@pytest.mark.parametrize("machine", sorted(MACHINES))
def test_final_states_have_no_moves(machine: str) -> None:
    moves, _initial, final, check = MACHINES[machine]
    assert final
    for state in final:
        assert moves[state] == frozenset()
        for target in type(state):
            with pytest.raises(DevflowError) as caught:
                check(state, target)
            assert caught.value.code is Code.ILLEGAL_TRANSITION
            assert "final" in caught.value.hint


def test_run_table_matches_the_design() -> None:
    """DESIGN.md §2: the run's moves, spelled out."""
    r = RunState
    terminal = {r.COMPLETED, r.FAILED, r.ABORTED}
    assert terminal == states.TERMINAL
    assert states.RUN_MOVES[r.CREATED] == {r.BOUND} | terminal
    assert states.RUN_MOVES[r.BOUND] >= {r.EXECUTING} | terminal
    assert {r.PLANNING, r.AWAITING_APPROVAL, r.PAUSED} <= states.RUN_MOVES[r.EXECUTING]
    assert {r.EXECUTING, r.PLANNING} <= states.RUN_MOVES[r.AWAITING_APPROVAL]
    # bound -> paused: a fault of the machine (a full disk) stopped it before its first
    # attempt (issue 20); resume takes it back to bound
    assert states.RUN_MOVES[r.PAUSED] == {r.BOUND, r.EXECUTING, r.PLANNING,
                                          r.AWAITING_APPROVAL} | terminal
    for state in set(r) - terminal:
        assert terminal <= states.RUN_MOVES[state], f"{state} cannot be ended"
    # created is never paused; nothing goes back to created
    assert r.PAUSED not in states.RUN_MOVES[r.CREATED]
    assert r.PAUSED in states.RUN_MOVES[r.BOUND]
    assert all(r.CREATED not in targets for targets in states.RUN_MOVES.values())


def test_phase_table_matches_the_design() -> None:
    p = PhaseState
    moves = states.PHASE_MOVES
    assert {p.RUNNING, p.SKIPPED} <= moves[p.PENDING]
    assert {p.VALIDATING, p.PENDING} <= moves[p.RUNNING]  # pending: the sweep's recovery
    assert {p.RUNNING, p.AWAITING_APPROVAL, p.COMPLETED, p.FAILED, p.PENDING} <= moves[
        p.VALIDATING]
    assert {p.COMPLETED, p.PENDING} <= moves[p.AWAITING_APPROVAL]  # pending: request_changes
    assert p.COMPLETED not in moves[p.PENDING] | moves[p.RUNNING]  # completion is validated
    assert p.SKIPPED not in moves[p.RUNNING] | moves[p.VALIDATING]


@pytest.mark.parametrize("machine", sorted(MACHINES))
def test_check_accepts_exactly_the_moves_of_the_table(machine: str) -> None:
    moves, initial, _final, check = MACHINES[machine]
    for current in type(initial):
        for target in type(initial):
            if target in moves[current]:
                check(current, target)  # no exception
                continue
            with pytest.raises(DevflowError) as caught:
                check(current, target)
            error = caught.value
            assert error.code is Code.ILLEGAL_TRANSITION
            assert error.kind is Kind.CONFLICT and error.exit_code == 3
            assert str(current) in error.message and str(target) in error.message
            assert error.hint.startswith(f"from {current} it can move to:")
            for allowed in moves[current]:
                assert str(allowed) in error.hint
            assert error.details == {"current": str(current), "requested": str(target)}


def test_an_illegal_run_move_names_what_is_allowed() -> None:
    with pytest.raises(DevflowError) as caught:
        states.check_run_move(RunState.CREATED, RunState.EXECUTING)
    assert caught.value.code == "illegal_transition"
    assert caught.value.hint == ("from created it can move to: aborted, bound, completed, "
                                 "failed")
    assert caught.value.to_json()["code"] == "illegal_transition"


def test_a_state_does_not_move_to_itself() -> None:
    for machine in MACHINES.values():
        moves, _initial, _final, check = machine
        for state in moves:
            assert state not in moves[state]
            with pytest.raises(DevflowError):
                check(state, state)


# -- check_graph rejects malformed machines ---------------------------------------------------
class Toy(enum.StrEnum):
    A = "a"
    B = "b"
    C = "c"
    END = "end"


END = frozenset({Toy.END})


def _table(**moves: set[Toy]) -> Mapping[Toy, frozenset[Toy]]:
    return MappingProxyType({Toy(k.lower()): frozenset(v) for k, v in moves.items()})


def test_check_graph_accepts_a_good_machine() -> None:
    states.check_graph(_table(A={Toy.B}, B={Toy.C, Toy.END}, C={Toy.A}, END=set()), Toy.A, END)


def test_check_graph_rejects_an_unreachable_state() -> None:
    table = _table(A={Toy.END}, B={Toy.END}, C={Toy.END}, END=set())
    with pytest.raises(ValueError, match="unreachable states") as caught:
        states.check_graph(table, Toy.A, END)
    assert "b" in str(caught.value) and "c" in str(caught.value)


def test_check_graph_rejects_a_trap() -> None:
    table = _table(A={Toy.B, Toy.END}, B={Toy.C}, C={Toy.B}, END=set())
    with pytest.raises(ValueError, match="trap"):
        states.check_graph(table, Toy.A, END)


def test_check_graph_rejects_a_final_state_with_a_way_out() -> None:
    table = _table(A={Toy.B}, B={Toy.C}, C={Toy.END}, END={Toy.A})
    with pytest.raises(ValueError, match="final state end has moves"):
        states.check_graph(table, Toy.A, END)


def test_sets_derived_from_the_tables_agree() -> None:
    assert frozenset(RunState) - states.TERMINAL == states.ACTIVE
    assert states.RUNNABLE <= states.ACTIVE
    assert {s for s in RunState if RunState.PAUSED in states.RUN_MOVES[s]} == states.PAUSABLE
    assert states.PHASE_ACTIVE.isdisjoint(states.PHASE_FINAL)
    assert set(states.ACTION_OUTCOME.values()) == set(states.APPROVAL_FINAL)
