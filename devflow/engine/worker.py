"""Workers: claim runnable runs and drive up to N at once, until told to stop.

A worker registers itself (host, pid, heartbeat), claims runs whose lease is free
(PostgreSQL: ``FOR UPDATE SKIP LOCKED``; SQLite: one immediate transaction) and
drives each in a task of its own. Told to stop (SIGTERM, SIGINT), it claims nothing
more and lets each drive end at its next step; after the grace period the drives
still going are cancelled, which terminates their agents, records the interrupted
attempts and releases the leases.

Each look also evaluates the schedule triggers the worker sees (``devflow.engine.schedule``),
so the runs their ticks start are claimed in the same look.

A run started on another host is taken only when its repository is at the same path
here and its run branch can be reached; its worktree is then re-created here.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from devflow import logs, worktree
from devflow.engine import deliveries, drive, schedule
from devflow.engine.context import Context, new_owner
from devflow.errors import DevflowError, LeaseLost
from devflow.requests import WorkerOptions
from devflow.store import Claimed

log = logs.get_logger("devflow.worker")


@dataclass
class Stats:
    worker_id: str
    driven: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


async def work(ctx: Context, options: WorkerOptions, stop: anyio.Event) -> Stats:
    worker_id = new_owner(f"worker-{options.name}")
    stats = Stats(worker_id)
    await ctx.call(ctx.store.leases.register_worker, worker_id, options.name, ctx.host,
                   os.getpid(), options.concurrency)
    log.info("worker_started", worker=worker_id, concurrency=options.concurrency)
    driving: dict[str, anyio.CancelScope] = {}
    wake = _Wake()
    drives_stop = anyio.Event()
    unreachable: set[str] = set()
    async with anyio.create_task_group() as group:
        group.start_soon(_beat, ctx, worker_id)
        group.start_soon(_relay, stop, wake)
        while not stop.is_set():
            claimed: list[Claimed] = []
            await _ticks(ctx)
            free = options.concurrency - len(driving)
            if free > 0:
                try:
                    claimed = await ctx.call(ctx.store.leases.claim_next, worker_id,
                                             ctx.settings.lease_seconds, free,
                                             frozenset(driving) | frozenset(unreachable))
                except DevflowError as exc:  # the database is away: keep the worker, retry
                    log.warning("claim_failed", worker=worker_id, error=exc.message)
                    await wake.wait(max(options.poll, 1.0))
                    continue
            for item in claimed:
                try:
                    if not await ctx.call(_reachable, ctx, item.run_id):
                        await ctx.call(ctx.store.leases.release, item.run_id, item.lease)
                        unreachable.add(item.run_id)
                        stats.skipped.append(item.run_id)
                        continue
                except DevflowError as exc:
                    # The database went away after the claim: leave the lease to run out;
                    # the sweep makes the run runnable again.
                    log.warning("claim_check_failed", run_id=item.run_id, error=exc.message)
                    continue
                scope = anyio.CancelScope()
                driving[item.run_id] = scope
                stats.driven.append(item.run_id)
                group.start_soon(_drive_one, ctx, item, scope, drives_stop, driving, wake)
            if options.once and not driving and not claimed:
                break
            await wake.wait(options.poll)
        drives_stop.set()
        with anyio.move_on_after(options.grace):
            while driving:
                await anyio.sleep(0.05)
        for scope in list(driving.values()):
            scope.cancel()
        while driving:
            await anyio.sleep(0.05)
        group.cancel_scope.cancel()
    with anyio.CancelScope(shield=True):
        await ctx.call(functools.partial(ctx.store.leases.worker_heartbeat, worker_id,
                                         stopped=True))
    log.info("worker_stopped", worker=worker_id, driven=len(stats.driven))
    return stats


class _Wake:
    """Wakes the claiming loop early: a drive ended, or the worker was told to stop."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self, timeout: float) -> None:
        with anyio.move_on_after(timeout):
            await self._event.wait()
        if self._event.is_set():
            self._event = anyio.Event()


async def _relay(stop: anyio.Event, wake: _Wake) -> None:
    await stop.wait()
    wake.set()


async def _drive_one(ctx: Context, item: Claimed, scope: anyio.CancelScope, stop: anyio.Event,
                     driving: dict[str, anyio.CancelScope], wake: _Wake) -> None:
    try:
        with scope:
            await drive.drive(ctx, item.run_id, item.lease, stop)
    except LeaseLost:  # drive stops on it itself; one that got out ends only this drive
        log.warning("lease_lost", run_id=item.run_id)
    except Exception:
        log.exception("drive_failed", run_id=item.run_id)
    finally:
        driving.pop(item.run_id, None)
        wake.set()


async def _ticks(ctx: Context) -> None:
    """Evaluate the schedule triggers and start the webhook deliveries whose starter died:
    a failure is logged and left to the next look."""
    try:
        await ctx.call(schedule.evaluate_all, ctx)
        await ctx.call(deliveries.start_stale, ctx)
    except Exception:
        log.exception("trigger_evaluation_failed")


async def _beat(ctx: Context, worker_id: str) -> None:
    while True:
        await anyio.sleep(ctx.settings.heartbeat_seconds)
        try:
            await ctx.call(ctx.store.leases.worker_heartbeat, worker_id)
        except Exception as exc:  # noqa: BLE001 - the database may be away for a moment
            log.warning("worker_heartbeat_failed", error=str(exc))


def _reachable(ctx: Context, run_id: str) -> bool:
    """Whether this host can drive the run: its own, or the repo and run branch are here."""
    run = ctx.store.runs.get(run_id)
    if run.host == ctx.host:
        return True
    repo = Path(run.repo)
    return repo.is_dir() and worktree.branch_exists(repo, run.branch)
