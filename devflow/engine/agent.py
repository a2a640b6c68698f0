"""One agent process for one attempt: prompt, process, live progress, invocation, usage.

The prompt is written to the run's workspace and handed to the backend. The agent
runs in its sandbox (``engine.confine``) unless its persona or the configuration says
otherwise, which is logged as a warning and recorded with ``agent.started``. The
process is recorded (pid, start time, process group, host) as soon as it started, so
the sweep can find it, and only it. What the agent reports while it works (tool calls,
files written) goes to the progress display at once and, a few notes per second at
most, into the event log (``agent.progress``). A repair or a changes-requested attempt
resumes the agent's previous session when the backend reported one. Tokens and cost
are added to the phase's and the run's totals with the invocation.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from devflow import atomic, backends, events, faults, logs, model
from devflow.backends import process, sandbox
from devflow.backends.base import Backend, Outcome, Task
from devflow.definitions import PHASE_PLAN_SCHEMA, Persona
from devflow.durations import format_duration
from devflow.engine import confine, prompt, workspace
from devflow.engine.context import Context, single
from devflow.errors import ControlFlow
from devflow.states import PhaseState, RunState
from devflow.store import RunTx

_NOTES_PER_ATTEMPT = 300
log = logs.get_logger("devflow.engine")


class Stop(ControlFlow):
    """The run cannot take another step now (paused, aborted, waiting): the drive stops."""


@dataclass
class Result:
    """How the agent ended; ``record_exit`` writes it, with the verdict, in one transaction."""

    exit: process.Exit
    outcome: Outcome
    run: model.Run
    phase: model.Phase
    invocation: model.Invocation
    notes: list[str]
    #: the time limit it had, in seconds
    timeout: float | None = None


@dataclass
class _Notes:
    """Progress notes waiting to be written as ``agent.progress`` events."""

    pending: list[str] = field(default_factory=list)
    written: int = 0

    def take(self) -> list[str]:
        room = max(_NOTES_PER_ATTEMPT - self.written, 0)
        taken, self.pending = self.pending[:room], []
        self.written += len(taken)
        return taken


async def run(ctx: Context, run: model.Run, phase: model.Phase, persona: Persona,
              backend_name: str, lease: model.Lease, earlier: list[model.Phase]) -> Result:
    """Start attempt ``phase.attempt + 1`` with its agent, and record how the agent ended.

    The attempt begins (phase running, ``phase.started``) in the same transaction that
    records the agent's process, right after it was spawned; if the run cannot go on
    (paused or aborted meanwhile) that transaction raises ``Stop`` and the process is
    killed before it did anything that counts.
    """
    backend = backends.get(backend_name)
    plan = sandbox.plan(persona, ctx.settings)  # this host's, which may not be the starter's
    if not plan.sandboxed:
        log.warning("agent_unsandboxed", run_id=run.id, phase=phase.key,
                    persona=persona.ref, why=plan.label)
    d = phase.definition
    attempt = phase.attempt + 1
    text = prompt.compose(run, phase, attempt, persona, earlier, ctx.catalog.schemas)
    prompt_path = workspace.prompt_file(run, phase.key, attempt)
    prompt_path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(prompt_path, text, sync=False)  # whole or absent, never a part
    logs = workspace.log_dir(run)
    home = Path(run.workspace) / "home"
    home.mkdir(mode=0o700, exist_ok=True)
    resume = None
    if phase.control.resumes_session:
        resume = await ctx.call(_last_session, ctx, run.id, phase.key)
    task = Task(
        run_id=run.id, phase=phase.key, attempt=attempt, role=d.role,
        worktree=Path(run.worktree), prompt=text, prompt_file=prompt_path, log_dir=logs,
        timeout=d.timeout or ctx.settings.agent_timeout, persona=persona,
        artifact_path=d.artifact.path if d.artifact else None,
        artifact_schema=d.artifact.schema if d.artifact else None,
        scenario=dict(run.options.get("scenarios", {})).get(phase.key),
        resume_session=resume, port_base=run.port_base,
        roles=tuple(dict(run.template_def.get("roles", {}))),
        home=home, sandboxed=plan.sandboxed)
    command = backend.command(task, ctx.catalog.schemas)
    spawn = process.Spawn(
        argv=confine.argv(ctx, run, task, command, plan), cwd=Path(run.worktree),
        env=confine.env(command, plan),
        timeout=command.timeout or task.timeout,
        stdout_log=task.log_file("stdout.log"), stderr_log=task.log_file("stderr.log"),
        stdin_file=command.stdin_file)
    begun: list[tuple[model.Run, model.Phase, model.Invocation]] = []
    notes = _Notes()

    async def on_start(started: process.Started) -> None:
        begun.append(await ctx.achange(run.id, functools.partial(
            _begin, key=phase.key, persona=persona.ref, backend=backend_name,
            argv=command.argv, started=started, host=ctx.host, spawn=spawn,
            sandbox=plan.label), lease, phase=phase.key))
        log.info("attempt_started", run_id=run.id, phase=phase.key, attempt=attempt,
                 pid=started.pid)
        faults.point("agent_started")

    def on_line(line: str) -> None:
        note = backend.progress(line)
        if note is not None:
            ctx.observer.progress(run.id, phase.key, note)
            notes.pending.append(note[:300])

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(_flush_notes, ctx, run.id, phase.key, attempt, notes, lease)
            exit_ = await process.run(spawn, on_start=on_start, on_line=on_line)
            group.cancel_scope.cancel()
    except BaseExceptionGroup as failed:
        raise single(failed) from None
    outcome = _outcome(backend, task, exit_, spawn)
    faults.point("agent_exited")
    current, started_phase, invocation = begun[0]
    return Result(exit_, outcome, current, started_phase, invocation, notes.take(),
                  spawn.timeout)


def _begin(tx: RunTx, key: str, persona: str, backend: str, argv: list[str],
           started: process.Started, host: str, spawn: process.Spawn, sandbox: str,
           ) -> tuple[model.Run, model.Phase, model.Invocation]:
    phase = tx.phase(key)
    if tx.state not in (RunState.BOUND, RunState.EXECUTING, RunState.PLANNING):
        raise Stop(f"run is {tx.state}")
    artifact = phase.definition.artifact
    wanted = (RunState.PLANNING if artifact and artifact.schema == PHASE_PLAN_SCHEMA
              else RunState.EXECUTING)
    if tx.state is not wanted:
        tx.move_run(wanted)
    repair = phase.state is PhaseState.VALIDATING
    attempt = phase.attempt + 1
    phase = tx.move_phase(key, PhaseState.RUNNING, attempt=attempt,
                          repairs=phase.repairs + (1 if repair else 0))
    # the attempt number is taken under this lock: its key cannot have been used
    tx.event(events.PHASE_STARTED.new(
        key, {"attempt": attempt, "role": phase.definition.role, "persona": persona,
              "repair": repair},
        key=f"{tx.run.id}:phase.started:{key}:{attempt}"), unseen=True)
    invocation = tx.start_invocation(
        phase_key=key, attempt=attempt, kind="agent", backend=backend,
        argv=tx.redact_list(argv), host=host, pid=started.pid, pgid=started.pgid,
        process_start=started.start,
        stdout_path=str(spawn.stdout_log), stderr_path=str(spawn.stderr_log))
    tx.event(events.AGENT_STARTED.new(key, {
        "attempt": attempt, "backend": backend, "pid": started.pid, "host": host,
        "invocation": invocation.id, "sandbox": sandbox}))
    return tx.run, phase, invocation


def _outcome(backend: Backend, task: Task, exit_: process.Exit, spawn: process.Spawn) -> Outcome:
    try:
        return backend.outcome(task, exit_, spawn.stdout_log, spawn.stderr_log)
    except (OSError, ValueError) as exc:
        return Outcome(failure=f"devflow could not read the agent's output: {exc}")


def _last_session(ctx: Context, run_id: str, key: str) -> str | None:
    """The session of this phase's last agent, for a repair or changes-requested attempt."""
    sessions = [i.session_id for i in ctx.store.runs.invocations(run_id)
                if i.phase_key == key and i.kind == "agent" and i.session_id]
    return sessions[-1] if sessions else None


async def _flush_notes(ctx: Context, run_id: str, key: str, attempt: int, notes: _Notes,
                       lease: model.Lease) -> None:
    """While a long agent works, its notes reach the log every second."""
    while True:
        await anyio.sleep(1.0)
        taken = notes.take()
        if taken:
            await ctx.achange(run_id, functools.partial(_notes, key=key, attempt=attempt,
                                                        notes=taken), lease)


def _notes(tx: RunTx, key: str, attempt: int, notes: list[str]) -> None:
    tx.event(events.AGENT_PROGRESS.new(key, {"attempt": attempt, "notes": notes}))


def record_exit(tx: RunTx, phase: model.Phase, invocation: model.Invocation,
                exit_: process.Exit, outcome: Outcome, notes: list[str],
                timeout: float | None = None) -> model.Run:
    """The invocation closed, usage added up, ``agent.exited``, the phase validating."""
    if notes:
        _notes(tx, phase.key, phase.attempt, notes)
    reason = outcome.failure
    if exit_.timed_out and not reason:
        limit = timeout if timeout is not None else exit_.duration_ms / 1000
        reason = f"timeout after {format_duration(limit)}: the agent was stopped"

    tx.update_invocation(
        invocation, ended_at=tx.now, exit_code=exit_.exit_code, signal=exit_.signal,
        duration_ms=exit_.duration_ms, tokens_in=outcome.tokens_in,
        tokens_out=outcome.tokens_out, cost_usd=outcome.cost_usd, session_id=outcome.session_id,
        outcome="timeout" if exit_.timed_out else ("ok" if exit_.exit_code == 0 else "failed"),
        reason=reason)
    current = tx.phase(phase.key)
    tx.set_phase(phase.key, tokens_in=current.tokens_in + (outcome.tokens_in or 0),
                 tokens_out=current.tokens_out + (outcome.tokens_out or 0),
                 cost_usd=current.cost_usd + (outcome.cost_usd or 0.0))
    run = tx.run
    run = tx.set_run(tokens_in=run.tokens_in + (outcome.tokens_in or 0),
                     tokens_out=run.tokens_out + (outcome.tokens_out or 0),
                     cost_usd=run.cost_usd + (outcome.cost_usd or 0.0))
    tx.event(events.AGENT_EXITED.new(phase.key, {
        "attempt": phase.attempt, "exit_code": exit_.exit_code, "signal": exit_.signal,
        "duration_ms": exit_.duration_ms, "timed_out": exit_.timed_out,
        "tokens_in": outcome.tokens_in, "tokens_out": outcome.tokens_out,
        "cost_usd": outcome.cost_usd, "session_id": outcome.session_id,
        "failure": outcome.failure}))
    tx.move_phase(phase.key, PhaseState.VALIDATING)
    return run
