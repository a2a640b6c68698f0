"""``devflow demo``: devflow's main job end to end on a sample project, with scripted agents."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import click

from devflow.cli import output
from devflow.cli.main import State
from devflow.cli.runs import DRIVER_EXIT, outcome, show_view

if TYPE_CHECKING:
    from devflow.app import RunView

_FILES = {
    "README.md": """\
        # textkit

        Small text helpers used by the export tool.

        ## Usage

            from textkit.slug import slugify
            slugify("Hello, World!")  # "hello-world"
        """,
    "textkit/__init__.py": '"""Small text helpers."""\n',
    "textkit/slug.py": """\
        import re


        def slugify(text: str) -> str:
            return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
        """,
    "tests/test_slug.py": """\
        from textkit.slug import slugify


        def test_basic():
            assert slugify("Hello, World!") == "hello-world"
        """,
}
_REQUIREMENTS = """\
Export file names are built from document titles with textkit.slug.slugify.
Titles with accents lose their letters (\"Café déjà vu\" becomes \"caf-d-j-vu\")
and very long titles make file names the file system refuses.

- Transliterate accented Latin letters to ASCII before slugifying.
- Add a max_length parameter (default 80) that cuts at a word boundary.
- Keep slugify("Hello, World!") == "hello-world".
"""


def _sample_repo(directory: Path) -> tuple[Path, bool]:
    """The sample project under ``directory``: made there, or the one an earlier demo made
    (True); anything else already at that place is left alone: an error."""
    from devflow import git
    from devflow.errors import Code, DevflowError
    repo = directory / "textkit"
    if repo.exists():
        made = git.run(["log", "-1", "--format=%s", "main"], repo, check=False) \
            if repo.is_dir() else None
        if made is not None and made.returncode == 0 and made.stdout.strip() == _SUBJECT:
            return repo, True
        raise DevflowError(Code.INVALID_INPUT, f"{repo} exists and is not devflow's sample "
                           "project", hint="choose another --dir (the demo makes DIR/textkit)")
    repo.mkdir(parents=True)
    for name, body in _FILES.items():
        path = repo / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(body), encoding="utf-8")
    git.run(["init", "--quiet", "--initial-branch=main"], repo)
    git.run(["add", "--all"], repo)
    git.run(["commit", "--quiet", "--no-verify", "-m", _SUBJECT], repo, env=git.AUTHOR)
    return repo, False


_SUBJECT = "textkit: slugify"


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
    from devflow.engine.start import StartRequest
    app = state.app
    base = directory or app.settings.home / "demo" / app.store.clock().strftime("%Y%m%d-%H%M%S")
    repo, reused = _sample_repo(base.expanduser().resolve())

    def say(text: str) -> None:
        if not as_json:
            click.secho(text, fg="cyan")

    say(f"demo: sample project at {repo}" + (" (made by an earlier demo)" if reused else ""))
    say("demo: template development@1, scripted agents; the spec's first attempt is invalid "
        "on purpose (to show a repair), the planner adds one follow-up phase")
    request = StartRequest(
        repo=repo, base="main", template="development@1", requirements=_REQUIREMENTS,
        objective="Readable, bounded export file names", actor=app.settings.actor,
        binds={"planner": "scripted-planner", "implementer": "scripted-implementer",
               "reviewer": "scripted-reviewer"},
        scenarios={"spec": "invalid-then-ok", "plan": "plan:1"})
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
