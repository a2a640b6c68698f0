"""Schedule triggers, evaluated: due ticks decided under the trigger's lock, then started.

Workers evaluate the triggers they see at each look for runnable runs, and so does
``devflow sweep``: any number of them may do it at once. A trigger's ticks are
decided in one transaction under its lock (``devflow.ticks.plan``: missed, skipped,
buffered, or pending to start); each pending tick is then started as a detached run
whose insert claims the tick in the same transaction, so a tick starts one run
however many evaluate it. A start refused for the state of things (another run active
on the branch, the limit of runs) leaves the tick pending, tried again until its
grace has passed; refused as bad input (a template gone, a repository moved), it is
``failed`` at once, with the error, for ``devflow triggers show``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio

from devflow import faults, logs, model, ticks, triggerdefs
from devflow.engine import start
from devflow.engine.context import Context, new_owner, single
from devflow.errors import Code, DevflowError, Kind
from devflow.requests import StartRequest, TickClaim
from devflow.triggerdefs import Trigger

log = logs.get_logger("devflow.triggers")


@dataclass(frozen=True)
class Outcome:
    """What became of one tick in this evaluation."""

    trigger: str
    scheduled_at: datetime
    outcome: str  # started | missed | skipped | buffered | failed | deferred | taken
    run_id: str | None = None
    reason: str | None = None
    #: why the start was refused (failed, deferred, taken)
    error: DevflowError | None = field(default=None, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {"trigger": self.trigger, "scheduled_at": self.scheduled_at.isoformat(),
                "outcome": self.outcome, "run_id": self.run_id, "reason": self.reason}


def evaluate_all(ctx: Context) -> list[Outcome]:
    """Evaluate every schedule trigger that may have something due (one read to see which)."""
    triggers = [t for t in ctx.catalog.triggers() if t.schedule is not None]
    if not triggers:
        return []
    now = ctx.clock()
    seen = ctx.store.triggers.overview([t.name for t in triggers])
    outcomes: list[Outcome] = []
    for trigger in triggers:
        found = seen[trigger.name]
        if not ticks.anything_due(trigger, found.state, found.open_ticks, now):
            continue
        try:
            outcomes += evaluate(ctx, trigger)
        except DevflowError as exc:  # the database went away: the next look tries again
            log.warning("trigger_evaluation_failed", trigger=trigger.name, error=exc.message)
    return outcomes


def evaluate(ctx: Context, trigger: Trigger) -> list[Outcome]:
    """Decide the trigger's due ticks, then start those to start."""
    now = ctx.clock()

    def decide(state: ticks.TriggerState, open_ticks: list[ticks.Tick],
               active: list[str]) -> ticks.Plan:
        return ticks.plan(trigger, state, open_ticks, active, now)

    plan, to_start = ctx.store.triggers.evaluate(trigger.name, decide, claim_seconds(ctx))
    faults.point("tick_decided")
    outcomes = [Outcome(trigger.name, d.scheduled_at, d.state, reason=d.reason)
                for d in plan.decided if d.state != ticks.PENDING]
    for tick in to_start:
        outcomes.append(start_tick(ctx, trigger, tick))
    for outcome in outcomes:
        log.info("tick", trigger=outcome.trigger, scheduled_at=outcome.scheduled_at.isoformat(),
                 outcome=outcome.outcome, run_id=outcome.run_id, reason=outcome.reason)
    return outcomes


def fire(ctx: Context, trigger: Trigger, actor: str) -> Outcome:
    """A tick of the trigger now, by hand, started at once (whether paused or not, whatever
    its overlap policy: a person asked for it; the limits of runs still hold). A refused
    start is raised, as the start's own error, with what became of the tick."""
    tick = ctx.store.triggers.fire(trigger.name, actor, claim_seconds(ctx))
    outcome = start_tick(ctx, trigger, tick)
    if outcome.error is None:
        return outcome
    exc = outcome.error
    then = ("the tick stays pending and is tried again while its grace lasts"
            if outcome.outcome == "deferred" else f"the tick is {outcome.outcome}")
    raise DevflowError(exc.code, f"trigger {trigger.name}: no run started: {exc.message}",
                       hint=f"{then}; {exc.hint}" if exc.hint else then,
                       trigger=trigger.name, scheduled_at=tick.scheduled_at.isoformat())


def start_tick(ctx: Context, trigger: Trigger, tick: ticks.Tick) -> Outcome:
    """Start the run of a pending tick (detached: workers drive it)."""
    claim = TickClaim(trigger.name, tick.scheduled_at)
    fields = ticks.fields(trigger, tick.scheduled_at, tick.kind, tick.fired_by)
    request = StartRequest(
        repo=Path(trigger.repo).expanduser(), base=trigger.base, template=trigger.template,
        requirements=triggerdefs.requirements_for(trigger, fields),
        actor=tick.fired_by or f"trigger:{trigger.name}", binds=dict(trigger.bindings),
        tick=claim)
    try:
        run = start_detached(ctx, request, new_owner(f"trigger-{trigger.name}"))
    except DevflowError as exc:
        if exc.code is Code.TICK_TAKEN:
            return Outcome(trigger.name, tick.scheduled_at, "taken", reason=exc.message,
                           error=exc)
        give_up = exc.kind is not Kind.CONFLICT
        ctx.store.triggers.release(claim, exc, give_up=give_up)
        return Outcome(trigger.name, tick.scheduled_at, "failed" if give_up else "deferred",
                       reason=f"{exc.code}: {exc.message}", error=exc)
    return Outcome(trigger.name, tick.scheduled_at, "started", run_id=run.id)


def start_detached(ctx: Context, request: StartRequest, owner: str) -> model.Run:
    """``start.start_detached`` from this synchronous step: on the caller's event loop
    when it runs in one of that loop's worker threads (a worker's pass), else on a loop
    of its own (the sweep, ``triggers fire``)."""
    try:
        return anyio.from_thread.run(start.start_detached, ctx, request, owner)
    except anyio.NoEventLoopError:
        pass
    try:
        return anyio.run(start.start_detached, ctx, request, owner)
    except BaseExceptionGroup as failed:
        raise single(failed) from None


def claim_seconds(ctx: Context) -> float:
    """How long a starter holds a pending tick before another may start it instead: a
    start makes a worktree, which can take a while on a large repository."""
    return max(2 * ctx.settings.lease_seconds, 60.0)
