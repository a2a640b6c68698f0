"""Commands on runs: run start|status|list|drive|pause|resume|abort, events, report, demo."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from devflow.cli import output
from devflow.cli.main import NUMBER, State

if TYPE_CHECKING:
    from devflow.app import RunView
    from devflow.model import Binding

_RUN_STATES = ["created", "bound", "executing", "planning", "awaiting_approval", "paused",
               "completed", "failed", "aborted"]

#: what the exit code of a command that drives a run says, for its --help
DRIVER_EXIT = ("Exit 0 when the run completed, waits at a gate or is paused; 1 when it is "
               "failed or aborted at the end; 130 on Ctrl-C (the run is left runnable).")


def _pairs(values: tuple[str, ...], option: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key or not val:
            raise click.BadParameter(f"{value!r}: write KEY=VALUE", param_hint=option)
        pairs[key.strip()] = val.strip()
    return pairs


def outcome(view: RunView) -> int:
    """The exit code of a command that drove ``view``'s run: 1 if it ended failed or aborted."""
    return 1 if str(view.run.state) in ("failed", "aborted") else 0


_MARKS = {"completed": "✓", "failed": "✗", "skipped": "-", "awaiting_approval": "⏸",
          "running": "▶", "validating": "▶"}


def show_view(view: RunView, *, as_json: bool, extra: dict[str, Any] | None = None,
              agents: list[Binding] | None = None) -> None:
    if as_json:
        output.emit_json({**view.to_json(), **(extra or {})})
        return
    run = view.run
    color = {"completed": "green", "failed": "red", "aborted": "red",
             "awaiting_approval": "yellow"}.get(str(run.state))
    click.echo(f"run {click.style(run.id, bold=True)}  {click.style(str(run.state), fg=color)}"
               f"  ({run.template_ref})")
    report = Path(run.workspace) / "report.md" if run.report_status else None
    pruned = run.terminal and run.worktree and not Path(run.worktree).exists()
    output.kv([("repo", run.repo), ("base", f"{run.base} ({(run.base_sha or '')[:12]})"),
               ("branch", run.branch),
               ("worktree", f"{run.worktree} (removed)" if pruned else run.worktree),
               ("agents", ", ".join(f"{b.role} {b.persona_ref} ({b.backend})" for b in agents)
                if agents else None),
               ("failure", f"{run.failure_code}: {run.failure_reason}" if run.failure_code
                else None),
               ("usage", f"{run.tokens_in} tokens in, {run.tokens_out} out, "
                         f"{output.money(run.cost_usd)}" if run.tokens_in or run.cost_usd
                else None),
               ("report", str(report) if report else None),
               ("driver", output.commands(_driver(view) or ""))])
    click.echo("  phases")
    width = max((len(p.key) for p in view.phases), default=0)
    for p in view.phases:
        state = str(p.state).replace("_", " ")
        attempts = f"attempt {p.attempt}" if p.state in ("running", "validating") \
            else (f"{p.attempt} attempts" if p.attempt > 1 else "")
        click.echo(f"    {_MARKS.get(str(p.state), '·')} {p.key.ljust(width)}  "
                   f"{state:<18} {attempts}".rstrip())
    if view.gate is not None:
        g = view.gate
        name = output.program()
        click.echo()
        click.secho(f"waiting at gate {g.gate} (phase {g.phase_key}, round {g.round}), "
                    f"approval {g.id}", fg="yellow", bold=True)
        if g.message:
            click.echo(output.paragraphs(g.message, indent="  "))
        click.echo(f"  artifact  {g.evidence.artifact_path}  sha256 {g.evidence.artifact_sha}")
        click.echo(f"  read it:  {name} approvals show {g.id}")
        click.echo(f"  decide:   {name} approve {run.id}   |   {name} request-changes {run.id} "
                   f"--comment '...'   |   {name} reject {run.id}")


def _driver(view: RunView) -> str | None:
    """Who drives a runnable run, or what will: a run nobody holds waits for a worker."""
    from devflow.model import utcnow
    from devflow.states import RUNNABLE
    run = view.run
    if run.state not in RUNNABLE:
        return None
    if run.lease_owner is None:
        return (f"none: a worker (`devflow worker`) takes it up, or `devflow run drive {run.id}`"
                " drives it here")
    until = run.lease_expires_at
    if until is not None and until <= utcnow():
        return (f"none: the lease of {run.lease_owner} ran out at {until:%H:%M:%S} UTC; "
                "`devflow sweep` recovers the run")
    return f"{run.lease_owner}" + (f" (lease until {until:%H:%M:%S} UTC)" if until else "")


def _drive_here(state: State, run_id: str, as_json: bool) -> tuple[RunView, bool]:
    from devflow.cli.progress import Progress
    with Progress(quiet=as_json) as progress:
        return state.app.drive(run_id, observer=progress)


@click.group("run")
def run_group() -> None:
    """Start, watch and steer runs."""


@run_group.command("start", epilog=f"""\b
Examples:
  devflow run start --repo ~/src/app --base main -t development@1 -r requirements.md
  echo "Add a --verbose flag" | devflow run start -t quick@1 -r - --detach --json

{DRIVER_EXIT} With --detach: 0 once the run is created.""")
@click.option("--repo", type=click.Path(path_type=Path), default=".", show_default=True,
              help="The git repository to work on (any directory inside it).")
@click.option("--base", help="Branch (or ref) to start from; default: the repo's current branch.")
@click.option("--template", "-t", required=True, help="NAME or NAME@VERSION, e.g. development@1.")
@click.option("--requirements", "-r", type=click.Path(dir_okay=False, allow_dash=True),
              help="File with the requirements (UTF-8 text), or - for standard input.")
@click.option("--objective", "-o", help="One line saying what the run is for.")
@click.option("--bind", multiple=True, metavar="ROLE=PERSONA[@VERSION]",
              help="Bind a role to a persona (repeatable).")
@click.option("--scenario", multiple=True, metavar="PHASE=NAME",
              help="Scripted agents: the scenario of a phase of the template (repeatable): ok, "
                   "invalid-then-ok, invalid, no-artifact, exit-1, slow:SECONDS, plan:N, edit.")
@click.option("--run-id", help="Choose the run id (letters, digits, - and _).")
@click.option("--max-cost", type=float, help="Fail the run when agents' cost passes this (USD).")
@click.option("--detach", is_flag=True, help="Create the run and leave it to workers.")
@click.option("--json", "as_json", is_flag=True, help="Print the run as JSON.")
@click.pass_obj
def run_start(state: State, repo: Path, base: str | None, template: str,
              requirements: str | None, objective: str | None, bind: tuple[str, ...],
              scenario: tuple[str, ...], run_id: str | None, max_cost: float | None,
              detach: bool, as_json: bool) -> int:
    """Start a run of TEMPLATE on REPO and drive it until it ends or waits at a gate.

    The run works in a worktree of its own on branch devflow/RUN/main; the repository's
    own branches are never touched. Progress shows on stderr while agents work.
    """
    from devflow.cli.progress import Progress
    from devflow.requests import StartRequest
    # the bytes as read: the library decodes and checks them, with the objective, before
    # it looks at the repository (no --base: its current branch)
    data = _read_requirements(requirements)
    app = state.app
    request = StartRequest(
        repo=repo, base=base or None, template=template, requirements=data,
        requirements_source=requirements, objective=objective, binds=_pairs(bind, "--bind"),
        run_id=run_id, scenarios=_pairs(scenario, "--scenario"), max_cost=max_cost,
        actor=app.settings.actor)
    with Progress(quiet=as_json or detach) as progress:
        view = app.start(request, detach=detach, observer=progress)
    agents = None if as_json else app.bindings(view.run.id)
    show_view(view, as_json=as_json, agents=agents)
    if agents and not bind and all(b.backend == "scripted" for b in agents):
        click.secho(output.commands(
            "note: every role went to a scripted stand-in, not a real agent: no --bind, and "
            "no persona of a real agent CLI is available here (`devflow backends list` says "
            "why)"), fg="yellow", err=True)
    return 0 if detach else outcome(view)


def _read_requirements(path: str | None) -> bytes:
    """The bytes of the requirements file (``-``: standard input), read here and closed
    (a file click opened stayed open when a later option was refused)."""
    from devflow.errors import Code, DevflowError
    if path is None:
        return b""
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise DevflowError(Code.FILE_NOT_FOUND, f"requirements file {path} does not exist",
                           hint="check the path (relative paths are from the current "
                                "directory), or give - to read standard input") from exc
    except OSError as exc:
        raise DevflowError(Code.INVALID_INPUT, f"requirements file {path} cannot be read: "
                           f"{exc.strerror}", hint="check the path and its permissions") from exc


@run_group.command("status", epilog="""\b
Example:
  devflow run status 20260101-abc234 --json | jq -r .run.state

Exit 0 whatever state the run is in (failed included); 4 if there is no such run.""")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="The run, its phases and its gate as JSON.")
@click.pass_obj
def run_status(state: State, run_id: str, as_json: bool) -> None:
    """Show a run, its phases and, at a gate, how to decide."""
    show_view(state.app.view(run_id), as_json=as_json)


@run_group.command("list", epilog="""\b
Examples:
  devflow run list --state awaiting_approval
  devflow run list --repo . --json""")
@click.option("--state", "states", multiple=True, type=click.Choice(_RUN_STATES),
              help="Only runs in this state (repeatable).")
@click.option("--repo", type=click.Path(path_type=Path),
              help="Only runs of the repository containing this path.")
@click.option("--limit", type=NUMBER, default=50, show_default=True,
              help="At most this many runs.")
@click.option("--json", "as_json", is_flag=True, help="The runs as JSON.")
@click.pass_obj
def run_list(state: State, states: tuple[str, ...], repo: Path | None, limit: int,
             as_json: bool) -> None:
    """List runs, newest first."""
    from devflow.states import RunState
    runs = state.app.runs([RunState(s) for s in states] or None, repo, limit)
    if as_json:
        output.emit_json({"runs": [r.to_json() for r in runs]})
        return
    output.table(["run", "state", "template", "repo", "base", "created"],
                 [[r.id, r.state, r.template_ref, r.repo, r.base, f"{r.created_at:%Y-%m-%d %H:%M}"]
                  for r in runs], wrap=("repo",))


@run_group.command("drive", epilog=f"""\b
Example:
  devflow run drive 20260101-abc234

{DRIVER_EXIT}""")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="The run as JSON when the drive stops.")
@click.pass_obj
def run_drive(state: State, run_id: str, as_json: bool) -> int:
    """Drive a runnable run in the foreground (e.g. after an interruption or a sweep).

    A run that a live worker holds is left to it; a run at a gate waits for a decision.
    """
    view, drove = _drive_here(state, run_id, as_json)
    if not drove and not as_json:
        click.echo(f"not driven here: the run is {view.run.state}"
                   + (f", held by {view.run.lease_owner}" if view.run.lease_owner else ""),
                   err=True)
    show_view(view, as_json=as_json, extra={"driven": drove})
    return outcome(view)


def _steered(state: State, verb: str, run_id: str, reason: str | None, actor: str | None,
             as_json: bool) -> tuple[RunView, bool]:
    from devflow import access
    app = state.app
    # the OS account running this command is who acts; the name is whom it is attributed to
    result = getattr(app, verb)(run_id, actor or app.settings.actor, reason,
                                access.os_account())
    if not as_json:
        click.echo(f"{verb}: " + ("done" if result.changed else "nothing to do (no change)"))
    return app.view(result.run.id), result.changed


_REASON = click.option("--reason", help="Why; recorded with the event.")
_AS = click.option("--as", "actor", metavar="NAME",
                   help="Attribute it to NAME (default: DEVFLOW_ACTOR, else your OS account); "
                        "at a gate that names approvers, refused unless config act_for_others "
                        "lists your account.")
_JSON = click.option("--json", "as_json", is_flag=True, help="The run as JSON.")


@run_group.command("pause", epilog="""\b
Example:
  devflow run pause 20260101-abc234 --reason "waiting for the API freeze"

Exit 0 once the run is paused (or already was); 3 if it already ended.""")
@click.argument("run_id")
@_REASON
@_AS
@_JSON
@click.pass_obj
def run_pause(state: State, run_id: str, reason: str | None, actor: str | None,
              as_json: bool) -> None:
    """Pause a run: its driver stops before its next step; an agent at work finishes."""
    view, changed = _steered(state, "pause", run_id, reason, actor, as_json)
    show_view(view, as_json=as_json, extra={"changed": changed})


@run_group.command("resume", epilog=f"""\b
Examples:
  devflow run resume 20260101-abc234
  devflow run resume 20260101-abc234 --no-drive     # a worker continues it

{DRIVER_EXIT} With --no-drive, or when the run was not paused: 0.""")
@click.argument("run_id")
@_REASON
@_AS
@click.option("--no-drive", is_flag=True, help="Leave the run to workers; do not drive it here.")
@_JSON
@click.pass_obj
def run_resume(state: State, run_id: str, reason: str | None, actor: str | None,
               no_drive: bool, as_json: bool) -> int:
    """Resume a paused run where it was, and drive it here."""
    view, changed = _steered(state, "resume", run_id, reason, actor, as_json)
    drove = False
    if changed and not no_drive:
        view, drove = _drive_here(state, view.run.id, as_json)
    show_view(view, as_json=as_json, extra={"changed": changed, "driven": drove})
    return outcome(view) if drove else 0


@run_group.command("abort", epilog="""\b
Example:
  devflow run abort 20260101-abc234 --reason "requirements changed"

Exit 0 once the run is aborted (or already was): that is what was asked; 3 if it
already completed or failed.""")
@click.argument("run_id")
@_REASON
@_AS
@_JSON
@click.pass_obj
def run_abort(state: State, run_id: str, reason: str | None, actor: str | None,
              as_json: bool) -> None:
    """Abort a run: its agent is stopped, its gates closed, and its report written."""
    view, changed = _steered(state, "abort", run_id, reason, actor, as_json)
    show_view(view, as_json=as_json, extra={"changed": changed})


@click.command("events", epilog="""\b
Examples:
  devflow events 20260101-abc234 --follow
  devflow events 20260101-abc234 --after 40 --json | jq .type

Each line: sequence number, time (UTC), type, phase, and the payload as key=value
with JSON values. --json: one JSON object per line.""")
@click.argument("run_id")
@click.option("--after", type=NUMBER, default=0, show_default=True,
              help="Only events after sequence number SEQ.")
@click.option("--follow", "-f", is_flag=True, help="Wait for more until the run ends.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_obj
def events(state: State, run_id: str, after: int, follow: bool, as_json: bool) -> None:
    """Print a run's events from any sequence number."""
    for event in state.app.events(run_id, after, follow):
        if as_json:
            output.emit_line(event.to_json())
        else:
            click.echo(f"{event.seq:>5} {event.ts:%Y-%m-%d %H:%M:%S} {event.type:<24} "
                       f"{event.phase or '-':<14} {output.pairs_text(dict(event.payload))}"
                       .rstrip())
        sys.stdout.flush()


@click.command("report", epilog="""\b
Examples:
  devflow report 20260101-abc234                 # Markdown, for people
  devflow report 20260101-abc234 --json | jq .unresolved
  devflow report 20260101-abc234 --path          # where report.md is

Exit 3 while the run has not ended (its report is written when it does).""")
@click.argument("run_id")
@click.option("--format", "fmt", type=click.Choice(["md", "json"]), default=None,
              help="md (default) or json (common/final-report@1).")
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.option("--path", "path_only", is_flag=True, help="Print only the report file's path.")
@click.pass_obj
def report(state: State, run_id: str, fmt: str | None, as_json: bool, path_only: bool) -> None:
    """Print the final report of a run that ended (completed, failed or aborted)."""
    from devflow.errors import Code, DevflowError
    if as_json and fmt == "md":
        raise DevflowError(Code.INVALID_INPUT, "--json and --format md contradict each other",
                           hint="use one of them")
    chosen = "json" if as_json else (fmt or "md")
    path = state.app.report_path(run_id, chosen)
    if path_only:
        if as_json:
            output.emit_json({"path": str(path)})
        else:
            click.echo(str(path))
        return
    click.echo(path.read_text(encoding="utf-8"), nl=False)


def register(cli: click.Group) -> None:
    from devflow.cli import demo
    cli.add_command(run_group)
    cli.add_command(events)
    cli.add_command(report)
    cli.add_command(demo.demo)
