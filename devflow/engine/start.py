"""Starting a run: every check before anything is written, then the run, then its worktree.

Checks first (the repo is a git repository, the base exists, the template is valid,
every role can be bound, the scenarios are known), so bad input leaves nothing
behind. Then one transaction inserts the run, bound, within the concurrency limits,
under a lease held by the starter. Then the worktree; if that fails, the run is
failed with a report, never left half-made, unless a fault of the machine stopped it
(a full disk, a git lock held): then the run is paused with a ``blocked`` reason, and
``devflow run resume`` makes the worktree once the cause is gone. The lease is renewed
beside the worktree's making by the heartbeat (``engine.heartbeat``); the checks and the
insert, synchronous, run on a worker thread.
"""

from __future__ import annotations

import math
import re
import secrets
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import anyio

from devflow import backends, faults, jsontext, machine, model, transitions, worktree
from devflow.definitions import Template
from devflow.engine import binding, finish, heartbeat, workspace
from devflow.engine.context import Context
from devflow.errors import Code, DevflowError, LeaseLost
from devflow.requests import StartRequest
from devflow.store import NewRun, Ports

RUN_ID: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,47}$")


def new_run_id(ctx: Context) -> str:
    alphabet = "abcdefghijkmnpqrstuvwxyz23456789"
    return ctx.clock().strftime("%Y%m%d-") + "".join(secrets.choice(alphabet) for _ in range(6))


async def start(ctx: Context, request: StartRequest,
                owner: str) -> tuple[model.Run, model.Lease]:
    """Create the run and its worktree; the caller holds the returned lease."""
    return await _create(ctx, request, owner, hand_back=False)


async def start_detached(ctx: Context, request: StartRequest, owner: str) -> model.Run:
    """Create the run and its worktree and leave the run to workers: the lease taken to
    create it is given up in the transaction that records the worktree."""
    run, _ = await _create(ctx, request, owner, hand_back=True)
    return run


async def _create(ctx: Context, request: StartRequest, owner: str,
                  hand_back: bool) -> tuple[model.Run, model.Lease]:
    run = await ctx.call(_insert, ctx, request, owner)
    lease = model.Lease(owner=owner, fence=run.lease_fence)
    faults.point("run_inserted")
    try:
        made = await heartbeat.while_held(ctx, run.id, lease, workspace.ensure_worktree,
                                          ctx, run, lease, hand_back=hand_back)
    except LeaseLost as lost:  # the run is another's (a person ended it, the sweep took it)
        raise lost.error() from None
    except (DevflowError, OSError) as exc:
        blocked = machine.classify(exc, Path(run.worktree))
        if blocked is None and not isinstance(exc, DevflowError):
            raise
        with anyio.CancelScope(shield=True):
            if blocked is None and isinstance(exc, DevflowError):
                await ctx.call(finish.fail, ctx, run.id, exc.code, exc.message, lease=lease)
                raise
            assert blocked is not None
            # a fault of the machine (a full disk, a git lock held): paused, not failed
            paused = await ctx.achange(
                run.id, lambda tx: transitions.block_in(tx, blocked.to_json()), lease)
            if hand_back:
                await ctx.call(ctx.store.leases.release, run.id, lease)
            return paused, lease
    if made is None:
        made = await ctx.call(ctx.store.runs.get, run.id)
    return made, lease


def _insert(ctx: Context, request: StartRequest, owner: str) -> model.Run:
    """Every check, then the run inserted, bound, under a lease ``owner`` holds."""
    requirements = requirements_text(request)
    path = request.repo.expanduser().resolve()
    base = request.base if request.base is not None else worktree.current_branch(path)
    repo, base_sha = worktree.locate(path, base)
    template = ctx.catalog.template(request.template)
    bindings, personas = binding.bind(template, ctx.catalog, request.binds)
    ctx.remember_secrets(bindings)
    sandboxes = binding.sandboxes(bindings, personas, ctx.settings)
    for bound in bindings:
        if not sandboxes[bound.role].sandboxed:
            ctx.observer.warning(binding.unsandboxed_warning(
                bound.role, bound.persona_ref, sandboxes[bound.role]))
    _check_scenarios(request.scenarios, template, bindings)
    if request.max_cost is not None and not (math.isfinite(request.max_cost)
                                             and request.max_cost > 0):
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
    if request.tick is not None:
        options["trigger"] = {"name": request.tick.trigger,
                              "scheduled_at": request.tick.scheduled_at.isoformat()}
    if request.delivery is not None:
        options["trigger"] = {"name": request.delivery.trigger,
                              "delivery": request.delivery.delivery_id}
    return ctx.store.runs.create(NewRun(
        id=run_id, template_name=template.name, template_version=template.version,
        template_hash=template.hash, template_def=dict(template.definition), repo=str(repo),
        base=base, base_sha=base_sha, branch=f"devflow/{run_id}/main",
        workspace=str(run_dir), worktree=str(tree), host=ctx.host,
        requirements=requirements, objective=request.objective,
        created_by=request.actor, bindings=bindings, phases=template.phases, options=options,
        sandboxes={role: plan.label for role, plan in sandboxes.items()}, tick=request.tick,
        delivery=request.delivery,
    ), ctx.limits, lease_owner=owner, lease_seconds=ctx.settings.lease_seconds,
       ports=Ports(*ctx.settings.ports, ctx.settings.port_block, ports_free))

def ports_free(first: int, count: int) -> bool:
    """Whether nothing on this machine listens on the ``count`` ports from ``first``."""
    for port in range(first, first + count):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def requirements_text(request: StartRequest) -> str:
    return check_text(request.requirements, request.requirements_source, request.objective)


def check_text(requirements: str | bytes, source: str | None, objective: str | None) -> str:
    """The requirements as text, checked with the objective: a run needs one of them,
    neither may be blank when given, and both must be text a database can keep.
    ``source`` names the file the requirements were read from (``-``: standard input)."""
    named = ("standard input" if source == "-" else f"requirements file {source}") \
        if source else "the requirements"
    text = requirements
    if isinstance(text, bytes):
        text = decode_requirements(text, named)
    elif why := jsontext.unstorable(text):
        raise DevflowError(Code.INVALID_INPUT, f"{named}: the text {why}",
                           hint="requirements are plain text")
    if objective is not None:
        if why := jsontext.unstorable(objective):
            raise DevflowError(Code.INVALID_INPUT, f"--objective: the text {why}",
                               hint="the objective is one line of plain text")
        if not objective.strip():
            raise DevflowError(Code.INVALID_INPUT, "--objective is blank",
                               hint="say in one line what the run is for, or leave "
                                    "--objective out and give --requirements FILE")
    if source and not text.strip():
        raise DevflowError(Code.INVALID_INPUT, f"{named} is empty" if not text else
                           f"{named} holds only white space",
                           hint="write in it what the agents should do")
    if not text.strip() and objective is None:
        raise DevflowError(Code.INVALID_INPUT, "a run needs --requirements FILE (or -) or "
                           "--objective TEXT", hint="say what the agents should do")
    return text


#: control characters that do not belong in text (tab, line feed, vertical tab, form feed
#: and carriage return do): one of these means the file is binary
_BINARY: Final = re.compile(rb"[\x00-\x08\x0e-\x1f]")


def decode_requirements(data: bytes, named: str) -> str:
    """``data`` as UTF-8 text (a byte-order mark dropped); ``invalid_input`` naming the
    offending byte and its offset when it is not UTF-8 or is binary."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DevflowError(Code.INVALID_INPUT, f"{named} is not UTF-8 text: byte "
                           f"{data[exc.start]:#04x} at offset {exc.start} ({exc.reason})",
                           hint="save it as UTF-8, e.g. `iconv -f latin1 -t utf-8 FILE`",
                           offset=exc.start) from None
    if (control := _BINARY.search(data)) is not None:
        raise DevflowError(Code.INVALID_INPUT, f"{named} looks binary: control byte "
                           f"{data[control.start()]:#04x} at offset {control.start()}",
                           hint="requirements are text: a Markdown or plain-text file",
                           offset=control.start())
    return text


def _check_scenarios(scenarios: Mapping[str, str], template: Template,
                     bindings: list[model.Binding]) -> None:
    """A scenario names a phase of the template done by a scripted agent, and a known
    scenario: a typo is an error, never a scenario silently left unused."""
    phases = {p.key: p for p in template.phases}
    backend_of = {b.role: (b.persona_ref, b.backend) for b in bindings}
    for phase, name in scenarios.items():
        if phase not in phases:
            raise DevflowError(Code.INVALID_INPUT,
                               f"--scenario {phase}={name}: {template.ref} has no phase "
                               f"{phase!r}", hint=f"its phases: {', '.join(phases)} (a phase "
                               "a plan adds later takes its scenario from the scripted "
                               "persona's options.scenarios)")
        persona, backend = backend_of[phases[phase].role]
        if backend != "scripted":
            raise DevflowError(Code.INVALID_INPUT,
                               f"--scenario {phase}={name}: phase {phase} is done by persona "
                               f"{persona} on backend {backend}; scenarios are for scripted "
                               "agents", hint="bind its role to a scripted persona, e.g. "
                               "--bind implementer=scripted-implementer, or drop --scenario")
        if why := backends.check_scenario(name):
            raise DevflowError(Code.INVALID_INPUT, f"--scenario {phase}={name}: {why}",
                               hint="e.g. --scenario spec=invalid-then-ok")
