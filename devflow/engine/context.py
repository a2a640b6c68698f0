"""What the engine works with: settings, store, catalog, clock, host, and who watches.

The store's verbs are short synchronous transactions; the async core calls them
through ``call`` (a worker thread, with a limiter no larger than the connection pool).
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import anyio
import anyio.to_thread

from devflow import model, redact
from devflow.backends import process
from devflow.backends.base import BASE_ENV
from devflow.catalog import Catalog
from devflow.engine import finish
from devflow.settings import Settings
from devflow.states import RunState
from devflow.store import Limits, RunTx, Store

T = TypeVar("T")


class Observer(Protocol):
    """Who watches a run being driven: the CLI's progress display, a test, nobody."""

    def event(self, event: model.Event) -> None: ...

    def progress(self, run_id: str, phase: str, text: str) -> None: ...

    def warning(self, text: str) -> None:
        """Something a person must not miss (an agent about to run unsandboxed)."""


class NoObserver:
    def event(self, event: model.Event) -> None:
        pass

    def progress(self, run_id: str, phase: str, text: str) -> None:
        pass

    def warning(self, text: str) -> None:
        pass


def single(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one error a task group failed with (cancellations aside), or the group itself.

    anyio wraps whatever a task group's body raises in an ExceptionGroup; the engine's
    callers match on DevflowError, LeaseLost and Stop, so a lone error is unwrapped.
    """
    leaves: list[BaseException] = []

    def walk(error: BaseException) -> None:
        if isinstance(error, BaseExceptionGroup):
            for inner in error.exceptions:
                walk(inner)
        # asyncio's class, not anyio.get_cancelled_exc_class(): this also runs after
        # anyio.run returned, where there is no event loop to ask (devflow runs on asyncio)
        elif not isinstance(error, asyncio.CancelledError):
            leaves.append(error)
    walk(group)
    return leaves[0] if len(leaves) == 1 else group


def marks(invocation: model.Invocation) -> dict[str, str]:
    """What devflow put in the environment of an invocation's processes (and their
    children's, unless they dropped it)."""
    found = {"DEVFLOW_RUN_ID": invocation.run_id}
    if invocation.kind == "agent" and invocation.phase_key:
        found.update(DEVFLOW_PHASE=invocation.phase_key, DEVFLOW_ATTEMPT=str(invocation.attempt))
    return found


def stop(invocation: model.Invocation) -> str:
    """SIGKILL an invocation's process (and its group, and so its sandbox) on this host,
    if it is still the one recorded: ``process.stop``'s answer."""
    if not invocation.pid or not invocation.pgid:
        return "gone"
    return process.stop(invocation.pid, invocation.pgid, invocation.process_start,
                        marks=marks(invocation))


def new_owner(kind: str) -> str:
    return f"{kind}:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass
class Context:
    settings: Settings
    store: Store
    catalog: Catalog
    observer: Observer = field(default_factory=NoObserver)
    host: str = field(default_factory=socket.gethostname)
    limiter: anyio.CapacityLimiter | None = None

    @property
    def clock(self) -> Callable[[], datetime]:
        return self.store.clock

    def redact(self, value: Any) -> Any:
        return self.store.runs.redact(value) if self.store.runs.redact else value

    def remember_secrets(self, bindings: Iterable[model.Binding]) -> None:
        """What these bindings' personas hand their agents is secret, in everything this
        process writes from now on (events, stored argv, reports, logs)."""
        redactor = self.store.runs.redact
        if isinstance(redactor, redact.Redactor):
            for binding in bindings:
                redactor.add(redact.persona_secrets(os.environ, binding.persona_def, BASE_ENV))

    @property
    def limits(self) -> Limits:
        return Limits(self.settings.max_active_per_branch, self.settings.max_concurrent_runs)

    def run_dir(self, run_id: str) -> Path:
        return self.settings.workspace / run_id

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self.limiter is None:
            self.limiter = anyio.CapacityLimiter(max(self.store.db.pool_size - 1, 1))
        return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs),
                                              limiter=self.limiter)

    def change(self, run_id: str, fn: Callable[[RunTx], T],
               lease: model.Lease | None = None, phase: str | None = None,
               deciding: bool = False) -> T:
        """A RunTx on the run, and what follows its commit: the agents whose invocations
        it closed are stopped, its events go to the observer, and if it ended the run
        (any move into a terminal state, ``RunTx.move_run``) the final report is written.

        This is the one way a run changes (``Runs.change`` has no other caller), so every
        terminal move gets its report here and no caller writes one by hand; a crash
        between the commit and the report leaves it to the sweep (``missing_reports``).
        ``phase``: the phase ``fn`` reads, read with the run's lock; ``deciding``: ``fn``
        may add a decision (``Runs.change``)."""
        def tx(runtx: RunTx) -> tuple[T, list[model.Event], list[model.Invocation],
                                      RunState | None]:
            return fn(runtx), runtx.events, runtx.closed, runtx.ended
        result, events, closed, ended = self.store.runs.change(
            run_id, tx, lease=lease, phase=phase, deciding=deciding)
        for invocation in closed:  # agents whose invocation this change ended: stop them
            if invocation.host == self.host:
                stop(invocation)
        for event in events:
            self.observer.event(event)
        if ended is not None:
            finish.write_report(self, run_id)
        return result

    async def achange(self, run_id: str, fn: Callable[[RunTx], T],
                      lease: model.Lease | None = None, phase: str | None = None) -> T:
        return await self.call(self.change, run_id, fn, lease, phase)
