"""Driving a run: a loop under a lease, until a gate, a pause, the end, or a lost lease.

Each turn reads the run, makes sure its worktree exists, and takes the next step:
skip a phase without artifact, run the attempts of the next pending phase, add the
phases of a completed phase plan, or complete the run. Beside the loop a heartbeat
renews the lease; if the lease is lost, or the run was aborted from elsewhere, the
loop is cancelled (which terminates a running agent) and nothing more is written.
Finishing (terminal state, report) is shielded from cancellation.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import anyio

from devflow import logs, model
from devflow.definitions import Persona
from devflow.engine import agent, attempt, finish, plan, setup, workspace
from devflow.engine.context import Context
from devflow.errors import Code, DevflowError, LeaseLost
from devflow.states import RUNNABLE, TERMINAL, PhaseState, RunState
from devflow.store import RunTx

log = logs.get_logger("devflow.engine")


async def drive(ctx: Context, run_id: str, lease: model.Lease,
                stop: anyio.Event | None = None) -> model.Run:
    """Drive the run while it is runnable; release the lease when it stops.

    ``stop`` (a worker shutting down) ends the drive before its next step; being
    cancelled from outside (the worker's grace period ran out) records the attempt
    under way as interrupted, which also terminates its agent.
    """
    lost = anyio.Event()
    outage: DevflowError | None = None
    bound = log.bind(run_id=run_id, owner=lease.owner, fence=lease.fence)
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(_heartbeat, ctx, run_id, lease, lost, group.cancel_scope)
            try:
                await _loop(ctx, run_id, lease, stop)
            except LeaseLost:
                lost.set()
            except agent.Stop as why:
                bound.info("drive_stopped", why=str(why))
            except DevflowError as exc:
                if exc.code is Code.DATABASE_ERROR:
                    # The run is not at fault: stop, keep the lease (it runs out) and let
                    # the sweep record the interrupted attempt when the database is back.
                    bound.error("drive_database_error", error=exc.message)
                    lost.set()
                    outage = exc
                else:
                    await _fail_unless_stopped(ctx, run_id, lease, exc, lost)
            except Exception as exc:  # noqa: BLE001 - a bug must not leave the run half-way
                bound.exception("drive_crashed")
                await _fail_unless_stopped(ctx, run_id, lease, DevflowError(
                    Code.INTERNAL, f"{type(exc).__name__}: {exc}",
                    hint="this is a bug in devflow; the log has the traceback"), lost)
            group.cancel_scope.cancel()
    except anyio.get_cancelled_exc_class():
        with anyio.CancelScope(shield=True):
            try:
                await ctx.achange(run_id, functools.partial(
                    interrupt_in, reason="its driver was stopped"), lease)
            except (LeaseLost, DevflowError):
                lost.set()
        raise
    finally:
        with anyio.CancelScope(shield=True):
            if not lost.is_set():
                await ctx.call(ctx.store.leases.release, run_id, lease)
    if outage is not None:
        raise outage
    run = await ctx.call(ctx.store.runs.get, run_id)
    if lost.is_set():
        await _say_lost(ctx, run, lease, bound)
    return run


async def _say_lost(ctx: Context, run: model.Run, lease: model.Lease, bound: Any) -> None:
    """A run a person ended from elsewhere (an abort or a decision takes the lease, and
    leaves its fence as it was) is what was asked: info, naming who. A lease another
    driver or the sweep took is a warning."""
    by = None
    if run.state in TERMINAL and run.lease_fence == lease.fence:
        ended = await ctx.call(ctx.store.events.tail, run.id, 20)
        by = next((e.payload.get("by") for e in reversed(ended)
                   if e.type == f"run.{run.state}"), None)
    if not isinstance(by, str) or by in ("devflow", "sweep") or by.startswith("system:"):
        bound.warning("lease_lost")
        return
    bound.info("run_ended_elsewhere", state=str(run.state), by=by)


def interrupt_in(tx: RunTx, reason: str) -> list[str]:
    """Record the attempt under way as interrupted: its phase goes back to pending."""
    tx.close_invocations(outcome="interrupted", reason=reason)
    keys = []
    for phase in tx.phases():
        if phase.state in (PhaseState.RUNNING, PhaseState.VALIDATING):
            tx.move_phase(phase.key, PhaseState.PENDING, model.NewEvent(
                "phase.interrupted", phase.key, {"attempt": phase.attempt, "reason": reason}),
                control=phase.control.interrupted_at(tx.run.checkpoint_sha))
            keys.append(phase.key)
    return keys


async def _fail_unless_stopped(ctx: Context, run_id: str, lease: model.Lease,
                               exc: DevflowError, lost: anyio.Event) -> None:
    run = await ctx.call(ctx.store.runs.get, run_id)
    if exc.code is Code.ILLEGAL_TRANSITION and run.state not in RUNNABLE:
        return  # paused or ended from elsewhere while we worked: stop quietly
    log.error("drive_failed", run_id=run_id, code=str(exc.code), error=exc.message)
    with anyio.CancelScope(shield=True):
        try:
            await ctx.call(finish.fail, ctx, run_id, exc.code, exc.message, lease=lease)
        except LeaseLost:
            lost.set()


async def _heartbeat(ctx: Context, run_id: str, lease: model.Lease, lost: anyio.Event,
                     scope: anyio.CancelScope) -> None:
    while True:
        await anyio.sleep(ctx.settings.heartbeat_seconds)
        try:
            run = await ctx.call(ctx.store.leases.renew, run_id, lease,
                                 ctx.settings.lease_seconds)
        except LeaseLost:
            lost.set()
            scope.cancel()
            return
        except DevflowError as exc:  # the database is away: keep trying until the lease runs out
            log.warning("heartbeat_failed", run_id=run_id, error=exc.message)
            continue
        if run.state in TERMINAL:
            scope.cancel()
            return


async def _loop(ctx: Context, run_id: str, lease: model.Lease,
                stop: anyio.Event | None) -> None:
    bindings = {b.role: b for b in await ctx.call(ctx.store.runs.bindings, run_id)}
    ctx.remember_secrets(bindings.values())
    #: each role's persona, loaded from its binding once per drive, when first needed
    personas: dict[str, Persona] = {}
    # What the last phase's own transaction left; a change made from elsewhere since
    # (pause, abort) is caught by the next transaction, which locks the run and checks.
    settled: tuple[model.Run, list[model.Phase]] | None = None
    while True:
        if stop is not None and stop.is_set():
            return
        if settled is None:
            settled = await ctx.call(ctx.store.runs.snapshot, run_id)
        (run, phases), settled = settled, None
        if run.state not in RUNNABLE:
            return
        if not (Path(run.worktree) / ".git").exists():
            await ctx.call(workspace.ensure_worktree, ctx, run, lease)
        if run.template_def.get("setup") and not run.options.get("setup_done"):
            if not await setup.run_setup(ctx, run, lease):
                return
            continue
        step = next((p for p in phases if p.state in (PhaseState.PENDING, PhaseState.VALIDATING,
                                                      PhaseState.RUNNING)), None)
        if step is None:
            added = await ctx.achange(run_id, lambda tx: plan.apply_next(
                tx, ctx.catalog.schemas), lease)
            if added:
                continue
            with anyio.CancelScope(shield=True):
                await ctx.call(finish.terminate, ctx, run_id, RunState.COMPLETED, lease=lease)
            return
        if step.state is PhaseState.RUNNING:
            # Only a driver that died leaves this; the sweep normally recovers it first.
            await ctx.achange(run_id, functools.partial(
                interrupt_in, reason="found running when the lease was taken"), lease)
            continue
        if step.definition.artifact is None:
            await ctx.achange(run_id, functools.partial(_skip, key=step.key), lease)
            continue
        role = step.definition.role
        if role not in personas:
            personas[role] = ctx.catalog.load_persona_definition(bindings[role].persona_def)
        settled = await attempt.run_phase(ctx, run, step, phases, bindings[role],
                                          personas[role], lease)


def _skip(tx: RunTx, key: str) -> None:
    tx.move_phase(key, PhaseState.SKIPPED, model.NewEvent("phase.skipped", key,
                                                          {"reason": "no artifact"}))
