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

_RUN_STATES = ["created", "bound", "executing", "planning", "awaiting_approval", "paused",
               "completed", "failed", "aborted"]


def _pairs(values: tuple[str, ...], option: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key or not val:
            raise click.BadParameter(f"{value!r}: write KEY=VALUE", param_hint=option)
        pairs[key.strip()] = val.strip()
    return pairs


def exit_code(view: RunView) -> int:
    return 1 if str(view.run.state) in ("failed", "aborted") else 0


def show_view(view: RunView, *, as_json: bool, extra: dict[str, Any] | None = None) -> int:
    if as_json:
        output.emit_json({**view.to_json(), **(extra or {})})
        return exit_code(view)
    run = view.run
    color = {"completed": "green", "failed": "red", "aborted": "red",
             "awaiting_approval": "yellow"}.get(str(run.state))
    click.echo(f"run {click.style(run.id, bold=True)}  {click.style(str(run.state), fg=color)}"
               f"  ({run.template_ref})")
    report = Path(run.workspace) / "report.md" if run.report_status else None
    output.kv([("repo", run.repo), ("base", f"{run.base} ({(run.base_sha or '')[:12]})"),
               ("branch", run.branch), ("worktree", run.worktree),
               ("failure", f"{run.failure_code}: {run.failure_reason}" if run.failure_code
                else None),
               ("usage", f"{run.tokens_in} tokens in, {run.tokens_out} out, ${run.cost_usd:.4f}"
                if run.tokens_in or run.cost_usd else None),
               ("report", str(report) if report else None), ("driver", _driver(view))])
    marks = {"completed": "✓", "failed": "✗", "skipped": "-", "awaiting_approval": "⏸"}
    click.echo("  phases  " + "  ".join(
        f"{p.key} {marks.get(str(p.state), '·')}" + (f"x{p.attempt}" if p.attempt > 1 else "")
        for p in view.phases))
    if view.gate is not None:
        g = view.gate
        click.echo()
        click.secho(f"waiting at gate {g.gate} (phase {g.phase_key}, round {g.round}), "
                    f"approval {g.id}", fg="yellow", bold=True)
        if g.message:
            click.echo("  " + g.message.strip().replace("\n", "\n  "))
        click.echo(f"  artifact  {g.evidence.artifact_path}  sha256 {g.evidence.artifact_sha}")
        click.echo(f"  read it:  devflow approvals show {g.id}")
        click.echo(f"  decide:   devflow approve {run.id}   |   devflow request-changes {run.id} "
                   f"--comment '...'   |   devflow reject {run.id}")
    return exit_code(view)


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


@click.group("run")
def run_group() -> None:
    """Start, watch and steer runs."""


@run_group.command("start")
@click.option("--repo", type=click.Path(path_type=Path), default=".", show_default=True,
              help="The git repository to work on.")
@click.option("--base", help="Branch (or ref) to start from; default: the repo's current branch.")
@click.option("--template", "-t", required=True, help="NAME or NAME@VERSION, e.g. development@1.")
@click.option("--requirements", "-r", type=click.Path(exists=True, dir_okay=False,
                                                      allow_dash=True),
              help="File with the requirements (UTF-8 text), or - for standard input.")
@click.option("--objective", "-o", help="One line saying what the run is for.")
@click.option("--bind", multiple=True, metavar="ROLE=PERSONA[@VERSION]",
              help="Bind a role to a persona (repeatable).")
@click.option("--scenario", multiple=True, metavar="PHASE=NAME",
              help="Scripted agents: the scenario of a phase (repeatable).")
@click.option("--run-id", help="Choose the run id (letters, digits, - and _).")
@click.option("--max-cost", type=float, help="Fail the run when agents' cost passes this (USD).")
@click.option("--detach", is_flag=True, help="Create the run and leave it to workers.")
@click.option("--json", "as_json", is_flag=True, help="Print the run as JSON.")
@click.pass_obj
def run_start(state: State, repo: Path, base: str | None, template: str,
              requirements: str | None, objective: str | None, bind: tuple[str, ...],
              scenario: tuple[str, ...], run_id: str | None, max_cost: float | None,
              detach: bool, as_json: bool) -> int:
    """Start a run of TEMPLATE on REPO and drive it until it ends or waits at a gate."""
    from devflow.cli.progress import Progress
    from devflow.engine.start import StartRequest, check_text
    # the bytes as read: the library decodes and checks them, with the objective (here
    # first, before the repository is looked at; and again where the run starts)
    data = _read_requirements(requirements)
    check_text(data, requirements, objective)
    app = state.app
    request = StartRequest(
        repo=repo, base=base or _current_branch(repo), template=template, requirements=data,
        requirements_source=requirements, objective=objective, binds=_pairs(bind, "--bind"),
        run_id=run_id, scenarios=_pairs(scenario, "--scenario"), max_cost=max_cost,
        actor=app.settings.actor)
    with Progress(quiet=as_json or detach) as progress:
        view = app.start(request, detach=detach, observer=progress)
    return show_view(view, as_json=as_json)


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
    except OSError as exc:
        raise DevflowError(Code.INVALID_INPUT, f"requirements file {path} cannot be read: "
                           f"{exc.strerror}", hint="check the path and its permissions") from exc


def _current_branch(repo: Path) -> str:
    from devflow import git, worktree
    from devflow.errors import Code, DevflowError
    result = git.run(["symbolic-ref", "--quiet", "--short", "HEAD"], repo, check=False)
    if result.returncode == 0 and result.stdout.strip():
        return result.stdout.strip()
    if result.returncode == 1:  # --quiet: HEAD is not a symbolic ref
        raise DevflowError(Code.INVALID_INPUT, f"HEAD of {repo} is detached: there is no "
                           "current branch to start from", hint="pass --base BRANCH")
    worktree.locate(repo.expanduser().resolve(), "HEAD")  # says what is wrong with --repo
    raise git.GitError(["symbolic-ref", "HEAD"], repo, result)


@run_group.command("status")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def run_status(state: State, run_id: str, as_json: bool) -> int:
    """Show a run, its phases and, at a gate, how to decide."""
    return show_view(state.app.view(run_id), as_json=as_json)


@run_group.command("list")
@click.option("--state", "states", multiple=True, type=click.Choice(_RUN_STATES))
@click.option("--repo", type=click.Path(path_type=Path))
@click.option("--limit", type=NUMBER, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def run_list(state: State, states: tuple[str, ...], repo: Path | None, limit: int,
             as_json: bool) -> None:
    """List runs, newest first."""
    from devflow.states import RunState
    runs = state.app.runs([RunState(s) for s in states] or None,
                          str(repo.resolve()) if repo else None, limit)
    if as_json:
        output.emit_json({"runs": [r.to_json() for r in runs]})
        return
    output.table(["run", "state", "template", "repo", "base", "created"],
                 [[r.id, r.state, r.template_ref, r.repo, r.base, f"{r.created_at:%Y-%m-%d %H:%M}"]
                  for r in runs])


@run_group.command("drive")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def run_drive(state: State, run_id: str, as_json: bool) -> int:
    """Drive a runnable run in the foreground (e.g. after `devflow sweep` recovered it)."""
    from devflow.cli.progress import Progress
    with Progress(quiet=as_json) as progress:
        view, drove = state.app.drive(run_id, observer=progress)
    if not drove and not as_json:
        click.echo(f"not driven here: the run is {view.run.state}"
                   + (f", held by {view.run.lease_owner}" if view.run.lease_owner else ""),
                   err=True)
    return show_view(view, as_json=as_json, extra={"driven": drove})


def _steer(verb: str) -> click.Command:
    @click.command(verb)
    @click.argument("run_id")
    @click.option("--reason", help="Why; recorded with the event.")
    @click.option("--as", "actor", metavar="NAME",
                  help="Attribute it to NAME (default: DEVFLOW_ACTOR, else your OS account); "
                       "at a gate that names approvers, refused unless config act_for_others "
                       "lists your account.")
    @click.option("--no-drive", is_flag=True, help="(resume) Leave the run to workers.")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_obj
    def command(state: State, run_id: str, reason: str | None, actor: str | None,
                no_drive: bool, as_json: bool) -> int:
        from devflow import access
        app = state.app
        # the OS account running this command is who acts; the name is whom it is
        # attributed to
        result = getattr(app, verb)(run_id, actor or app.settings.actor, reason,
                                    access.os_account())
        view = app.view(result.run.id)
        if verb == "resume" and result.changed and not no_drive:
            from devflow.cli.progress import Progress
            with Progress(quiet=as_json) as progress:
                view, _ = app.drive(result.run.id, observer=progress)
        if not as_json:
            click.echo(f"{verb}: " + ("done" if result.changed else "nothing to do (no change)"))
        show_view(view, as_json=as_json, extra={"changed": result.changed})
        # the command did what was asked (or it was already so): that is success, even for
        # an aborted run; refusals are errors with their own codes
        return 0 if verb != "resume" else exit_code(view)
    command.__doc__ = {"pause": "Pause a run: its driver stops before its next step.",
                       "resume": "Resume a paused run where it was, and drive it.",
                       "abort": "Abort a run: its agent is stopped and its report written."}[verb]
    return command


for _verb in ("pause", "resume", "abort"):
    run_group.add_command(_steer(_verb))


@click.command("events")
@click.argument("run_id")
@click.option("--after", type=NUMBER, default=0, show_default=True,
              help="Only events after SEQ.")
@click.option("--follow", "-f", is_flag=True, help="Wait for more until the run ends.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_obj
def events(state: State, run_id: str, after: int, follow: bool, as_json: bool) -> None:
    """Print a run's events from any sequence number."""
    for event in state.app.events(run_id, after, follow):
        if as_json:
            output.emit_line(event.to_json())
        else:
            payload = " ".join(f"{k}={v}" for k, v in event.payload.items() if v not in (None, ""))
            click.echo(f"{event.seq:>5} {event.ts:%Y-%m-%d %H:%M:%S} {event.type:<24} "
                       f"{event.phase or '':<14} {payload[:200]}")
        sys.stdout.flush()


@click.command("report")
@click.argument("run_id")
@click.option("--format", "fmt", type=click.Choice(["md", "json"]), default="md",
              show_default=True)
@click.option("--path", "path_only", is_flag=True, help="Print only the report's path.")
@click.pass_obj
def report(state: State, run_id: str, fmt: str, path_only: bool) -> None:
    """Print the final report of a terminal run."""
    path = state.app.report_path(run_id, fmt)
    click.echo(str(path) if path_only else path.read_text(encoding="utf-8"), nl=path_only)


def register(cli: click.Group) -> None:
    from devflow.cli import demo
    cli.add_command(run_group)
    cli.add_command(events)
    cli.add_command(report)
    cli.add_command(demo.demo)
