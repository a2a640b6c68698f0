"""``devflow triggers``: schedule triggers listed, shown, paused, resumed, fired, validated.

Thin: each command calls one ``App`` method and renders its answer (``--json``: the
same answer, whole).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from devflow.cli import checks, output
from devflow.cli.main import State

if TYPE_CHECKING:
    from devflow.ticks import TriggerView


@click.group("triggers")
def triggers() -> None:
    """Triggers: schedules and webhooks that start runs (files in $DEVFLOW_HOME/triggers,
    --triggers-dir)."""


def _when(value: Any) -> str:
    return value.isoformat(timespec="seconds") if value is not None else "-"


def _schedule(view: TriggerView) -> str:
    s = view.trigger.schedule
    if s is None:
        w = view.trigger.webhook
        source = w.source if w else "?"
        return f"webhook {source}"
    return f"{s.cron} {s.timezone}"


@triggers.command("list", epilog="""\b
Example:
  devflow triggers list --json | jq -r '.triggers[] | select(.paused) | .name'""")
@click.option("--json", "as_json", is_flag=True, help="The triggers (and what was skipped).")
@click.pass_obj
def triggers_list(state: State, as_json: bool) -> None:
    """List the triggers: schedule, paused or not, last and next tick."""
    views = state.app.triggers()
    skipped = checks.skipped(state, "trigger")
    if as_json:
        output.emit_json({"triggers": [v.to_json() for v in views], "skipped": skipped})
        return
    output.table(["trigger", "schedule", "state", "last tick", "next tick", "template"],
                 [[v.trigger.name, _schedule(v), "paused" if v.paused else "active",
                   f"{_when(v.last.scheduled_at)} {v.last.state}" if v.last else "-",
                   _when(v.next_at), v.trigger.template] for v in views])
    checks.say_skipped(skipped, "trigger")


@triggers.command("show", epilog="""\b
Example:
  devflow triggers show nightly --json | jq .runs""")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="State, ticks, runs, missed, events.")
@click.pass_obj
def triggers_show(state: State, name: str, as_json: bool) -> None:
    """Show a trigger: its last and next tick, the runs it started, the ticks it missed."""
    view = state.app.trigger(name)
    body = view.to_json(detail=True)
    if as_json:
        output.emit_json(body)
        return
    t = view.trigger
    output.kv([("trigger", t.name), ("source", str(t.source)), ("schedule", _schedule(view)),
               ("policies", (f"catchup={t.schedule.catchup} overlap={t.schedule.overlap} "
                             f"jitter={t.schedule.jitter:g}s grace={t.schedule.grace:g}s")
                if t.schedule else "-"),
               ("starts", f"{t.template} on {t.repo} ({t.base})"),
               ("state", f"paused by {view.state.paused_by}" if view.paused and view.state
                else "active"),
               ("last tick", f"{_when(view.last.scheduled_at)} {view.last.state}"
                if view.last else "-"),
               ("next tick", _when(view.next_at)),
               ("ticks", output.pairs_text(body["ticks"]) or "none yet")])
    if t.webhook is not None:
        output.kv([("hook", f"POST /api/v1/hooks/{t.name} (secret in ${t.webhook.secret_env})"),
                   ("deliveries", output.pairs_text(body["deliveries_by_state"])
                    or "none yet")])
    if view.deliveries:
        output.table(["received at", "delivery", "event", "subject", "sender", "state", "run",
                      "reason"],
                     [[_when(d.created_at), d.delivery_id, d.event, d.subject, d.sender or "-",
                       d.state, d.run_id or "-", d.reason or ""] for d in view.deliveries],
                     title="deliveries, newest first", wrap=("reason",))
    if view.recent:
        output.table(["scheduled at", "kind", "state", "run", "reason"],
                     [[_when(k.scheduled_at), k.kind, k.state, k.run_id or "-", k.reason or ""]
                      for k in view.recent], title="ticks, newest first", wrap=("reason",))


@triggers.command("pause", epilog="""\b
Example:
  devflow triggers pause nightly --reason "release freeze\"""")
@click.argument("name")
@click.option("--reason", help="Why, for `triggers show`.")
@click.option("--json", "as_json", is_flag=True, help="Whether it changed.")
@click.pass_obj
def triggers_pause(state: State, name: str, reason: str | None, as_json: bool) -> None:
    """Pause a trigger: none of its ticks start until it is resumed."""
    changed = state.app.pause_trigger(name, state.app.settings.actor, reason)
    _said(name, "paused", changed, as_json)


@triggers.command("resume", epilog="""\b
Example:
  devflow triggers resume nightly""")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Whether it changed.")
@click.pass_obj
def triggers_resume(state: State, name: str, as_json: bool) -> None:
    """Resume a trigger: its ticks count from now (those of the pause are not caught up)."""
    changed = state.app.resume_trigger(name, state.app.settings.actor)
    _said(name, "active", changed, as_json)


def _said(name: str, now: str, changed: bool, as_json: bool) -> None:
    if as_json:
        output.emit_json({"trigger": name, "state": now, "changed": changed})
    else:
        click.echo(f"trigger {name}: {now}" + ("" if changed else f" (it was {now} already)"))


@triggers.command("fire", epilog="""\b
Example:
  devflow triggers fire nightly --json | jq -r .run_id

Exit 0 when the run started; otherwise the start's own error and exit code: 3 when the
state of things refuses it for now (another run active on the branch: the tick is tried
again while its grace lasts), 2 or 4 when the trigger no longer starts as defined.""")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="The tick and its run.")
@click.pass_obj
def triggers_fire(state: State, name: str, as_json: bool) -> None:
    """Start one run of the trigger now (detached: workers drive it)."""
    outcome = state.app.fire_trigger(name, state.app.settings.actor)
    if as_json:
        output.emit_json(outcome.to_json())
    else:
        click.echo(f"trigger {name}: run {outcome.run_id} started (workers drive it; "
                   f"`{output.program()} run status {outcome.run_id}`)")


@triggers.command("validate", epilog=f"""\b
Examples:
  devflow triggers validate                    # every trigger devflow sees
  devflow triggers validate nightly.yaml --json

{checks.VALIDATE_EXIT}""")
@click.argument("files", nargs=-1, type=checks.FILES)
@click.option("--json", "as_json", is_flag=True, help="valid and invalid files as JSON.")
@click.pass_obj
def triggers_validate(state: State, files: tuple[Path, ...], as_json: bool) -> int:
    """Check trigger FILES (default: every trigger devflow sees): the format, the cron
    expression and time zone, the template and personas they name."""
    from devflow.errors import DevflowError
    app = state.app
    valid: list[dict[str, Any]] = []
    invalid: list[dict[str, Any]] = []
    if files:
        for path in files:
            try:
                checked = app.check_definition(path, "trigger")
                valid.append(_valid(path, checked))
            except DevflowError as exc:
                invalid.append({"file": str(path), "error": exc.to_json()})
    else:
        valid = [_valid(t.source, t) for t in app.catalog.triggers()]
        invalid = [{"file": str(b.path), "error": b.error.to_json()}
                   for b in app.catalog.broken_of("trigger")]
        invalid += [{"file": None, "error": e.to_json()} for e in app.catalog.conflicts("trigger")]
    return checks.verdicts(valid, invalid, as_json)


def _valid(path: Path | None, checked: Any) -> dict[str, Any]:
    return {"file": str(path), "ref": checked.ref, "hash": checked.hash}


def register(cli: click.Group) -> None:
    cli.add_command(triggers)
