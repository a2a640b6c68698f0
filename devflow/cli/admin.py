"""Commands of operators: db upgrade|current, backends list."""

from __future__ import annotations

from typing import Any

import click

from devflow.cli import output
from devflow.cli.main import State


@click.group("db")
def db() -> None:
    """The database: migrations."""


@db.command("upgrade", epilog="""\b
Example:
  export DEVFLOW_DATABASE_URL=postgresql+psycopg://devflow@db/devflow
  devflow db upgrade""")
@click.option("--json", "as_json", is_flag=True, help="The revisions before and after as JSON.")
@click.pass_obj
def db_upgrade(state: State, as_json: bool) -> None:
    """Bring the database schema up to date (needed once for PostgreSQL).

    The embedded SQLite database upgrades itself on first use.
    """
    before, after = state.app.db_upgrade()
    if as_json:
        output.emit_json({"before": before, "after": after})
    else:
        click.echo(f"database at revision {after}" + ("" if before == after
                                                      else f" (was {before or 'empty'})"))


@db.command("current", epilog="""\b
Example:
  devflow db current --json""")
@click.option("--json", "as_json", is_flag=True, help="URL (password hidden) and revisions.")
@click.pass_obj
def db_current(state: State, as_json: bool) -> None:
    """Show the database's URL and revision."""
    info = state.app.db_current()
    if as_json:
        output.emit_json(info)
    else:
        output.kv([("database", info["url"]), ("revision", info["revision"] or "none"),
                   ("head", info["head"])])


@click.group("backends")
def backends_group() -> None:
    """Agent backends."""


@backends_group.command("list", epilog="""\b
Example:
  devflow backends list --json | jq '.backends[] | select(.available) | .backend'""")
@click.option("--json", "as_json", is_flag=True, help="The backends as JSON.")
@click.pass_obj
def backends_list(state: State, as_json: bool) -> None:
    """Which backends are available here, with versions, and how their agents are sandboxed."""
    rows = state.app.backends()
    box = state.app.sandbox()
    if as_json:
        output.emit_json({"backends": rows, "sandbox": box})
        return
    output.table(["backend", "available", "version", "sandbox", "personas", "notes"],
                 [[r["backend"], "yes" if r["available"] else "no", r["version"] or "",
                   r["sandbox"] or "-", ", ".join(r["personas"]), r["reason"] or ""]
                  for r in rows],
                 wrap=("personas", "notes"))
    if box["available"]:
        click.echo(f"sandbox: {box['version'] or 'bubblewrap'} ({box['path']})")
    elif box["allow_unsandboxed"]:
        click.echo(f"WARNING: agents run UNSANDBOXED here: {box['reason']} "
                   f"(allow_unsandboxed is set)")
    else:
        click.echo(f"WARNING: no sandbox here: {box['reason']}; agents that need one are "
                   f"refused (sandbox_unavailable)")


@backends_group.command("show", epilog="""\b
Examples:
  devflow backends show claude-code
  devflow backends show codex --json | jq '.options.properties | keys'""")
@click.argument("backend")
@click.option("--json", "as_json", is_flag=True, help="The options' JSON Schema.")
@click.pass_obj
def backends_show(state: State, backend: str, as_json: bool) -> None:
    """The options a persona of BACKEND may give (a persona's file is checked against them)."""
    schema = state.app.backend_options(backend)
    if as_json:
        output.emit_json({"backend": backend, "options": schema})
        return
    required = set(schema.get("required", ()))
    output.table(["option", "type", "meaning"],
                 [[key + (" (required)" if key in required else ""), _kind(body),
                   body.get("description", "")]
                  for key, body in schema["properties"].items()],
                 wrap=("type", "meaning"))


def _kind(body: dict[str, Any]) -> str:
    """What an option's schema says its value is, in a few words."""
    if isinstance(body.get("enum"), list):
        return "one of " + ", ".join(str(v) for v in body["enum"])
    kind = body.get("type", "any")
    return " or ".join(kind) if isinstance(kind, list) else str(kind)


@click.command("sweep", epilog="""\b
Examples:
  devflow sweep --dry-run
  * * * * * cd /srv/devflow && .venv/bin/devflow sweep --json >> sweep.log   (cron)""")
@click.option("--policy", type=click.Choice(["resume", "fail"]), default="resume",
              show_default=True, help="What to do with runs whose driver died.")
@click.option("--max-recoveries", type=int, help="Fail a run recovered more often than this.")
@click.option("--dry-run", is_flag=True, help="Say what would be done; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="What was done, as JSON.")
@click.pass_obj
def sweep(state: State, policy: str, max_recoveries: int | None, dry_run: bool,
          as_json: bool) -> None:
    """Recover what crashes left, apply gate deadlines and escalations, write missing reports.

    Safe beside workers and beside another sweep; meant for cron, every minute.
    """
    result = state.app.sweep(policy=policy, max_recoveries=max_recoveries, dry_run=dry_run)
    if as_json:
        output.emit_json(result.to_json())
        return
    if not result.actions:
        click.echo("sweep: nothing to do")
    for action in result.actions:
        detail = output.pairs_text({k: v for k, v in action.detail.items() if k != "agents"})
        click.echo(f"{action.run_id or '-'}  {action.kind}  {detail}".rstrip())
        for agent in action.detail.get("agents") or ():
            click.echo(f"    agent pid {agent.get('pid')} ({agent.get('phase')}, attempt "
                       f"{agent.get('attempt')}): {agent.get('agent')}")


@click.command("worker", epilog="""\b
Examples:
  devflow worker --concurrency 4 --name ci-1
  devflow worker --once            # drive what is runnable now, then exit""")
@click.option("--concurrency", "-c", type=int, default=4, show_default=True,
              help="Runs driven at once.")
@click.option("--poll", type=float, default=1.0, show_default=True,
              help="Seconds between looks for runnable runs.")
@click.option("--once", is_flag=True, help="Drive what is runnable, then exit.")
@click.option("--name", default="worker", show_default=True, help="A name for `workers list`.")
@click.option("--grace", type=float, default=30.0, show_default=True,
              help="Seconds a stopping worker lets its drives finish their step.")
@click.option("--json", "as_json", is_flag=True, help="What it drove, as JSON, when it stops.")
@click.pass_obj
def worker(state: State, concurrency: int, poll: float, once: bool, name: str, grace: float,
           as_json: bool) -> None:
    """Claim runnable runs and drive them until SIGTERM or SIGINT.

    Told to stop, it claims nothing more and lets each drive end its step; after
    --grace seconds the attempts still going are recorded as interrupted.
    """
    from devflow.errors import Code, DevflowError
    from devflow.requests import WorkerOptions
    if concurrency < 1 or poll <= 0 or grace < 0:
        raise DevflowError(Code.INVALID_INPUT, "--concurrency must be at least 1, --poll "
                           "positive and --grace not negative", hint="e.g. --concurrency 4")
    stats = state.app.work(WorkerOptions(name=name, concurrency=concurrency, poll=poll,
                                         once=once, grace=grace))
    if as_json:
        output.emit_json({"worker": stats.worker_id, "driven": stats.driven,
                          "skipped": stats.skipped})
    else:
        click.echo(f"worker {stats.worker_id} stopped; drove {len(stats.driven)} run(s)", err=True)


@click.group("workers")
def workers() -> None:
    """Workers that drive runs."""


@workers.command("list", epilog="""\b
Example:
  devflow workers list --all""")
@click.option("--all", "include_stopped", is_flag=True, help="Include stopped workers.")
@click.option("--json", "as_json", is_flag=True, help="The workers as JSON.")
@click.pass_obj
def workers_list(state: State, include_stopped: bool, as_json: bool) -> None:
    """List registered workers with their host, pid and last heartbeat."""
    items = state.app.workers(include_stopped)
    if as_json:
        output.emit_json({"workers": [w.to_json() for w in items]})
        return
    output.table(["worker", "name", "host", "pid", "concurrency", "heartbeat", "stopped"],
                 [[w.id, w.name, w.host, w.pid, w.concurrency, f"{w.heartbeat_at:%H:%M:%S}",
                   f"{w.stopped_at:%H:%M:%S}" if w.stopped_at else ""] for w in items])


@click.group("worktree")
def worktree_group() -> None:
    """Worktrees of runs."""


@worktree_group.command("prune", epilog="""\b
Examples:
  devflow worktree prune --older-than 7d --dry-run
  devflow worktree prune --delete-branches
  devflow worktree prune --force RUN_ID

A worktree is kept when it holds uncommitted changes or untracked files, or when its
run failed or was aborted before its last attempt was committed (the worktree may hold
the agent's only copy of its work); --force RUN_ID removes it anyway. A worktree
pruned once is recorded as pruned and not listed again. --delete-branches keeps a
run's salvage refs (what a recovery reset dropped) unless the run is named with
--force too.""")
@click.option("--older-than", help="Only runs that ended longer ago than this (e.g. 7d).")
@click.option("--delete-branches", is_flag=True, help="Delete the run branches too.")
@click.option("--force", "force", multiple=True, metavar="RUN_ID",
              help="Remove this run's worktree even if it holds work (repeatable).")
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
@click.option("--json", "as_json", is_flag=True, help="What was removed and kept, as JSON.")
@click.pass_obj
def worktree_prune(state: State, older_than: str | None, delete_branches: bool,
                   force: tuple[str, ...], dry_run: bool, as_json: bool) -> None:
    """Remove the worktrees of ended runs, keeping any that hold work; branches stay
    unless asked."""
    from devflow.durations import parse_duration
    seconds = parse_duration(older_than, field="--older-than") if older_than else None
    items = [item.to_json() for item in state.app.prune(
        older_than=seconds, delete_branches=delete_branches, dry_run=dry_run, force=force)]
    acted = [i for i in items if not i.get("kept") and (i["worktree"] or i["branch"]
                                                         or i["salvage"])]
    kept = [i for i in items if i.get("kept") or i.get("salvage_kept")]
    failed = [i for i in items if i.get("error")]
    freed = sum(i["bytes"] for i in acted)
    if as_json:
        output.emit_json({"dry_run": dry_run, "removed": acted, "kept": kept, "failed": failed,
                          "bytes_freed": freed})
        return
    remove, delete = ("would remove", "would delete") if dry_run else ("removed", "deleted")
    for item in acted:
        done = ([f"{remove} {item['worktree']} ({item['bytes'] / 1e6:.1f} MB)"]
                if item["worktree"] else [])
        done += [f"{delete} branch {item['branch']}"] if item["branch"] else []
        done += [f"{delete} {ref}" for ref in item["salvage"]]
        click.echo(f"{item['run_id']}  {'; '.join(done)}")
    for item in failed:
        click.echo(f"{item['run_id']}  not removed: {item['error']}")
    for item in kept:
        if item.get("kept"):
            click.echo(f"{item['run_id']}  kept {item['worktree']}: {'; '.join(item['kept'])}")
        for ref in item.get("salvage_kept", []):
            click.echo(f"{item['run_id']}  kept {ref}")
        click.echo(f"    to remove it anyway: {output.commands(item['force'])}")
    worktrees = sum(1 for i in acted if i["worktree"])
    branches = sum(1 for i in acted if i["branch"])
    summary = f"{remove} {_count(worktrees, 'worktree')}"
    if delete_branches:
        summary += f", {delete} {_count(branches, 'branch', 'branches')}"
    summary += f", kept {len(kept)}"
    click.echo(f"{summary}; {'would free' if dry_run else 'freed'} {freed / 1e6:.1f} MB")


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def register(cli: click.Group) -> None:
    for command in (db, backends_group, sweep, worker, workers, worktree_group):
        cli.add_command(command)
