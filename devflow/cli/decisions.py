"""Commands of approvers: decide (approve, reject, request-changes, abort), approvals list|show.

``decide RUN ACTION`` takes every option; the shortcuts take only what their action
uses (``approve --help`` offers no ``--rewind``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from devflow.cli import output
from devflow.cli.main import NUMBER, State
from devflow.cli.runs import DRIVER_EXIT, _pairs, outcome, show_view

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
        except FileNotFoundError as exc:
            raise DevflowError(Code.FILE_NOT_FOUND, f"--sections-file {sections_file}: no such "
                               "file", hint="check the path") from exc
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


def _decide(state: State, run_id: str, action: str, *, approval: int | None = None,
            token: str | None = None, comment: str | None = None, actor: str | None = None,
            no_drive: bool = False, as_json: bool = False, section: tuple[str, ...] = (),
            sections_file: Path | None = None, rewind: bool = False,
            artifact_sha: str | None = None) -> int:
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
    show_view(view, as_json=as_json, extra={**result.to_json(), "driven": drove})
    # The decision was recorded (or replayed): success, even when it ended the run as
    # asked (reject, abort); 1 only when the run failed while this command drove it on.
    return outcome(view) if drove else 0


# -- the options, each once; every command takes the ones its action uses -----------------
_Option = Callable[[Any], Any]
_APPROVAL = click.option("--approval", type=NUMBER, help="Approval id (default: the run's only "
                                                      "pending one).")
_TOKEN = click.option("--token", help="Idempotency token; the same token repeats safely.")
_AS = click.option("--as", "actor", metavar="NAME",
                   help="Attribute the decision to NAME (default: DEVFLOW_ACTOR, else your OS "
                        "account). A label where the gate names no approvers; where it does, "
                        "refused unless config act_for_others lists your account.")
_SECTION = click.option("--section", multiple=True, metavar="KEY=approve|reject",
                        help="Decide one item of a sectioned artifact (repeatable).")
_SECTIONS_FILE = click.option("--sections-file", type=click.Path(path_type=Path, dir_okay=False),
                              help="JSON object of section verdicts (and comments).")
_REWIND = click.option("--rewind", is_flag=True, help="Reset the worktree to the phase's "
                                                      "previous checkpoint first.")
_SHA = click.option("--artifact-sha", help="The artifact sha256 you were shown; refused "
                                           "(approval_stale) if the gate shows other bytes.")
_NO_DRIVE = click.option("--no-drive", is_flag=True,
                         help="Record only; leave the run to workers.")
_JSON = click.option("--json", "as_json", is_flag=True,
                     help="The decision, its outcome and the run as JSON.")


def _comment(text: str) -> _Option:
    return click.option("--comment", "-m", help=text)


def _with(options: list[_Option]) -> _Option:
    def apply(fn: Any) -> Any:
        for option in reversed(options):
            fn = option(fn)
        return fn
    return apply


@click.command("decide", epilog=f"""\b
Examples:
  devflow decide 20260101-abc234 approve --token t-1
  devflow decide 20260101-abc234 request-changes -m "cover the empty title" --rewind

approve and request-changes drive the run on here (unless --no-drive or a worker holds
it); reject fails the run and abort aborts it, each with its report. {DRIVER_EXIT}
reject and abort exit 0 once the run ended as asked.""")
@click.argument("run_id")
@click.argument("action", type=click.Choice(sorted(set(_ACTIONS))))
@_with([_APPROVAL, _TOKEN, _comment("What you want changed, or why; goes into the next prompt "
                                    "(request-changes) and the report."),
        _AS, _SECTION, _SECTIONS_FILE, _REWIND, _SHA, _NO_DRIVE, _JSON])
@click.pass_obj
def decide(state: State, /, run_id: str, action: str, **kw: Any) -> int:
    """Decide the pending gate of RUN_ID: approve, reject, request-changes or abort.

    A decision is bound to the evidence the gate shows (the artifact's sha256 and the
    worktree); the same --token repeats a decision safely.
    """
    return _decide(state, run_id, action, **kw)


@click.command("approve", epilog=f"""\b
Examples:
  devflow approve 20260101-abc234
  devflow approve 20260101-abc234 --section F2=reject    # approve all but finding F2

{DRIVER_EXIT}""")
@click.argument("run_id")
@_with([_APPROVAL, _TOKEN, _comment("A note for the report."), _AS, _SECTION, _SECTIONS_FILE,
        _SHA, _NO_DRIVE, _JSON])
@click.pass_obj
def approve(state: State, /, run_id: str, **kw: Any) -> int:
    """Approve the pending gate of RUN_ID and drive the run on to its next gate or its end.

    With --section KEY=reject, the rejected items go back to the agent as changes
    requested (on a phase plan: the rejected phases are left out).
    """
    return _decide(state, run_id, "approve", **kw)


@click.command("request-changes", epilog=f"""\b
Examples:
  devflow request-changes 20260101-abc234 -m "keep the public API unchanged"
  devflow request-changes 20260101-abc234 --section F1=reject --rewind

{DRIVER_EXIT}""")
@click.argument("run_id")
@_with([_APPROVAL, _TOKEN, _comment("What to change; goes into the next prompt (needed unless "
                                    "a --section is rejected)."),
        _AS, _SECTION, _SECTIONS_FILE, _REWIND, _SHA, _NO_DRIVE, _JSON])
@click.pass_obj
def request_changes(state: State, /, run_id: str, **kw: Any) -> int:
    """Send the pending gate's phase back to its agent with what to change, and drive it.

    The agent's next attempt gets your comment (and rejected sections); --rewind
    first resets the worktree to where the phase started.
    """
    return _decide(state, run_id, "request-changes", **kw)


@click.command("reject", epilog="""\b
Example:
  devflow reject 20260101-abc234 -m "not the change we need"

Exit 0 once the run failed as asked (approval_rejected), with its report.""")
@click.argument("run_id")
@_with([_APPROVAL, _TOKEN, _comment("Why; goes into the report."), _AS, _SHA, _JSON])
@click.pass_obj
def reject(state: State, /, run_id: str, **kw: Any) -> int:
    """Reject the pending gate of RUN_ID: the run fails and its report is written."""
    return _decide(state, run_id, "reject", **kw)


# -- approval requests ----------------------------------------------------------------------
@click.group("approvals")
def approvals_group() -> None:
    """Approval requests: what gates wait for whom."""


@approvals_group.command("list", epilog="""\b
Examples:
  devflow approvals list --pending
  devflow approvals list --run 20260101-abc234 --json""")
@click.option("--pending", is_flag=True, help="Only requests still waiting.")
@click.option("--run", "run_id", help="Only this run's requests.")
@click.option("--json", "as_json", is_flag=True, help="The requests as JSON.")
@click.pass_obj
def approvals_list(state: State, pending: bool, run_id: str | None, as_json: bool) -> None:
    """List approval requests, their gates and their state."""
    items = state.app.approvals(pending=pending, run_id=run_id)
    if as_json:
        output.emit_json({"approvals": [a.to_json() for a in items]})
        return
    output.table(["id", "run", "phase", "gate", "round", "state", "opened", "deadline"],
                 [[a.id, a.run_id, a.phase_key, a.gate, a.round, a.state,
                   f"{a.opened_at:%Y-%m-%d %H:%M}",
                   f"{a.deadline:%Y-%m-%d %H:%M}" if a.deadline else ""] for a in items])


@approvals_group.command("show", epilog="""\b
Example:
  devflow approvals show 3""")
@click.argument("approval_id", type=NUMBER)
@click.option("--json", "as_json", is_flag=True,
              help="The request, its decisions and the artifact as JSON.")
@click.pass_obj
def approvals_show(state: State, approval_id: int, as_json: bool) -> None:
    """Show a request: the gate's message, the evidence, the artifact and the decisions."""
    approval, decisions, artifact = state.app.approval(approval_id)
    if as_json:
        output.emit_json({"approval": approval.to_json(),
                          "decisions": [d.to_json() for d in decisions], "artifact": artifact})
        return
    click.secho(f"approval {approval.id}: gate {approval.gate} of run {approval.run_id}, "
                f"phase {approval.phase_key}, round {approval.round}: {approval.state}", bold=True)
    if approval.message:
        click.echo("\n" + output.paragraphs(approval.message) + "\n")
    ev = approval.evidence
    output.kv([("options", ", ".join(approval.options)),
               ("approvers", ", ".join(approval.approvers) or "anyone"),
               ("artifact", f"{ev.artifact_path}  sha256 {ev.artifact_sha}"),
               ("worktree", f"HEAD {ev.head_sha}  tree {ev.tree_sha}"),
               ("deadline", f"{approval.deadline:%Y-%m-%d %H:%M} UTC" if approval.deadline
                else None),
               ("sections", approval.sections)])
    if artifact is not None:
        click.echo("\n" + json.dumps(artifact, indent=2, ensure_ascii=False))
    from devflow import access
    for d in decisions:
        click.echo(f"\n{d.created_at:%Y-%m-%d %H:%M:%S} {d.actor}: {d.action}"
                   + (f": {d.comment}" if d.comment else "")
                   + (f"  sections {output.value_text('', dict(d.sections))}"
                      if d.sections else "")
                   + f"\n  authenticated: {access.describe(d.authentication, d.actor)}")


def register(cli: click.Group) -> None:
    for command in (decide, approve, request_changes, reject, approvals_group):
        cli.add_command(command)
