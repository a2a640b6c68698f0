"""The lease's heartbeat: a held lease renewed on the anyio core while work goes on.

One heartbeat serves every holder of a lease: the driver (``engine.drive``) beside its
loop, and ``run start`` while it makes the worktree (git may wait for another start's
lock, or copy files, longer than a lease lasts). It renews the lease every
``heartbeat_seconds``. When the lease is lost (another driver or the sweep took the
run, or a person ended it from elsewhere) it sets ``lost`` and cancels the scope it
was given, which stops the work it guards. A database that is away for a moment only
delays a renewal: the heartbeat keeps trying until the lease runs out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import anyio

from devflow import logs, model
from devflow.engine.context import Context, single
from devflow.errors import DevflowError, LeaseLost
from devflow.states import TERMINAL

T = TypeVar("T")
log = logs.get_logger("devflow.engine")


async def keep(ctx: Context, run_id: str, lease: model.Lease, lost: anyio.Event | None = None,
               scope: anyio.CancelScope | None = None) -> None:
    """Renew ``lease`` until cancelled. Losing it ends the heartbeat, sets ``lost`` and
    cancels ``scope``; a run found terminal cancels ``scope`` and leaves ``lost`` unset."""
    while True:
        await anyio.sleep(ctx.settings.heartbeat_seconds)
        try:
            run = await ctx.call(ctx.store.leases.renew, run_id, lease,
                                 ctx.settings.lease_seconds)
        except LeaseLost:
            if lost is not None:
                lost.set()
            if scope is not None:
                scope.cancel()
            return
        except DevflowError as exc:  # the database is away: keep trying until the lease runs out
            log.warning("heartbeat_failed", run_id=run_id, error=exc.message)
            continue
        if run.state in TERMINAL:
            if scope is not None:
                scope.cancel()
            return


async def while_held(ctx: Context, run_id: str, lease: model.Lease, fn: Callable[..., T],
                     *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``, a synchronous step, on a worker thread with ``lease``
    renewed beside it. A thread cannot be cancelled, so a lost lease only ends the
    heartbeat: the step's own transactions check the lease (``RunTx.check_lease``)."""
    done: list[T] = []
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(keep, ctx, run_id, lease)
            try:
                done.append(await ctx.call(fn, *args, **kwargs))
            finally:
                group.cancel_scope.cancel()
    except BaseExceptionGroup as failed:  # the step's own error, as itself
        raise single(failed) from None
    return done[0]
