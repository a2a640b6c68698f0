"""Starting a run: every check before anything is written, then the run, then its worktree.

Checks first (the repo is a git repository, the base exists, the template is valid,
every role can be bound, the scenarios are known), so bad input leaves nothing
behind. Then one transaction inserts the run, bound, within the concurrency limits,
under a lease held by the starter. Then the worktree; if that fails, the run is
failed with a report, never left half-made.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import socket
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from devflow import faults, model, worktree
from devflow.backends.scripted import check_scenario
from devflow.engine import binding, finish, workspace
from devflow.engine.context import Context
from devflow.errors import Code, DevflowError
from devflow.store import NewRun, Ports

RUN_ID: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,47}$")


@dataclass(frozen=True)
class StartRequest:
    repo: Path
    base: str
    template: str
    requirements: str
    actor: str
    objective: str | None = None
    binds: Mapping[str, str] = field(default_factory=dict)
    run_id: str | None = None
    scenarios: Mapping[str, str] = field(default_factory=dict)
    max_cost: float | None = None


def new_run_id(ctx: Context) -> str:
    alphabet = "abcdefghijkmnpqrstuvwxyz23456789"
    return ctx.clock().strftime("%Y%m%d-") + "".join(secrets.choice(alphabet) for _ in range(6))


def start(ctx: Context, request: StartRequest, owner: str) -> tuple[model.Run, model.Lease]:
    """Create the run and its worktree; the caller holds the returned lease."""
    return _create(ctx, request, owner, hand_back=False)


def start_detached(ctx: Context, request: StartRequest, owner: str) -> model.Run:
    """Create the run and its worktree and leave the run to workers: the lease taken to
    create it is given up in the transaction that records the worktree."""
    run, _ = _create(ctx, request, owner, hand_back=True)
    return run


def _create(ctx: Context, request: StartRequest, owner: str,
            hand_back: bool) -> tuple[model.Run, model.Lease]:
    repo, base_sha = worktree.locate(request.repo.expanduser().resolve(), request.base)
    template = ctx.catalog.template(request.template)
    bindings, personas = binding.bind(template, ctx.catalog, request.binds)
    ctx.remember_secrets(bindings)
    _check_scenarios(request.scenarios)
    if request.max_cost is not None and request.max_cost <= 0:
        raise DevflowError(Code.INVALID_INPUT, "--max-cost must be a positive amount of USD",
                           hint="e.g. --max-cost 5")
    run_id = request.run_id or new_run_id(ctx)
    if not RUN_ID.match(run_id):
        raise DevflowError(Code.INVALID_INPUT, f"{run_id!r} is not a valid run id",
                           hint="letters, digits, - and _, at most 48, starting with a letter "
                                "or digit")
    ctx.store.registry.register(
        [("template", template.name, template.version, template.hash, template.definition)]
        + [("persona", p.name, p.version, p.hash, p.definition) for p in personas],
        ctx.clock())
    run_dir, tree = workspace.paths_for(ctx, run_id)
    options: dict[str, Any] = {"scenarios": dict(request.scenarios)}
    if request.max_cost is not None:
        options["max_cost"] = request.max_cost
    run = ctx.store.runs.create(NewRun(
        id=run_id, template_name=template.name, template_version=template.version,
        template_hash=template.hash, template_def=dict(template.definition), repo=str(repo),
        base=request.base, base_sha=base_sha, branch=f"devflow/{run_id}/main",
        workspace=str(run_dir), worktree=str(tree), host=ctx.host,
        requirements=request.requirements, objective=request.objective,
        created_by=request.actor, bindings=bindings, phases=template.phases, options=options,
    ), ctx.limits, lease_owner=owner, lease_seconds=ctx.settings.lease_seconds,
       ports=Ports(*ctx.settings.ports, ctx.settings.port_block, ports_free))
    lease = model.Lease(owner=owner, fence=run.lease_fence)
    faults.point("run_inserted")
    try:
        with renewing(ctx, run.id, lease):
            made = workspace.ensure_worktree(ctx, run, lease, hand_back=hand_back)
    except DevflowError as exc:
        finish.fail(ctx, run.id, exc.code, exc.message, lease=lease)
        raise
    return made or ctx.store.runs.get(run.id), lease


@contextlib.contextmanager
def renewing(ctx: Context, run_id: str, lease: model.Lease) -> Iterator[None]:
    """Renew ``lease`` from a thread while a synchronous step (making a worktree: git may
    wait for another's lock, copy files) takes longer than the lease lasts."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(ctx.settings.heartbeat_seconds):
            try:
                ctx.store.leases.renew(run_id, lease, ctx.settings.lease_seconds)
            except DevflowError:
                return

    thread = threading.Thread(target=beat, name=f"lease-{run_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def ports_free(first: int, count: int) -> bool:
    """Whether nothing on this machine listens on the ``count`` ports from ``first``."""
    for port in range(first, first + count):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def _check_scenarios(scenarios: Mapping[str, str]) -> None:
    for phase, name in scenarios.items():
        if why := check_scenario(name):
            raise DevflowError(Code.INVALID_INPUT, f"--scenario {phase}={name}: {why}",
                               hint="e.g. --scenario spec=invalid-then-ok")
