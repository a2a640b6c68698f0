"""The attempts of one phase: agent, validation, repairs, checkpoint, then a gate or completion.

An attempt is four short transactions around the agent's process:

1. *begin*: the phase moves to running (attempt n), the run to executing or planning;
2. the agent is started; its pid and process group are recorded (``engine.agent``);
3. the agent exited: the invocation is closed, the phase moves to validating; a run
   whose agents cost more than ``--max-cost`` fails with ``budget_exceeded``;
4. the verdict: a valid artifact is kept (copied, hashed), the worktree is committed
   as a checkpoint, and the phase completes or its first gate opens; a bad attempt
   (invalid or missing artifact, non-zero exit, timeout) goes back to running with
   the errors in the next prompt, at most ``max_repairs`` times, then fails the run.
   What a refused attempt left at its artifact path is kept beside the valid copies
   (``artifacts/<phase>.attempt-<n>.invalid.json``) and named in its
   ``phase.artifact_invalid`` event, which the report links.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devflow import (
    approvals,
    artifacts,
    events,
    faults,
    logs,
    model,
    runtree,
    transitions,
    worktree,
)
from devflow.backends.base import Outcome
from devflow.definitions import PHASE_PLAN_SCHEMA, Persona
from devflow.durations import format_duration
from devflow.engine import agent, plan, prompt, workspace
from devflow.engine.context import Context
from devflow.errors import Code
from devflow.schemas import Issue
from devflow.states import TERMINAL, PhaseState, RunState
from devflow.store import RunTx

log = logs.get_logger("devflow.engine")


@dataclass(frozen=True)
class Verdict:
    code: Code | None
    issues: list[Issue]
    checked: artifacts.Checked | None = None
    #: for a refused attempt: where the bytes it left are kept, or why they are not
    shown: dict[str, Any] | None = None


async def run_phase(ctx: Context, run: model.Run, phase: model.Phase,
                    phases: list[model.Phase], binding: model.Binding, persona: Persona,
                    lease: model.Lease) -> tuple[model.Run, list[model.Phase]] | None:
    """Attempts of ``phase`` until it completes, waits at a gate, fails, or the run stops.

    Returns the run as the last attempt's transaction left it, and the phases with this
    one as it left it (the verdict changes no other phase, so the driver need not read
    them again), or None once the run has ended.
    """
    reset_to = phase.control.reset_to
    readied = await ctx.call(_ready, run, reset_to)
    if reset_to or readied.found or readied.removed:
        phase = await ctx.achange(run.id, functools.partial(_readied, key=phase.key,
                                                            sha=reset_to, readied=readied), lease)
    earlier = [p for p in phases if p.state is PhaseState.COMPLETED and p.key != phase.key]
    while True:
        result = await agent.run(ctx, run, phase, persona, binding.backend, lease, earlier)
        run, phase = result.run, result.phase
        log.info("attempt_exited", run_id=run.id, phase=phase.key, attempt=phase.attempt,
                 exit_code=result.exit.exit_code)
        run, phase = await ctx.call(_conclude, ctx, result, lease)
        faults.point("phase_accepted")
        if run.state in TERMINAL:  # its report was written with the verdict's commit
            return None
        if phase.state is not PhaseState.VALIDATING:
            # completed, or waiting at its gate: the verdict changed no other phase
            return run, [phase if p.key == phase.key else p for p in phases]


@dataclass(frozen=True)
class Kept:
    """A valid artifact kept in the workspace, its checkpoint, and the gate's evidence."""

    record: model.ArtifactRecord
    commit: str | None
    evidence: model.Evidence | None
    #: stale git locks the checkpoint removed
    removed: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def _conclude(ctx: Context, result: agent.Result,
              lease: model.Lease) -> tuple[model.Run, model.Phase]:
    """Judge the attempt, keep a valid artifact, and record the exit with its verdict in
    one transaction: one call on a worker thread for all of it."""
    run, phase = result.run, result.phase
    tree = worktree.of_run(run)  # found once for the checks, the checkpoint and the evidence
    tampered = _put_back(run, phase, tree)
    verdict, kept = None, None
    if not _over_budget(run, result.outcome):
        verdict, kept = ((Verdict(Code.AGENT_TAMPERED, tampered), None) if tampered else
                         _judge_and_keep(ctx, run, phase, result, tree))
    return ctx.change(run.id, functools.partial(_settle, result=result, verdict=verdict,
                                                kept=kept), lease, phase=phase.key)


def _settle(tx: RunTx, result: agent.Result, verdict: Verdict | None,
            kept: Kept | None) -> tuple[model.Run, model.Phase]:
    phase = result.phase
    run = agent.record_exit(tx, phase, result.invocation, result.exit, result.outcome,
                            result.notes, result.timeout)
    if verdict is None:  # over budget: not validated, not kept
        limit = float(run.options["max_cost"])
        transitions.terminate_in(tx, RunState.FAILED, code=str(Code.BUDGET_EXCEEDED),
                                 reason=f"agents cost ${run.cost_usd:.4f}, more than "
                                        f"--max-cost ${limit:.4f}")
    elif kept is not None:
        _complete(tx, phase, kept)
    else:
        _refuse(tx, phase, verdict, phase.repairs < phase.definition.max_repairs)
    return tx.run, tx.phase(phase.key)


def _over_budget(run: model.Run, outcome: Outcome) -> bool:
    """Whether this attempt's cost takes the run past --max-cost."""
    limit = run.options.get("max_cost")
    return limit is not None and run.cost_usd + (outcome.cost_usd or 0.0) > float(limit)


def _put_back(run: model.Run, phase: model.Phase, tree: runtree.Tree) -> list[Issue]:
    """Put back the worktree's ``.git`` file, HEAD and the run's branch if the agent changed
    them; what it changed, as the reasons its attempt failed."""
    found = runtree.restore(tree, run.checkpoint_sha)
    if found:
        log.warning("agent_tampered", run_id=run.id, phase=phase.key, attempt=phase.attempt,
                    found=found)
    return [Issue("", f"{what}. devflow put it back; leave .git, HEAD and the branches "
                      f"alone (devflow commits your work)") for what in found]


@dataclass(frozen=True)
class Readied:
    """What ``_ready`` did: what it found changed in the worktree's git and put back, the
    stale git locks it removed, and where it kept what the reset dropped."""

    found: list[str]
    removed: list[dict[str, Any]]
    salvaged: dict[str, Any] | None = None


def _ready(run: model.Run, reset_to: str | None) -> Readied:
    """Before a phase's first attempt here: the worktree reset to ``reset_to`` (recovery,
    rewind) once what the reset would drop is salvaged, or else its ``.git``, HEAD and
    branch put back if something changed them since the last attempt."""
    tree = worktree.of_run(run)
    removed: list[dict[str, Any]] = []
    worktree.check_out_if_interrupted(tree, removed)
    if reset_to:
        found = runtree.restore(tree, None)
        salvaged = worktree.salvage(tree, reset_to, removed)
        if salvaged is not None:
            log.info("worktree_salvaged", run_id=run.id, ref=salvaged["ref"])
        return Readied(found + worktree.reset(tree, reset_to, removed), removed, salvaged)
    return Readied(runtree.restore(tree, run.checkpoint_sha), removed)


def _readied(tx: RunTx, key: str, sha: str | None, readied: Readied) -> model.Phase:
    """Record what ``_ready`` did: the run's branch is at ``sha`` after a reset."""
    control = tx.phase(key).control
    workspace.lock_events(tx, readied.removed)
    if readied.salvaged is not None:
        tx.event(events.WORKTREE_SALVAGED.new(key, {
            **readied.salvaged, "reset_to": sha, "attempt": tx.phase(key).attempt}))
    if sha is not None:
        control = control.reset_done()
        if tx.run.checkpoint_sha != sha:  # a rewind to an earlier checkpoint
            tx.set_run(checkpoint_sha=sha)
    if readied.found:
        tx.event(events.WORKTREE_RESTORED.new(key, {
            "found": readied.found, "sha": sha or tx.run.checkpoint_sha}))
    return tx.set_phase(key, control=control)



def _judge(ctx: Context, run: model.Run, phase: model.Phase, result: agent.Result) -> Verdict:
    d = phase.definition
    exit_, outcome = result.exit, result.outcome
    if exit_.timed_out:
        limit = result.timeout if result.timeout is not None else exit_.duration_ms / 1000
        return Verdict(Code.AGENT_TIMEOUT, [Issue("", f"the agent did not finish within its "
                                                      f"time limit ({format_duration(limit)}) "
                                                      f"and was stopped")])
    if exit_.exit_code != 0:
        how = (f"exit code {exit_.exit_code}" if exit_.exit_code is not None
               else f"signal {exit_.signal}")
        log_path = result.invocation.stderr_path
        why = (f": {outcome.failure}" if outcome.failure
               else f"; see its stderr log {log_path}" if log_path else "")
        return Verdict(Code.AGENT_FAILED, [Issue("", f"the agent failed with {how}{why}")])
    if outcome.failure:
        return Verdict(Code.AGENT_FAILED, [Issue("", outcome.failure)])
    assert d.artifact is not None
    checked = artifacts.check(Path(run.worktree), d.artifact.path, d.artifact.schema,
                              ctx.catalog.schemas, ctx.settings.artifact_max_bytes)
    faults.point("artifact_checked")
    if checked.valid and d.artifact.schema == PHASE_PLAN_SCHEMA:
        taken = [p.key for p in ctx.store.runs.phases(run.id)]
        roles = list(dict(run.template_def.get("roles", {})))
        if found := plan.problems(checked.value, taken, roles, ctx.catalog.schemas):
            return Verdict(Code.PHASE_PLAN_INVALID, found, checked)
    return Verdict(checked.code, checked.issues, checked)


def _refuse(tx: RunTx, phase: model.Phase, verdict: Verdict, more: bool) -> model.Phase:
    refusals = [model.Refusal(i.pointer, i.message) for i in verdict.issues[:50]]
    errors = [{"pointer": r.pointer, "message": r.message} for r in refusals]
    payload: dict[str, Any] = {"attempt": phase.attempt, "code": str(verdict.code),
                               "errors": errors, "repair": more}
    if verdict.shown is not None:
        payload["artifact"] = verdict.shown
    tx.event(events.PHASE_ARTIFACT_INVALID.new(phase.key, payload))
    tx.set_phase(phase.key, control=tx.phase(phase.key).control.refused(str(verdict.code),
                                                                        refusals))
    if not more:
        reason = (f"{verdict.code} after {phase.attempt} attempt(s): "
                  + "; ".join(str(i) if i.pointer else i.message for i in verdict.issues[:3]))
        tx.move_phase(phase.key, PhaseState.FAILED, events.PHASE_FAILED.new(
            phase.key, {"attempt": phase.attempt, "code": str(verdict.code),
                        "reason": reason}),
            failure_code=str(verdict.code), failure_reason=reason)
        transitions.terminate_in(tx, RunState.FAILED, code=str(verdict.code),
                                 reason=f"phase {phase.key}: {reason}")
    return tx.phase(phase.key)


def _judge_and_keep(ctx: Context, run: model.Run, phase: model.Phase, result: agent.Result,
                    tree: runtree.Tree) -> tuple[Verdict, Kept | None]:
    """The attempt's verdict and, when its artifact is valid, the artifact kept."""
    verdict = _judge(ctx, run, phase, result)
    if verdict.code is None and verdict.checked is not None:
        return verdict, _keep(ctx, run, phase, verdict.checked, tree)
    return dataclasses.replace(verdict, shown=_keep_refused(run, phase, verdict)), None


def _keep_refused(run: model.Run, phase: model.Phase, verdict: Verdict) -> dict[str, Any] | None:
    """Keep the bytes a refused attempt left at its artifact path (as read, within the size
    cap) in the workspace, so a person can see what the agent wrote; or say why not."""
    if phase.definition.artifact is None:
        return None
    checked = verdict.checked
    if checked is None:
        return {"kept": None, "why": f"not read: the attempt ended with {verdict.code}"}
    if checked.data is None:  # missing, too large, not a regular file, outside the worktree
        why = checked.issues[0].message if checked.issues else str(checked.code)
        return {"kept": None, "why": why}
    destination = workspace.invalid_copy(run, phase.key, phase.attempt)
    try:
        sha = artifacts.store(checked, destination)
    except OSError as exc:
        log.warning("refused_artifact_not_kept", run_id=run.id, phase=phase.key,
                    attempt=phase.attempt, error=str(exc))
        return {"kept": None, "why": f"cannot be written to {destination}: {exc.strerror}"}
    return {"kept": str(destination), "sha256": sha, "bytes": len(checked.data)}


def _keep(ctx: Context, run: model.Run, phase: model.Phase, checked: artifacts.Checked,
          tree: runtree.Tree) -> Kept:
    """Copy the validated bytes into the workspace and commit the checkpoint, together."""
    d = phase.definition
    assert d.artifact is not None and checked.data is not None
    stored = workspace.artifact_copy(run, phase.key, phase.attempt)
    message = f"devflow({phase.key}): attempt {phase.attempt}"
    removed: list[dict[str, Any]] = []
    # the copy is written and fsynced while git commits the checkpoint
    sha, commit = artifacts.store_while(
        checked, stored, lambda: worktree.checkpoint(tree, message, run.checkpoint_sha,
                                                     removed))
    # both points find the copy kept and the checkpoint committed, nothing recorded yet
    faults.point("artifact_stored")
    faults.point("checkpoint_committed")
    prompt.kept(str(stored), sha, checked.value)
    evidence: model.Evidence | None = None
    if d.gates:
        # the checkpoint committed the whole worktree (or found nothing to commit in a
        # clean one), so what the approver is shown is HEAD and its tree: one git process,
        # not a status and two rev-parses (a change made since would be refused at the
        # decision, as approval_stale)
        evidence = model.Evidence(d.artifact.path, sha, *worktree.head_and_tree(tree))
    record = model.ArtifactRecord(run.id, phase.key, phase.attempt, d.artifact.path,
                                  d.artifact.schema, sha, len(checked.data), str(stored),
                                  ctx.clock())
    return Kept(record, commit, evidence, removed)


def _complete(tx: RunTx, phase: model.Phase, kept: Kept) -> None:
    record, commit, evidence = kept.record, kept.commit, kept.evidence
    workspace.lock_events(tx, kept.removed)
    tx.add_artifact(record)
    fields: dict[str, Any] = {"artifact_sha": record.sha256, "artifact_stored": record.stored_path,
                              "control": model.NO_CONTROL}
    if commit is not None and commit != tx.run.checkpoint_sha:
        fields["checkpoint_sha"] = commit
        tx.set_run(checkpoint_sha=commit)
        tx.event(events.CHECKPOINT_COMMITTED.new(phase.key,
                                                 {"attempt": phase.attempt, "sha": commit}))
    tx.set_phase(phase.key, **fields)
    if evidence is not None:
        approvals.open_first_gate(tx, phase.key, evidence)
        return
    tx.move_phase(phase.key, PhaseState.COMPLETED, events.PHASE_COMPLETED.new(
        phase.key, {"attempt": phase.attempt, "artifact_sha": record.sha256,
                    "checkpoint": fields.get("checkpoint_sha")}))

