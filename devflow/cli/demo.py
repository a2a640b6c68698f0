"""``devflow demo``: devflow's main job end to end on a sample project, with scripted agents."""

from __future__ import annotations

import textwrap
from pathlib import Path

import click

from devflow.cli.main import State
from devflow.cli.runs import show_view

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


def _sample_repo(directory: Path) -> Path:
    from devflow import git
    repo = directory / "textkit"
    repo.mkdir(parents=True)
    for name, body in _FILES.items():
        path = repo / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(body), encoding="utf-8")
    git.run(["init", "--quiet", "--initial-branch=main"], repo)
    git.run(["add", "--all"], repo)
    git.run(["commit", "--quiet", "--no-verify", "-m", "textkit: slugify"], repo, env=git.AUTHOR)
    return repo


@click.command("demo")
@click.option("--dir", "directory", type=click.Path(path_type=Path, file_okay=False),
              help="Where to make the sample project (default: under DEVFLOW_HOME/demo).")
@click.option("--auto-approve/--no-auto-approve", default=True, show_default=True,
              help="Let the demo approve its own gates (it says so when it does).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def demo(state: State, directory: Path | None, auto_approve: bool, as_json: bool) -> int:
    """Run development@1 on a sample project with scripted agents, gates included."""
    from devflow.approvals import DecisionRequest, new_token
    from devflow.cli.progress import Progress
    from devflow.engine.start import StartRequest
    app = state.app
    base = directory or app.settings.home / "demo" / app.store.clock().strftime("%Y%m%d-%H%M%S")
    repo = _sample_repo(base.resolve())

    def say(text: str) -> None:
        if not as_json:
            click.secho(text, fg="cyan")

    say(f"demo: sample project at {repo}")
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
                f"(--auto-approve; a person would read it with `devflow approvals show "
                f"{gate.id}` first)")
            app.decide(DecisionRequest(run_id=view.run.id, action="approve", actor="demo",
                                       token=new_token(), approval_id=gate.id,
                                       comment="approved by the demo (--auto-approve)"))
            view, _ = app.drive(view.run.id, observer=progress)
    code = show_view(view, as_json=as_json)
    if not as_json:
        run = view.run
        click.echo()
        click.secho("demo finished", bold=True)
        click.echo(f"  run       {run.id}")
        click.echo(f"  worktree  {run.worktree}")
        click.echo(f"  branch    {run.branch}   (git -C {repo} log --oneline {run.branch})")
        if run.report_status:
            click.echo(f"  report    {Path(run.workspace) / 'report.json'}")
            click.echo(f"            {Path(run.workspace) / 'report.md'}")
    return code
