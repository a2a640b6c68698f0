"""``devflow demo``: devflow's main job end to end on a sample project, with scripted agents."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from devflow.cli import output
from devflow.cli.main import State
from devflow.cli.runs import DRIVER_EXIT, outcome, show_view

if TYPE_CHECKING:
    from devflow.app import RunView


@click.command("demo", epilog=f"""\b
Examples:
  devflow demo
  devflow demo --dir /tmp/try --no-auto-approve    # then decide its gates yourself

A second demo in the same --dir reuses its sample project. {DRIVER_EXIT}""")
@click.option("--dir", "directory", type=click.Path(path_type=Path, file_okay=False),
              help="Where to make the sample project, DIR/textkit (default: under "
                   "DEVFLOW_HOME/demo).")
@click.option("--auto-approve/--no-auto-approve", default=True, show_default=True,
              help="Let the demo approve its own gates (it says so when it does).")
@click.option("--json", "as_json", is_flag=True, help="The run as JSON when the demo stops.")
@click.pass_obj
def demo(state: State, directory: Path | None, auto_approve: bool, as_json: bool) -> int:
    """Run development@1 on a sample project with scripted agents, gates included.

    Nothing leaves the machine: the agents are scripted stand-ins, the project is made
    on the spot, and devflow's state goes to DEVFLOW_HOME (~/.devflow).
    """
    from devflow.approvals import DecisionRequest, new_token
    from devflow.cli.progress import Progress
    app = state.app
    request, reused = app.demo_request(directory)
    repo = request.repo

    def say(text: str) -> None:
        if not as_json:
            click.secho(text, fg="cyan")

    say(f"demo: sample project at {repo}" + (" (made by an earlier demo)" if reused else ""))
    say("demo: template development@1, scripted agents; the spec's first attempt is invalid "
        "on purpose (to show a repair), the planner adds one follow-up phase")
    with Progress(quiet=as_json) as progress:
        view = app.start(request, observer=progress)
        while view.gate is not None and auto_approve:
            gate = view.gate
            say(f"demo: approving gate {gate.gate} of phase {gate.phase_key} as 'demo' "
                f"(--auto-approve; a person would read it with `{output.program()} approvals "
                f"show {gate.id}` first)")
            app.decide(DecisionRequest(run_id=view.run.id, action="approve", actor="demo",
                                       token=new_token(), approval_id=gate.id,
                                       comment="approved by the demo (--auto-approve)"))
            view, _ = app.drive(view.run.id, observer=progress)
    show_view(view, as_json=as_json)
    if not as_json:
        _summary(view, repo)
    return outcome(view)


def _summary(view: RunView, repo: Path) -> None:
    run, name = view.run, output.program()
    click.echo()
    if view.gate is not None:
        click.secho(f"demo: the run waits at gate {view.gate.gate}: it is yours to decide "
                    "(above: how to read it and decide)", bold=True)
        click.echo(f"  then:     {name} run status {run.id}   |   {name} report {run.id} "
                   "once it ended")
    else:
        click.secho(f"demo finished: run {run.id} {run.state}", bold=True)
    click.echo(f"  run       {run.id}")
    click.echo(f"  worktree  {run.worktree}")
    click.echo(f"  branch    {run.branch}   (git -C {repo} log --oneline {run.branch})")
    if run.report_status:
        click.echo(f"  report    {name} report {run.id}   ({Path(run.workspace) / 'report.md'})")
        click.echo(f"  events    {name} events {run.id}")
    if name != "devflow":
        click.echo(f"\n`devflow` is not on your PATH (or is another one): "
                   f"`export PATH=\"{Path(name).parent}:$PATH\"` makes it this one.")
