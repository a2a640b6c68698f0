"""Exceptions that steer control flow (``errors.ControlFlow``: a lost lease, a run that
cannot take another step, a foreground drive stopped by a signal, a closed pipe) are out
of reach of an ``except Exception`` meant for failures, as asyncio's CancelledError is:
in plain code, and in the agent's process path, where the engine raises them from the
callback ``process.run`` awaits while the agent's process runs."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import anyio
import pytest

from devflow import errors
from devflow.backends import process
from devflow.cli import output
from devflow.engine import agent
from devflow.errors import ControlFlow, Interrupted, LeaseLost


def _subclasses(cls: type[BaseException]) -> set[type[BaseException]]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub, *_subclasses(sub)}
    return found


def _instances() -> list[BaseException]:
    return [LeaseLost("r-1"), agent.Stop("run is paused"), Interrupted("r-1", signal.SIGINT),
            output.PipeClosed()]


def test_every_control_flow_exception_is_a_base_exception_only() -> None:
    named = {type(e) for e in _instances()}
    assert named == _subclasses(ControlFlow), "a new ControlFlow subclass: add it above"
    for cls in named:
        assert issubclass(cls, BaseException) and not issubclass(cls, Exception), cls
        assert not issubclass(cls, errors.DevflowError), cls


@pytest.mark.parametrize("exc", _instances(), ids=lambda e: type(e).__name__)
def test_except_exception_does_not_swallow_it(exc: BaseException) -> None:
    def handler() -> str:
        try:
            raise exc
        except Exception:  # noqa: BLE001 - the handler under test
            return "swallowed"

    with pytest.raises(type(exc)):
        handler()


def test_a_lost_lease_still_tells_a_person_what_happened() -> None:
    error = LeaseLost("r-9").error()
    assert error.code is errors.Code.LEASE_LOST and error.details == {"run_id": "r-9"}
    assert error.exit_code == 3 and "r-9" in error.message


@pytest.mark.parametrize("exc", [LeaseLost("r-1"), agent.Stop("run is aborted")],
                         ids=lambda e: type(e).__name__)
def test_the_agent_process_path_lets_it_through_and_kills_the_agent(
        tmp_path: Path, exc: BaseException) -> None:
    """The engine records the agent's start from ``on_start`` while the process runs; a
    lost lease or a run that may not go on raises there. A caller handling failures with
    ``except Exception`` around ``process.run`` does not see it, and the agent is killed."""
    spawn = process.Spawn(argv=["sleep", "60"], cwd=tmp_path, env={"PATH": os.environ["PATH"]},
                          stdout_log=tmp_path / "out.log", stderr_log=tmp_path / "err.log",
                          timeout=60)
    seen: list[process.Started] = []

    async def on_start(started: process.Started) -> None:
        seen.append(started)
        raise exc

    async def attempt() -> str:
        try:
            await process.run(spawn, on_start=on_start)
        except Exception:  # noqa: BLE001 - the handler under test
            return "swallowed"
        return "ran"

    with pytest.raises(type(exc)):
        anyio.run(attempt)
    assert seen and process.start_time(seen[0].pid) is None  # killed and reaped
