"""Ending a run: the terminal transition, and the final report (DESIGN.md §3.2).

``terminate`` moves a run to completed, failed or aborted in one transaction: active
phases fail, pending approvals are aborted, the event is appended. Agents still
running for the run on this host are killed. ``write_report`` composes the report; if
composing fails, a stub is written. Nobody calls it after a terminal move by hand:
``Context.change`` does, once any transaction that ended the run committed. The sweep
(and a report asked for whose file is gone) calls it for terminal runs that have none.
A report that cannot be written because of a fault of the machine (a full disk) is
left to that sweep: the event ``report.blocked`` says why, and nothing half-written
stays behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from devflow import artifacts, events, logs, machine, model, report, states, worktree
from devflow.errors import Code, DevflowError
from devflow.states import RunState
from devflow.store import History, RunTx
from devflow.transitions import terminate_in

if TYPE_CHECKING:  # Context writes the report after a terminal move: it imports this module
    from devflow.engine.context import Context

log = logs.get_logger("devflow.engine")


def terminate(ctx: Context, run_id: str, to: RunState, *, code: str | None = None,
              reason: str | None = None, by: str = "devflow",
              lease: model.Lease | None = None) -> model.Run:
    """End the run (its report is written once that committed, by ``Context.change``)."""
    ctx.change(run_id, lambda tx: terminate_in(tx, to, code=code, reason=reason, by=by), lease)
    return ctx.store.runs.get(run_id)


def fail(ctx: Context, run_id: str, code: Code | str, reason: str, *,
         lease: model.Lease | None = None) -> model.Run:
    return terminate(ctx, run_id, RunState.FAILED, code=str(code), reason=reason, lease=lease)


def write_report(ctx: Context, run_id: str) -> Path | None:
    """Compose and write the report of a terminal run; a stub when composing fails. None
    when a fault of the machine refused the write (``report.blocked``; the sweep tries
    again)."""
    history = ctx.store.runs.history(run_id)
    run = history.run
    if run.state not in states.TERMINAL:
        raise DevflowError(Code.ILLEGAL_TRANSITION, f"run {run_id} is {run.state}, not terminal",
                           hint="a report is written when the run ends")
    directory = Path(run.workspace)
    status = "written"
    try:
        body = report.compose(_gather(history))
        problems = ctx.catalog.schemas.validate(report.REPORT_SCHEMA, body)
        if problems:
            raise ValueError("; ".join(str(p) for p in problems[:5]))
    except Exception as exc:  # noqa: BLE001 - any failure to compose still leaves a report
        log.error("report_compose_failed", run_id=run_id, error=repr(exc))
        body = report.stub(run.id, str(run.state), f"{type(exc).__name__}: {exc}")
        status = "stub"
    ctx.remember_secrets(history.bindings)
    try:
        path = report.write(directory, ctx.redact(body))
    except OSError as exc:
        if (blocked := machine.classify(exc, directory)) is None:
            raise
        log.warning("report_blocked", run_id=run_id, error=blocked.message, fix=blocked.fix)
        ctx.change(run.id, lambda tx: _blocked(tx, blocked))
        return None
    ctx.change(run.id, lambda tx: _record(tx, path, status))
    return path


def _blocked(tx: RunTx, blocked: machine.Blocked) -> None:
    """The report could not be written now; the sweep writes it (once per cause)."""
    tx.event(events.REPORT_BLOCKED.new(payload={
        **blocked.to_json(), "fix": f"{blocked.fix.split('; then')[0]}; then `devflow sweep` "
                                    "writes the report"},
        key=f"{tx.run.id}:report.blocked:{blocked.kind}"))


def _record(tx: RunTx, path: Path, status: str) -> None:
    tx.set_run(report_status=status)
    tx.event(events.REPORT_WRITTEN.new(payload={"path": str(path), "status": status},
                                              key=f"{tx.run.id}:report.written:{status}"))


def _gather(history: History) -> report.ReportData:
    run = history.run
    commits: list[worktree.Commit] = []
    files: list[worktree.FileStat] = []
    git_error = None
    try:
        if run.base_sha and Path(run.repo).is_dir():  # a branch that is gone has neither
            commits = worktree.commits(Path(run.repo), run.base_sha, run.branch)
            files = worktree.diffstat(Path(run.repo), run.base_sha, run.branch)
    except DevflowError as exc:
        git_error = exc.message
    return report.ReportData(
        run=run, phases=history.phases, bindings=history.bindings,
        approvals=history.approvals, decisions=history.decisions,
        invocations=history.invocations, events=history.events, commits=commits, files=files,
        git_error=git_error, findings=_findings(history.phases))


def _findings(phases: list[model.Phase]) -> list[dict[str, Any]]:
    found = []
    for p in phases:
        artifact = p.definition.artifact
        if artifact and artifact.schema == "dev/review@1" and p.artifact_stored and p.artifact_sha:
            value = artifacts.load_stored(Path(p.artifact_stored), p.artifact_sha)
            found += [{"phase": p.key, **f} for f in value.get("findings", [])
                      if isinstance(f, dict)]
    return found
