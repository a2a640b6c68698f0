"""One agent process for one attempt: prompt, process, live progress, invocation, usage.

The prompt is written to the run's workspace and handed to the backend. The process
is recorded (pid, process group, host) as soon as it started, so the sweep can find
it. What the agent reports while it works (tool calls, files written) goes to the
progress display at once and, a few notes per second at most, into the event log
(``agent.progress``). A repair or a changes-requested attempt resumes the agent's
previous session when the backend reported one. Tokens and cost are added to the
phase's and the run's totals with the invocation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import anyio

from devflow import backends, faults, model
from devflow.backends import process
from devflow.backends.base import Backend, Outcome, Task
from devflow.definitions import Persona
from devflow.engine import prompt, workspace
from devflow.engine.context import Context
from devflow.states import PhaseState
from devflow.store import RunTx

_NOTES_PER_ATTEMPT = 300


@dataclass
class Result:
    exit: process.Exit
    outcome: Outcome
    run: model.Run


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
              backend_name: str, lease: model.Lease) -> Result:
    backend = backends.get(backend_name)
    d = phase.definition
    phases = await ctx.call(ctx.store.runs.phases, run.id)
    earlier = [p for p in phases if p.state is PhaseState.COMPLETED and p.key != phase.key]
    text = prompt.compose(run, phase, phase.attempt, persona, earlier, ctx.catalog.schemas)
    prompt_path = workspace.prompt_file(run, phase.key, phase.attempt)
    prompt_path.parent.mkdir(parents=True, exist_ok=True)
    prompt_path.write_text(text, encoding="utf-8")
    logs = workspace.log_dir(run, phase.key)
    task = Task(
        run_id=run.id, phase=phase.key, attempt=phase.attempt, role=d.role,
        worktree=Path(run.worktree), prompt=text, prompt_file=prompt_path, log_dir=logs,
        timeout=d.timeout or ctx.settings.agent_timeout, persona=persona,
        artifact_path=d.artifact.path if d.artifact else None,
        artifact_schema=d.artifact.schema if d.artifact else None,
        scenario=dict(run.options.get("scenarios", {})).get(phase.key),
        resume_session=await ctx.call(_session_to_resume, ctx, run.id, phase),
        port_base=run.port_base, roles=tuple(dict(run.template_def.get("roles", {}))),
        home=ctx.run_dir(run.id) / "home")
    command = backend.command(task, ctx.catalog.schemas)
    spawn = process.Spawn(
        argv=command.argv, cwd=Path(run.worktree), env=command.env, timeout=task.timeout,
        stdout_log=logs / f"attempt-{phase.attempt}.stdout.log",
        stderr_log=logs / f"attempt-{phase.attempt}.stderr.log", stdin_file=command.stdin_file)
    started: list[model.Invocation] = []
    notes = _Notes()

    async def on_start(pid: int, pgid: int) -> None:
        started.append(await ctx.achange(run.id, lambda tx: _started(
            tx, phase, backend_name, command.argv, pid, pgid, ctx.host, spawn), lease))
        faults.point("agent_started")

    def on_line(line: str) -> None:
        note = backend.progress(line)
        if note is not None:
            ctx.observer.progress(run.id, phase.key, note)
            notes.pending.append(note[:300])

    async with anyio.create_task_group() as group:
        group.start_soon(_flush_notes, ctx, run.id, phase, notes, lease)
        exit_ = await process.run(spawn, on_start=on_start, on_line=on_line)
        group.cancel_scope.cancel()
    await _write_notes(ctx, run.id, phase, notes, lease)
    outcome = _outcome(backend, task, exit_, spawn)
    faults.point("agent_exited")
    current = await ctx.achange(run.id, lambda tx: _exited(tx, phase, started[0], exit_, outcome),
                                lease)
    return Result(exit_, outcome, current)


def _outcome(backend: Backend, task: Task, exit_: process.Exit, spawn: process.Spawn) -> Outcome:
    try:
        return backend.outcome(task, exit_, spawn.stdout_log, spawn.stderr_log)
    except (OSError, ValueError) as exc:
        return Outcome(failure=f"devflow could not read the agent's output: {exc}")


def _session_to_resume(ctx: Context, run_id: str, phase: model.Phase) -> str | None:
    """The session of this phase's last agent, for a repair or changes-requested attempt."""
    if "interrupted" in phase.feedback or not ({"repair", "changes"} & set(phase.feedback)):
        return None
    sessions = [i.session_id for i in ctx.store.runs.invocations(run_id)
                if i.phase_key == phase.key and i.kind == "agent" and i.session_id]
    return sessions[-1] if sessions else None


async def _flush_notes(ctx: Context, run_id: str, phase: model.Phase, notes: _Notes,
                       lease: model.Lease) -> None:
    while True:
        await anyio.sleep(1.0)
        await _write_notes(ctx, run_id, phase, notes, lease)


async def _write_notes(ctx: Context, run_id: str, phase: model.Phase, notes: _Notes,
                       lease: model.Lease) -> None:
    taken = notes.take()
    if taken:
        await ctx.achange(run_id, lambda tx: tx.event(model.NewEvent(
            "agent.progress", phase.key, {"attempt": phase.attempt, "notes": taken})), lease)


def _started(tx: RunTx, phase: model.Phase, backend: str, argv: list[str], pid: int, pgid: int,
             host: str, spawn: process.Spawn) -> model.Invocation:
    invocation = tx.start_invocation(
        phase_key=phase.key, attempt=phase.attempt, kind="agent", backend=backend,
        argv=tx.redact_list(argv), host=host, pid=pid, pgid=pgid,
        stdout_path=str(spawn.stdout_log), stderr_path=str(spawn.stderr_log))
    tx.event(model.NewEvent("agent.started", phase.key, {
        "attempt": phase.attempt, "backend": backend, "pid": pid, "host": host,
        "invocation": invocation.id}))
    return invocation


def _exited(tx: RunTx, phase: model.Phase, invocation: model.Invocation, exit_: process.Exit,
            outcome: Outcome) -> model.Run:
    tx.update_invocation(
        invocation.id, ended_at=tx.now, exit_code=exit_.exit_code, signal=exit_.signal,
        duration_ms=exit_.duration_ms, tokens_in=outcome.tokens_in,
        tokens_out=outcome.tokens_out, cost_usd=outcome.cost_usd, session_id=outcome.session_id,
        outcome="timeout" if exit_.timed_out else ("ok" if exit_.exit_code == 0 else "failed"),
        reason=outcome.failure)
    current = tx.phase(phase.key)
    tx.set_phase(phase.key, tokens_in=current.tokens_in + (outcome.tokens_in or 0),
                 tokens_out=current.tokens_out + (outcome.tokens_out or 0),
                 cost_usd=current.cost_usd + (outcome.cost_usd or 0.0))
    run = tx.run
    run = tx.set_run(tokens_in=run.tokens_in + (outcome.tokens_in or 0),
                     tokens_out=run.tokens_out + (outcome.tokens_out or 0),
                     cost_usd=run.cost_usd + (outcome.cost_usd or 0.0))
    tx.event(model.NewEvent("agent.exited", phase.key, {
        "attempt": phase.attempt, "exit_code": exit_.exit_code, "signal": exit_.signal,
        "duration_ms": exit_.duration_ms, "timed_out": exit_.timed_out,
        "tokens_in": outcome.tokens_in, "tokens_out": outcome.tokens_out,
        "cost_usd": outcome.cost_usd, "session_id": outcome.session_id,
        "failure": outcome.failure}))
    tx.move_phase(phase.key, PhaseState.VALIDATING)
    return run
