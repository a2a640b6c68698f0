"""A template's ``setup``: commands run once in a new worktree (dependency installs, say).

Each is an argv list run in the worktree, recorded as an invocation of kind
``setup`` with its logs. Setup gets the base environment and the run's variables
(``DEVFLOW_RUN_ID``, ``DEVFLOW_WORKTREE``, ``DEVFLOW_PORT_BASE``), no secrets. A
failure fails the run, with the end of the command's output in the report.
"""

from __future__ import annotations

import functools
from pathlib import Path

from devflow import events, model
from devflow.backends import process
from devflow.backends.base import base_env
from devflow.engine import finish, workspace
from devflow.engine.context import Context
from devflow.errors import Code
from devflow.store import RunTx


async def run_setup(ctx: Context, run: model.Run, lease: model.Lease) -> bool:
    """Run the template's setup commands; False when one failed (the run is then failed)."""
    commands = [list(c) for c in run.template_def.get("setup") or ()]
    env = base_env()
    env.update({"DEVFLOW_RUN_ID": run.id, "DEVFLOW_WORKTREE": run.worktree})
    if run.port_base is not None:
        env["DEVFLOW_PORT_BASE"] = str(run.port_base)
    logs = workspace.log_dir(run)
    for number, argv in enumerate(commands, start=1):
        spawn = process.Spawn(argv=argv, cwd=Path(run.worktree), env=env,
                              timeout=ctx.settings.agent_timeout,
                              stdout_log=logs / f"setup-{number}.stdout.log",
                              stderr_log=logs / f"setup-{number}.stderr.log")
        started: list[model.Invocation] = []

        async def on_start(process_: process.Started, argv: list[str] = argv,
                           number: int = number,
                           started: list[model.Invocation] = started) -> None:
            started.append(await ctx.achange(run.id, functools.partial(
                _started, argv=argv, number=number, process_=process_, host=ctx.host,
                logs=logs), lease))

        try:
            exit_ = await process.run(spawn, on_start=on_start)
        except OSError as exc:  # the program does not exist or cannot run
            await ctx.call(finish.fail, ctx, run.id, Code.SETUP_FAILED,
                           f"setup command {number} {argv[0]!r} could not start: {exc}",
                           lease=lease)
            return False
        await ctx.achange(run.id, functools.partial(_ended, invocation=started[0], exit_=exit_),
                          lease)
        if exit_.exit_code != 0:
            tail = _tail(spawn.stderr_log) or _tail(spawn.stdout_log)
            how = "timed out" if exit_.timed_out else f"exited {exit_.exit_code}"
            await ctx.call(finish.fail, ctx, run.id, Code.SETUP_FAILED,
                           f"setup command {number} ({' '.join(argv)[:120]}) {how}: {tail}",
                           lease=lease)
            return False
    await ctx.achange(run.id, lambda tx: _done(tx, len(commands)), lease)
    return True


def _started(tx: RunTx, argv: list[str], number: int, process_: process.Started, host: str,
             logs: Path) -> model.Invocation:
    pid = process_.pid
    invocation = tx.start_invocation(
        phase_key=None, attempt=number, kind="setup", backend="setup",
        argv=tx.redact_list(argv), host=host, pid=pid, pgid=process_.pgid,
        process_start=process_.start,
        stdout_path=str(logs / f"setup-{number}.stdout.log"),
        stderr_path=str(logs / f"setup-{number}.stderr.log"))
    tx.event(events.SETUP_STARTED.new(payload={"command": number, "pid": pid}))
    return invocation


def _ended(tx: RunTx, invocation: model.Invocation, exit_: process.Exit) -> None:
    tx.update_invocation(invocation, ended_at=tx.now, exit_code=exit_.exit_code,
                         signal=exit_.signal, duration_ms=exit_.duration_ms,
                         outcome="ok" if exit_.exit_code == 0 else "failed")


def _done(tx: RunTx, count: int) -> None:
    tx.set_run(options={**tx.run.options, "setup_done": True})
    tx.event(events.SETUP_COMPLETED.new(payload={"commands": count}))


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])
