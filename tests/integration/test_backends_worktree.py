"""What an agent finds when it starts, on SQLite and PostgreSQL: untracked files named by
``.worktreeinclude`` copied into its worktree, the template's ``setup`` run first (its
failure fails the run, with its output in the report), and a block of TCP ports of its
run's own (``DEVFLOW_PORT_BASE``), disjoint from every other active run's."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from devflow import atomic, git, worktree
from devflow.app import App
from devflow.requests import StartRequest
from devflow.settings import Settings
from tests.conftest import make_repo
from tests.fakes.stubs import stub_artifacts, stub_calls, stub_persona
from tests.integration.helpers import QUICK_BINDS, report_of, write_template

FAIL = "import sys; print('resolver: no wheel for lib 9.9', file=sys.stderr); sys.exit(3)"


def _ignore(repo: Path, *patterns: str) -> None:
    (repo / ".gitignore").write_text("\n".join(patterns) + "\n", encoding="utf-8")
    git.run(["add", ".gitignore"], repo)
    git.run(["commit", "--quiet", "--no-verify", "-m", "ignore"], repo, env=git.AUTHOR)


def test_worktreeinclude_copies_untracked_files_into_the_worktree(app: App, repo: Path) -> None:
    _ignore(repo, ".env", ".claude/", "build/")
    (repo / ".env").write_text("API_URL=http://127.0.0.1:9\n", encoding="utf-8")
    (repo / ".claude").mkdir()
    (repo / ".claude" / "settings.json").write_text('{"permissions": {}}\n', encoding="utf-8")
    (repo / "build").mkdir()
    (repo / "build" / "big.bin").write_text("not wanted\n", encoding="utf-8")
    (repo / ".worktreeinclude").write_text("# copied into each run's worktree\n.env\n.claude/\n",
                                           encoding="utf-8")
    view = app.start(StartRequest(repo=repo, base="main", template="quick@1", actor="tester",
                                  requirements="Add a farewell.", binds=QUICK_BINDS))
    assert view.run.state == "completed", view.run.failure_reason
    tree = Path(view.run.worktree)
    assert (tree / ".env").read_text(encoding="utf-8") == "API_URL=http://127.0.0.1:9\n"
    assert (tree / ".claude" / "settings.json").is_file()
    assert not (tree / "build").exists()
    # still untracked: the copies never reach the run's commits
    files = {f["path"] for f in report_of(view)["git"]["files"]}
    assert not {".env", ".claude/settings.json"} & files


def test_failing_setup_fails_the_run_with_its_output_in_the_report(
        settings: Settings, repo: Path, tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    write_template(templates, "with-setup", f"""
        name: with-setup
        version: 1
        description: quick@1 with a setup that fails.
        roles:
          implementer: {{description: Makes the change.}}
        setup:
          - [{json.dumps(sys.executable)}, -c, "print('installing deps')"]
          - [{json.dumps(sys.executable)}, -c, {json.dumps(FAIL)}]
          - [{json.dumps(sys.executable)}, -c, "open('never-run', 'w')"]
        phases:
          - key: implement
            title: Implement
            roles: [implementer]
            artifact: {{path: .devflow/implementation.json, schema: dev/implementation@1}}
            instructions: Do it.
        """)
    app = App(settings.replace(templates_dirs=(templates,)))
    try:
        view = app.start(StartRequest(
            repo=repo, base="main", template="with-setup@1", actor="tester",
            requirements="Add a farewell.", binds={"implementer": "scripted-implementer@1"}))
        assert view.run.state == "failed"
        assert view.run.failure_code == "setup_failed"
        assert "resolver: no wheel for lib 9.9" in (view.run.failure_reason or "")
        report = report_of(view)
        assert "resolver: no wheel for lib 9.9" in report["run"]["failure"]["reason"]
        setups = [i for i in report["invocations"] if i["kind"] == "setup"]
        assert [(i["attempt"], i["exit_code"]) for i in setups] == [(1, 0), (2, 3)]
        assert not [i for i in report["invocations"] if i["kind"] == "agent"]
        assert not (Path(view.run.worktree) / "never-run").exists()
        logs = Path(view.run.workspace) / "logs"
        assert (logs / "setup-1.stdout.log").read_text(encoding="utf-8") == "installing deps\n"
        assert "no wheel for lib 9.9" in (logs / "setup-2.stderr.log").read_text(encoding="utf-8")
        markdown = (Path(view.run.workspace) / "report.md").read_text(encoding="utf-8")
        assert "resolver: no wheel for lib 9.9" in markdown
    finally:
        app.close()


def test_concurrent_runs_get_disjoint_port_blocks(settings: Settings, tmp_path: Path) -> None:
    stub_dirs = [tmp_path / "stub-a", tmp_path / "stub-b"]
    personas = tmp_path / "personas"
    refs = [stub_persona(personas, f"stub-planner-{i}", "planner", d)
            for i, d in enumerate(stub_dirs)]
    app = App(settings.replace(personas_dirs=(personas,), port_block=7))
    try:
        views = []
        for index, (stub_dir, ref) in enumerate(zip(stub_dirs, refs, strict=True)):
            stub_artifacts(app, stub_dir)
            repo = make_repo(tmp_path / f"repo-{index}")
            # development@1 waits at its first gate: both runs are active at once
            views.append(app.start(StartRequest(
                repo=repo, base="main", template="development@1", actor="tester",
                requirements="Add a farewell.",
                binds={"planner": ref, "implementer": "scripted-implementer@1",
                       "reviewer": "scripted-reviewer@1"})))
        assert all(v.gate is not None for v in views), [v.run.state for v in views]
        bases = [v.run.port_base for v in views]
        assert all(isinstance(b, int) for b in bases), bases
        first, last = settings.ports
        blocks = [set(range(b, b + 7)) for b in bases if b is not None]
        assert not blocks[0] & blocks[1], bases
        assert all(first <= min(b) and max(b) <= last for b in blocks)
        for view, stub_dir in zip(views, stub_dirs, strict=True):
            (call,) = stub_calls(stub_dir).values()
            assert call["env"]["DEVFLOW_PORT_BASE"] == str(view.run.port_base)
    finally:
        app.close()


def test_bytes_that_are_not_utf8_are_shown_not_fatal(tmp_path: Path) -> None:
    """A Latin-1 file, file name and commit message on a run's branch (an agent's, or any
    repository's): the diff, the diff stat and the commits are shown with U+FFFD where
    they were not UTF-8, and a report holding them is written."""
    repo = make_repo(tmp_path / "repo", files={"a.txt": "x\n"})
    base = git.out(["rev-parse", "HEAD"], repo)
    git.run(["checkout", "-q", "-b", "devflow/r/main"], repo)
    (repo / "a.txt").write_bytes(b"caf\xe9\n")
    (repo / os.fsdecode(b"f\xe9.txt")).write_bytes(b"\xff\n")
    git.run(["add", "-A"], repo)
    tree = git.out(["write-tree"], repo)
    message = tmp_path / "message"
    message.write_bytes(b"caf\xe9 by an agent\n")  # no encoding header: raw bytes
    commit = git.out(["commit-tree", tree, "-p", base, "-F", str(message)], repo,
                     env=git.AUTHOR)
    git.run(["update-ref", "refs/heads/devflow/r/main", commit], repo)
    found = worktree.diff(repo, base, "devflow/r/main", 100_000)
    assert found is not None
    text, cut = found
    assert "+caf\ufffd" in text and not cut
    [subject] = [c.subject for c in worktree.commits(repo, base, "devflow/r/main")]
    # git may take such a message for Latin-1 itself; either way it is text a report holds
    assert subject in ("caf\ufffd by an agent", "café by an agent")
    subject.encode("utf-8")
    assert len(worktree.diffstat(repo, base, "devflow/r/main")) == 2
    report = tmp_path / "report.md"
    atomic.write_text(report, "files: " + git.run(["ls-files", "-z"], repo).stdout)
    assert report.read_bytes().startswith(b"files: ")
