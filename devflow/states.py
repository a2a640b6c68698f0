"""Every state machine of devflow, as data: the states and the one table of moves each.

Run, phase and approval-request states live here and nowhere else. A move is legal
when the table lists it; ``check_*_move`` raises ``illegal_transition`` otherwise.
The graphs are checked when this module is imported: every state is reachable from
the initial one, no non-final state is a trap, and a final state has no way out.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Final, TypeVar

from devflow.errors import Code, DevflowError


class RunState(enum.StrEnum):
    CREATED = "created"
    BOUND = "bound"
    EXECUTING = "executing"
    PLANNING = "planning"
    AWAITING_APPROVAL = "awaiting_approval"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    ABORTED = "aborted"


class PhaseState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    VALIDATING = "validating"
    AWAITING_APPROVAL = "awaiting_approval"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"


class ApprovalState(enum.StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    CHANGES_REQUESTED = "changes_requested"
    ABORTED = "aborted"


TERMINAL: Final = frozenset({RunState.COMPLETED, RunState.FAILED, RunState.ABORTED})
#: A run in one of these states may be driven by a worker.
RUNNABLE: Final = frozenset({RunState.BOUND, RunState.EXECUTING, RunState.PLANNING})
#: A run in one of these states counts against the concurrency limits.
ACTIVE: Final = frozenset(RunState) - TERMINAL
#: States a run may be paused from, and so the states ``resume`` returns to. A bound run
#: is paused when a fault of the machine stops it before its first attempt (issue 20).
PAUSABLE: Final = frozenset({RunState.BOUND, RunState.EXECUTING, RunState.PLANNING,
                             RunState.AWAITING_APPROVAL})

RUN_MOVES: Final[Mapping[RunState, frozenset[RunState]]] = MappingProxyType({
    RunState.CREATED: frozenset({RunState.BOUND}) | TERMINAL,
    RunState.BOUND: frozenset({RunState.EXECUTING, RunState.PLANNING,
                               RunState.PAUSED}) | TERMINAL,
    RunState.EXECUTING: frozenset({RunState.PLANNING, RunState.AWAITING_APPROVAL,
                                   RunState.PAUSED}) | TERMINAL,
    RunState.PLANNING: frozenset({RunState.EXECUTING, RunState.AWAITING_APPROVAL,
                                  RunState.PAUSED}) | TERMINAL,
    RunState.AWAITING_APPROVAL: frozenset({RunState.EXECUTING, RunState.PLANNING,
                                           RunState.PAUSED}) | TERMINAL,
    RunState.PAUSED: PAUSABLE | TERMINAL,
    **{state: frozenset() for state in TERMINAL},
})

PHASE_FINAL: Final = frozenset({PhaseState.COMPLETED, PhaseState.FAILED, PhaseState.SKIPPED})
#: A phase in one of these states has an attempt under way.
PHASE_ACTIVE: Final = frozenset({PhaseState.RUNNING, PhaseState.VALIDATING,
                                 PhaseState.AWAITING_APPROVAL})

PHASE_MOVES: Final[Mapping[PhaseState, frozenset[PhaseState]]] = MappingProxyType({
    PhaseState.PENDING: frozenset({PhaseState.RUNNING, PhaseState.SKIPPED, PhaseState.FAILED}),
    # running -> pending: the sweep recovered an attempt a dead worker left.
    PhaseState.RUNNING: frozenset({PhaseState.VALIDATING, PhaseState.PENDING,
                                   PhaseState.FAILED}),
    # validating -> running: a repair attempt, with the validation errors in its prompt.
    PhaseState.VALIDATING: frozenset({PhaseState.RUNNING, PhaseState.AWAITING_APPROVAL,
                                      PhaseState.COMPLETED, PhaseState.PENDING,
                                      PhaseState.FAILED}),
    # awaiting_approval -> pending: changes were requested; the next attempt follows.
    PhaseState.AWAITING_APPROVAL: frozenset({PhaseState.COMPLETED, PhaseState.PENDING,
                                             PhaseState.FAILED}),
    **{state: frozenset() for state in PHASE_FINAL},
})

APPROVAL_FINAL: Final = frozenset(ApprovalState) - {ApprovalState.PENDING}
APPROVAL_MOVES: Final[Mapping[ApprovalState, frozenset[ApprovalState]]] = MappingProxyType({
    ApprovalState.PENDING: APPROVAL_FINAL,
    **{state: frozenset() for state in APPROVAL_FINAL},
})

#: The approval request's final state for each decision action.
ACTION_OUTCOME: Final[Mapping[str, ApprovalState]] = MappingProxyType({
    "approve": ApprovalState.APPROVED,
    "reject": ApprovalState.REJECTED,
    "request_changes": ApprovalState.CHANGES_REQUESTED,
    "abort": ApprovalState.ABORTED,
})


def check_run_move(current: RunState, to: RunState) -> None:
    if to not in RUN_MOVES[current]:
        raise _illegal("run", current, to, RUN_MOVES[current])


def check_phase_move(current: PhaseState, to: PhaseState) -> None:
    if to not in PHASE_MOVES[current]:
        raise _illegal("phase", current, to, PHASE_MOVES[current])


def check_approval_move(current: ApprovalState, to: ApprovalState) -> None:
    if to not in APPROVAL_MOVES[current]:
        raise _illegal("approval request", current, to, APPROVAL_MOVES[current])


def _illegal(what: str, current: enum.StrEnum, to: enum.StrEnum,
             allowed: Iterable[enum.StrEnum]) -> DevflowError:
    options = ", ".join(sorted(str(s) for s in allowed)) or "none: it is final"
    return DevflowError(
        Code.ILLEGAL_TRANSITION,
        f"a {what} in state {current} cannot move to {to}",
        hint=f"from {current} it can move to: {options}",
        current=str(current), requested=str(to),
    )


S = TypeVar("S", bound=enum.StrEnum)


def reachable(moves: Mapping[S, frozenset[S]], start: S) -> frozenset[S]:
    seen, todo = {start}, [start]
    while todo:
        for nxt in moves[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return frozenset(seen)


def check_graph(moves: Mapping[S, frozenset[S]], initial: S, final: frozenset[S]) -> None:
    """Raise ValueError unless the machine is well formed (see the module docstring)."""
    states = set(moves)
    if unreachable := states - reachable(moves, initial):
        raise ValueError(f"unreachable states: {sorted(unreachable)}")
    for state in states - final:
        if not reachable(moves, state) & final:
            raise ValueError(f"{state} is a trap: no final state can be reached from it")
    for state in final:
        if moves[state]:
            raise ValueError(f"final state {state} has moves out of it")


check_graph(RUN_MOVES, RunState.CREATED, TERMINAL)
check_graph(PHASE_MOVES, PhaseState.PENDING, PHASE_FINAL)
check_graph(APPROVAL_MOVES, ApprovalState.PENDING, APPROVAL_FINAL)
