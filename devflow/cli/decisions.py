"""Commands of approvers: decide (approve, reject, request-changes, abort), approvals list|show."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from devflow.cli import output
from devflow.cli.main import NUMBER, State
from devflow.cli.runs import _pairs, show_view

_ACTIONS = {"approve": "approve", "reject": "reject", "request-changes": "request_changes",
            "request_changes": "request_changes", "abort": "abort"}


def _sections(pairs: tuple[str, ...], sections_file: Path | None) -> tuple[dict[str, str],
                                                                          dict[str, str]]:
    from devflow import jsontext
    from devflow.errors import Code, DevflowError
    verdicts = _pairs(pairs, "--section")
    comments: dict[str, str] = {}
    if sections_file is not None:
        try:
            data = jsontext.loads(sections_file.read_bytes())
        except OSError as exc:
            raise DevflowError(Code.INVALID_INPUT, f"--sections-file {sections_file}: "
                               f"{exc.strerror}", hint="check the path") from exc
        except jsontext.BadJSON as exc:
            raise DevflowError(Code.INVALID_INPUT, f"--sections-file {sections_file}: {exc}",
                               hint='a JSON object: {"KEY": "approve"} or '
                                    '{"KEY": {"verdict": "reject", "comment": "why"}}') from exc
        if not isinstance(data, dict):
            raise DevflowError(Code.INVALID_INPUT, "--sections-file must hold a JSON object",
                               hint='{"KEY": "approve" | "reject"}')
        for key, value in data.items():
            if isinstance(value, dict):
                verdicts[key] = str(value.get("verdict", ""))
                if value.get("comment"):
                    comments[key] = str(value["comment"])
            else:
                verdicts[key] = str(value)
    return verdicts, comments


def _decide(state: State, run_id: str, action: str, approval: int | None, token: str | None,
            comment: str | None, actor: str | None, no_drive: bool, as_json: bool,
            section: tuple[str, ...], sections_file: Path | None, rewind: bool,
            artifact_sha: str | None) -> int:
    from devflow import access
    from devflow.approvals import DecisionRequest, new_token
    from devflow.cli.progress import Progress
    app = state.app
    verdicts, comments = _sections(section, sections_file)
    made_token = token is None
    # who decides is the OS account running this command (its uid); --as and
    # DEVFLOW_ACTOR only name whom the decision is attributed to
    request = DecisionRequest(
        run_id=run_id, action=_ACTIONS[action], actor=actor or app.settings.actor,
        token=token or new_token(), approval_id=approval, comment=comment, sections=verdicts,
        section_comments=comments, rewind=rewind, expect_artifact_sha=artifact_sha,
        principal=access.os_account())
    result = app.decide(request)
    if not as_json:
        what = "replayed (already recorded)" if result.replayed else "recorded"
        click.echo(f"{request.action} on gate {result.approval.gate} of run {result.run.id} "
                   f"{what}; token {result.decision.client_token}"
                   + ("  (pass --token to retry safely)" if made_token else ""))
    view = app.view(result.run.id)
    drove = False
    # a replay drives too: the first call may have died right after recording
    if not no_drive and str(view.run.state) in ("executing", "planning"):
        with Progress(quiet=as_json) as progress:
            view, drove = app.drive(result.run.id, observer=progress)
        if not drove and not as_json:
            click.echo("a worker holds the run; it continues there", err=True)
    code = show_view(view, as_json=as_json, extra={**result.to_json(), "driven": drove})
    # The decision was recorded (or replayed): success, even when it ended the run;
    # 1 only when the run failed while this command drove it on.
    return code if drove else 0


def _decision_options(fn: Any) -> Any:
    for option in reversed([
        click.option("--approval", type=NUMBER, help="Approval id (default: the run's only "
                                                  "pending one)."),
        click.option("--token", help="Idempotency token; the same token repeats safely."),
        click.option("--comment", "-m", help="What you want; goes into the next prompt."),
        click.option("--as", "actor", metavar="NAME",
                     help="Attribute the decision to NAME (default: DEVFLOW_ACTOR, else your OS "
                          "account). A label where the gate names no approvers; where it "
                          "does, refused unless config act_for_others lists your account."),
        click.option("--section", multiple=True, metavar="KEY=approve|reject",
                     help="Decide one item of a sectioned artifact (repeatable)."),
        click.option("--sections-file", type=click.Path(path_type=Path, dir_okay=False),
                     help="JSON object of section verdicts (and comments)."),
        click.option("--rewind", is_flag=True,
                     help="(request-changes) Reset the worktree to the phase's previous "
                          "checkpoint first."),
        click.option("--artifact-sha", help="The artifact sha256 you were shown; refused "
                                            "(approval_stale) if the gate shows other bytes."),
        click.option("--no-drive", is_flag=True, help="Record only; leave the run to workers."),
        click.option("--json", "as_json", is_flag=True),
    ]):
        fn = option(fn)
    return fn


@click.command("decide")
@click.argument("run_id")
@click.argument("action", type=click.Choice(sorted(set(_ACTIONS))))
@_decision_options
@click.pass_obj
def decide(state: State, /, run_id: str, action: str, **kw: Any) -> int:
    """Decide the pending gate of RUN_ID: approve, reject, request-changes or abort."""
    return _decide(state, run_id, action, **kw)


def _shortcut(action: str) -> click.Command:
    @click.command(action)
    @click.argument("run_id")
    @_decision_options
    @click.pass_obj
    def command(state: State, /, run_id: str, **kw: Any) -> int:
        return _decide(state, run_id, action, **kw)
    command.__doc__ = f"Short for `devflow decide RUN_ID {action}`."
    return command


@click.group("approvals")
def approvals_group() -> None:
    """Approval requests: what gates wait for whom."""


@approvals_group.command("list")
@click.option("--pending", is_flag=True, help="Only requests still waiting.")
@click.option("--run", "run_id", help="Only this run's requests.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def approvals_list(state: State, pending: bool, run_id: str | None, as_json: bool) -> None:
    """List approval requests."""
    items = state.app.approvals(pending=pending, run_id=run_id)
    if as_json:
        output.emit_json({"approvals": [a.to_json() for a in items]})
        return
    output.table(["id", "run", "phase", "gate", "round", "state", "opened", "deadline"],
                 [[a.id, a.run_id, a.phase_key, a.gate, a.round, a.state,
                   f"{a.opened_at:%Y-%m-%d %H:%M}",
                   f"{a.deadline:%Y-%m-%d %H:%M}" if a.deadline else ""] for a in items])


@approvals_group.command("show")
@click.argument("approval_id", type=NUMBER)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def approvals_show(state: State, approval_id: int, as_json: bool) -> None:
    """Show a request, the evidence, the artifact and the decisions made."""
    approval, decisions, artifact = state.app.approval(approval_id)
    if as_json:
        output.emit_json({"approval": approval.to_json(),
                          "decisions": [d.to_json() for d in decisions], "artifact": artifact})
        return
    click.secho(f"approval {approval.id}: gate {approval.gate} of run {approval.run_id}, "
                f"phase {approval.phase_key}, round {approval.round}: {approval.state}", bold=True)
    if approval.message:
        click.echo("\n" + approval.message.strip() + "\n")
    ev = approval.evidence
    output.kv([("options", ", ".join(approval.options)),
               ("approvers", ", ".join(approval.approvers) or "anyone"),
               ("artifact", f"{ev.artifact_path}  sha256 {ev.artifact_sha}"),
               ("worktree", f"HEAD {ev.head_sha}  tree {ev.tree_sha}"),
               ("deadline", str(approval.deadline) if approval.deadline else None),
               ("sections", approval.sections)])
    if artifact is not None:
        click.echo("\n" + json.dumps(artifact, indent=2, ensure_ascii=False))
    from devflow import access
    for d in decisions:
        click.echo(f"\n{d.created_at:%Y-%m-%d %H:%M:%S} {d.actor}: {d.action}"
                   + (f": {d.comment}" if d.comment else "")
                   + f"\n  authenticated: {access.describe(d.authentication, d.actor)}")


def register(cli: click.Group) -> None:
    cli.add_command(decide)
    for action in ("approve", "reject", "request-changes"):
        cli.add_command(_shortcut(action))
    cli.add_command(approvals_group)
