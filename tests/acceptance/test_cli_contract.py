"""The contract every ``devflow`` command keeps, walked over the whole command tree.

- Exit codes (``devflow --help``): 0 done as asked, 1 failed (and, for a command that
  drives a run, the run failed or aborted), 2 invalid input, 3 conflict, 4 not found.
  Every command is run on success and on each class of error it can meet; a command
  added without its cases fails the walk.
- Help: every command says what it does and shows an example; each decision shortcut
  offers only the options of its action.

The commands run through the real entry point, each in its own process, forked from a
server that imported devflow once (``cli_fork``): about a hundred commands, on SQLite and
on PostgreSQL, in seconds.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from devflow import git
from devflow.app import App
from devflow.settings import Settings
from tests.acceptance.cli_fork import ForkedCli, Result, cli_env
from tests.gates_support import start
from tests.integration.helpers import QUICK_CLI_BINDS, requirements_file

#: the exit codes of refusals: with --json they print {"error": {...}}
REFUSALS = (2, 3, 4)


def leaf_commands() -> list[str]:
    """Every command a user can run, as its path: ``run start``, ``events`` ..."""
    from devflow.cli import main as entry
    entry._register()
    found: list[str] = []

    def walk(group: click.Group, prefix: str) -> None:
        for name, command in sorted(group.commands.items()):
            path = f"{prefix} {name}".strip()
            if isinstance(command, click.Group):
                walk(command, path)
            else:
                found.append(path)
    walk(entry.cli, "")
    return found


@pytest.fixture
def forked(settings: Settings, tmp_path: Path) -> Iterator[ForkedCli]:
    scratch = tmp_path / "forked"
    scratch.mkdir()
    with ForkedCli(cli_env(settings.home, settings.database_url, settings.workspace),
                   scratch) as server:
        yield server


def _branches(repo: Path, *names: str) -> None:
    for name in names:
        git.run(["branch", name, "main"], repo)


def _command_of(args: tuple[str, ...]) -> str:
    """The command path an argv runs: ``run start`` of ``("run", "start", "--repo", ...)``."""
    words = [a for a in args if not a.startswith("-")]
    if words and words[0] in ("run", "approvals", "templates", "personas", "schemas", "db",
                              "backends", "workers", "worktree", "triggers",
                              "tokens", "daemon"):
        return " ".join(words[:2])
    return words[0] if words else ""


@pytest.mark.slow
def test_every_command_exits_by_the_rule(app: App, forked: ForkedCli, repo: Path,
                                         settings: Settings, tmp_path: Path) -> None:
    _branches(repo, "b1", "b2", "b3", "b4", "b5", "b6", "b7")
    gated = start(app, repo).run.id                                    # waits at spec_review
    doomed = start(app, repo, scenarios={"plan": "plan:0", "implement": "exit-1"},
                   base="b4").run.id                                   # fails once approved
    parked = start(app, repo, base="b5").run.id                        # approved, not driven
    aborted = start(app, repo, base="b6").run.id
    req = str(requirements_file(tmp_path))
    quick = ["--template", "quick@1", "--requirements", req, *QUICK_CLI_BINDS]
    defs = tmp_path / "defs"
    defs.mkdir()
    (defs / "broken.yaml").write_text("name: [unclosed\n", encoding="utf-8")
    (defs / "broken.json").write_text('{"$id": "acme/broken@1", "minLength": -1}',
                                      encoding="utf-8")
    (defs / "doc.json").write_text("{}", encoding="utf-8")
    (defs / "a-file").write_text("not a directory\n", encoding="utf-8")
    sample = Path(__file__).resolve().parents[2] / "devflow" / "backends" / "samples"
    unreachable = {"DEVFLOW_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/none"}

    ran: list[tuple[Result, int]] = []

    def case(want: int, *args: str, env: dict[str, str] | None = None) -> Result:
        result = forked.run(*args, env=env)
        ran.append((result, want))
        assert result.returncode == want, (
            f"devflow {' '.join(args)} exited {result.returncode}, wanted {want}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
        assert "Traceback" not in result.stderr, result.stderr
        if want in REFUSALS and "--json" in args:
            body = json.loads(result.stdout)
            if "error" in body:
                assert body["error"]["code"] and body["error"]["message"], body
            else:  # validate and check: the verdict on each file is the output
                assert body.get("invalid") or body.get("valid") is False, body
        return result

    def run_id_of(result: Result) -> str:
        return str(json.loads(result.stdout)["run"]["id"])

    # -- run start: the run's outcome, and each kind of refusal
    done = run_id_of(case(0, "run", "start", "--repo", str(repo), "--base", "b1", *quick,
                          "--json"))
    failed = run_id_of(case(1, "run", "start", "--repo", str(repo), "--base", "b2", *quick,
                            "--scenario", "implement=exit-1", "--json"))
    detached = run_id_of(case(0, "run", "start", "--repo", str(repo), "--base", "b3", *quick,
                              "--detach", "--json"))
    case(2, "run", "start", "--repo", str(repo), "--base", "b3", *quick,
         "--scenario", "implment=ok", "--json")                        # no such phase
    case(2, "run", "start", "--json")                                  # --template missing
    case(3, "run", "start", "--repo", str(repo), "--base", "main", *quick, "--json")  # active
    case(4, "run", "start", "--repo", str(repo), "--base", "nope", *quick, "--json")
    case(4, "run", "start", "--repo", str(repo), "--base", "b3", "--template", "nope",
         "--requirements", req, "--json")
    missing = case(4, "run", "start", "--repo", str(repo), "--base", "b3", "--template",
                   "quick@1", "--requirements", str(tmp_path / "missing.md"), "--json")
    assert json.loads(missing.stdout)["error"]["code"] == "file_not_found"
    # -- run status / list: showing a failed run is a success
    case(0, "run", "status", failed)
    case(0, "run", "status", failed, "--json")
    case(4, "run", "status", "nope", "--json")
    case(2, "run", "status")
    case(1, "run", "status", gated, "--json", env=unreachable)         # the database is away
    case(0, "run", "list")
    case(2, "run", "list", "--state", "bogus")
    # -- run drive: the run's outcome
    case(0, "run", "drive", detached, "--json")
    case(1, "run", "drive", failed, "--json")
    case(4, "run", "drive", "nope", "--json")
    # -- pause, resume, abort
    case(0, "run", "pause", gated, "--json")
    case(0, "run", "resume", gated, "--no-drive", "--json")
    case(0, "run", "resume", gated, "--json")                          # not paused: no-op
    case(3, "run", "pause", done, "--json")
    case(4, "run", "resume", "nope", "--json")
    case(2, "run", "pause", gated, "--no-drive")                       # not an option of pause
    case(0, "run", "abort", aborted, "--json")                         # ended as asked
    case(0, "run", "abort", aborted, "--json")                         # a repeat: no change
    case(3, "run", "abort", done, "--json")
    case(4, "run", "abort", "nope", "--json")
    # -- events and report
    case(0, "events", done)
    case(0, "events", done, "--json")
    case(4, "events", "nope", "--json")
    case(2, "events", done, "--after", "-1")
    case(0, "report", done)
    case(0, "report", done, "--json")
    case(0, "report", failed, "--path")
    case(3, "report", gated, "--json")                                 # not ended yet
    case(4, "report", "nope", "--json")
    case(2, "report", done, "--format", "pdf")
    # -- decisions: approve and request-changes report the run they drive
    case(0, "approve", parked, "--no-drive", "--json")
    case(1, "approve", doomed, "--json")                               # drives into exit-1
    case(0, "decide", gated, "approve", "--json")                      # on to final_review
    case(2, "decide", gated, "maybe", "--json")
    case(4, "decide", "nope", "approve", "--json")
    case(3, "decide", done, "approve", "--json")                       # no pending approval
    case(2, "request-changes", gated, "--json")                        # says nothing to change
    case(0, "request-changes", gated, "-m", "cover the empty title", "--json")
    case(4, "request-changes", "nope", "-m", "x", "--json")
    case(3, "request-changes", done, "-m", "x", "--json")
    case(2, "approve", gated, "--rewind")                              # not an option of approve
    case(4, "approve", "nope", "--json")
    case(3, "approve", done, "--json")
    case(0, "reject", gated, "-m", "not this", "--json")               # failed as asked
    case(3, "reject", gated, "--json")                                 # nothing pending now
    case(4, "reject", "nope", "--json")
    case(2, "reject", gated, "--section", "x=reject")                  # not an option of reject
    case(0, "approvals", "list")
    case(0, "approvals", "list", "--pending", "--json")
    case(4, "approvals", "list", "--run", "nope", "--json")
    case(0, "approvals", "show", "1")
    case(4, "approvals", "show", "99999", "--json")
    case(2, "approvals", "show", "one")
    # -- definitions
    for kind in ("templates", "personas"):
        case(0, kind, "list")
        case(0, kind, "list", "--json")
        case(2, kind, "list", "--bogus")
        case(0, kind, "show", "development@1" if kind == "templates" else "scripted-planner")
        case(4, kind, "show", "nope", "--json")
        case(2, kind, "show", "Not A Ref", "--json")
        case(0, kind, "validate")
        case(2, kind, "validate", str(defs / "broken.yaml"), "--json")
    case(0, "schemas", "list")
    case(2, "schemas", "list", "--bogus")
    case(0, "schemas", "show", "dev/spec@1")
    case(4, "schemas", "show", "acme/none@1", "--json")
    case(0, "schemas", "validate")
    case(2, "schemas", "validate", str(defs / "broken.json"), "--json")
    case(0, "schemas", "check", "--schema", "dev/review@1", str(sample / "review.json"))
    case(2, "schemas", "check", "--schema", "dev/review@1", str(defs / "doc.json"))
    case(4, "schemas", "check", "--schema", "dev/review@1", str(defs / "none.json"), "--json")
    case(4, "schemas", "check", "--schema", "acme/none@1", str(defs / "doc.json"), "--json")
    # -- triggers (from DEVFLOW_TRIGGERS_DIR)
    triggers = tmp_path / "triggers"
    triggers.mkdir()
    (triggers / "hourly.yaml").write_text(
        f"name: hourly\ntemplate: quick@1\nrepo: {repo}\nbase: b7\nrequirements: tidy up\n"
        "bindings: {implementer: scripted-implementer, reviewer: scripted-reviewer}\n"
        "schedule: {cron: '0 * * * *'}\n", encoding="utf-8")
    with_triggers = {"DEVFLOW_TRIGGERS_DIR": str(triggers)}
    case(0, "triggers", "list", env=with_triggers)
    case(2, "triggers", "list", "--bogus", env=with_triggers)
    case(0, "triggers", "show", "hourly", "--json", env=with_triggers)
    case(4, "triggers", "show", "nope", "--json", env=with_triggers)
    case(0, "triggers", "pause", "hourly", "--json", env=with_triggers)
    case(4, "triggers", "pause", "nope", "--json", env=with_triggers)
    case(0, "triggers", "resume", "hourly", "--json", env=with_triggers)
    case(4, "triggers", "resume", "nope", "--json", env=with_triggers)
    case(0, "triggers", "fire", "hourly", "--json", env=with_triggers)
    case(3, "triggers", "fire", "hourly", "--json", env=with_triggers)   # its run is active
    case(4, "triggers", "fire", "nope", "--json", env=with_triggers)
    case(0, "triggers", "validate", env=with_triggers)
    case(2, "triggers", "validate", str(defs / "broken.yaml"), "--json", env=with_triggers)
    # -- operators
    case(0, "db", "current")
    case(0, "db", "upgrade", "--json")
    case(1, "db", "upgrade", "--json", env=unreachable)
    case(1, "db", "current", "--json", env=unreachable)
    case(2, "db", "downgrade")
    case(0, "backends", "list")
    case(0, "backends", "list", "--json")
    case(2, "backends", "list", "--bogus")
    case(0, "backends", "show", "codex")
    case(0, "backends", "show", "command", "--json")
    case(2, "backends", "show", "nope", "--json")
    case(0, "sweep", "--dry-run")
    case(0, "sweep", "--json")
    case(2, "sweep", "--policy", "maybe")
    case(0, "worker", "--once", "--poll", "0.1", "--json")
    case(2, "worker", "--concurrency", "0", "--json")
    case(0, "workers", "list", "--all")
    case(2, "workers", "list", "--bogus")
    case(0, "serve", "--check", "--port", "0", "--json")
    case(2, "serve", "--workers", "-1", "--json")
    case(2, "serve", "--host", "0.0.0.0", "--port", "0", "--json")    # no token is live
    made = json.loads(case(0, "tokens", "create", "--actor", "alice", "--role", "viewer",
                           "--json").stdout)
    case(2, "tokens", "create", "--actor", "alice", "--role", "root", "--json")
    case(0, "tokens", "list", "--all", "--json")
    case(2, "tokens", "list", "--bogus")
    case(0, "tokens", "revoke", made["id"], "--json")
    case(4, "tokens", "revoke", "nosuchtokn", "--json")
    case(0, "daemon", "status", "--json")
    case(2, "daemon", "status", "--bogus")
    case(0, "daemon", "start", "--idle", "10m", "--json")
    case(2, "daemon", "start", "--idle", "soon", "--json")
    case(0, "daemon", "stop", "--json")
    case(2, "daemon", "stop", "--bogus")
    case(0, "worktree", "prune", "--dry-run")
    case(0, "worktree", "prune", "--json")
    case(2, "worktree", "prune", "--older-than", "soon", "--json")
    case(0, "demo", "--dir", str(tmp_path / "demo"), "--json")
    case(0, "demo", "--dir", str(tmp_path / "demo"), "--no-auto-approve", "--json")  # reused
    case(2, "demo", "--dir", str(defs / "a-file"))
    # -- the root
    case(0, "--version")
    case(0, "--help")
    case(2, "bogus")

    covered: dict[str, set[int]] = {}
    for result, want in ran:
        covered.setdefault(_command_of(result.args), set()).add(want)
    missing = {c: sorted(covered.get(c, set())) for c in leaf_commands()
               if 0 not in covered.get(c, set()) or len(covered.get(c, set())) < 2}
    assert not missing, f"commands without a success and an error case: {missing}"


# -- help -------------------------------------------------------------------------------------
#: options a decision command must not offer, and options it must
FOREIGN = {"approve": {"--rewind"}, "reject": {"--rewind", "--section", "--no-drive",
                                               "--sections-file"},
           "run pause": {"--no-drive"}, "run abort": {"--no-drive"}}
OWN = {"request-changes": {"--rewind", "--comment", "--section"},
       "decide": {"--rewind", "--no-drive", "--section"}, "run resume": {"--no-drive"}}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_every_command_has_its_own_help_with_an_example(forked: ForkedCli) -> None:
    root = forked.run("--help")
    assert root.returncode == 0
    assert "Exit codes" in root.stdout and "141" in root.stdout and "130" in root.stdout
    for command in leaf_commands():
        shown = forked.run(*command.split(), "--help")
        assert shown.returncode == 0, (command, shown.stderr)
        text = shown.stdout
        _, _, rest = text.partition("\n\n")
        description = rest.split("\n\n", 1)[0].strip()
        assert description and not description.startswith("Options:"), (command, text)
        assert "Example" in text, (command, text)
        examples = [line for line in text.split("Example", 1)[1].splitlines()
                    if "devflow " in line]
        assert any(f" {command} " in f" {line} " for line in examples), (command, text)
        options = {word.rstrip(",") for line in text.splitlines()
                   for word in line.split() if word.startswith("--")}
        assert not options & FOREIGN.get(command, set()), (command, options)
        assert OWN.get(command, set()) <= options, (command, options)
        assert "--json" in options, f"{command} has no --json"


def test_the_readme_names_every_command() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    unnamed = [c for c in leaf_commands() if f"devflow {c.split()[0]}" not in readme]
    assert not unnamed, unnamed
