"""devflow daemon start|status|stop: the opt-in resident process that makes commands start
fast (``devflow.daemon``)."""

from __future__ import annotations

import os
from typing import Any

import click

from devflow.cli import output

_HOME_NOTE = ("The daemon serves the home of the environment it is started from "
              "($DEVFLOW_HOME, else ~/.devflow) and only commands of that home.")


def _home() -> str:
    from devflow.daemon import wire
    return wire.home_for(os.environ, os.getcwd())


@click.group("daemon")
def daemon() -> None:
    """A resident process that makes devflow's commands start fast (opt-in).

    Started, it imports devflow once; then the `devflow` command hands each command to
    it, and it runs it in a forked child with the command's arguments, environment,
    directory and terminal: the same command, without the start-up (about 0.45 s a
    command here). It stops after its idle timeout, when devflow's code changes, or
    with `devflow daemon stop`. DEVFLOW_DAEMON=off makes a command run in process.
    """


@daemon.command("start", epilog=f"""\b
{_HOME_NOTE}

\b
Example:
  devflow daemon start --idle 2h""")
@click.option("--idle", default="30m", show_default=True,
              help="Stop after this long without a command (e.g. 90s, 30m, 2h).")
@click.option("--json", "as_json", is_flag=True, help="Its status as JSON.")
def daemon_start(idle: str, as_json: bool) -> None:
    """Start the daemon of this home (nothing happens when one runs)."""
    from devflow.daemon import control
    from devflow.durations import parse_duration
    seconds = parse_duration(idle, field="idle")
    if seconds <= 0:
        from devflow.errors import Code, DevflowError
        raise DevflowError(Code.BAD_DURATION, "--idle must be longer than nothing",
                           hint="e.g. --idle 30m")
    started, status = control.start(_home(), seconds)
    if as_json:
        output.emit_json({"started": started, "running": True, "daemon": status})
        return
    word = "started" if started else "already running"
    click.echo(f"daemon {word}: pid {status['pid']}, idle timeout {_idle(status)}")


@daemon.command("status", epilog="""\b
Example:
  devflow daemon status --json""")
@click.option("--json", "as_json", is_flag=True, help="Its status as JSON.")
def daemon_status(as_json: bool) -> None:
    """Whether the daemon of this home runs: pid, socket, since when, commands served."""
    from devflow.daemon import control
    home = _home()
    status = control.ask(home, "status")
    if as_json:
        output.emit_json({"running": status is not None, "home": home, "daemon": status})
        return
    if status is None:
        click.echo(f"no daemon running for {home}")
        return
    output.kv([("pid", status["pid"]), ("home", status["home"]), ("socket", status["socket"]),
               ("started", status["started"]), ("idle timeout", _idle(status)),
               ("commands served", status["served"]), ("refused", status["refused"]),
               ("last refused", status["last_refusal"] or "-"),
               ("running now", status["running"])])


@daemon.command("stop", epilog="""\b
Example:
  devflow daemon stop""")
@click.option("--json", "as_json", is_flag=True, help="Its last status as JSON.")
def daemon_stop(as_json: bool) -> None:
    """Stop the daemon of this home; commands under way finish first."""
    from devflow.daemon import control
    home = _home()
    status = control.stop(home)
    if as_json:
        output.emit_json({"stopped": status is not None, "home": home, "daemon": status})
        return
    if status is None:
        click.echo(f"no daemon was running for {home}")
        return
    left = f"; {status['running']} commands under way finish first" if status["running"] \
        else ""
    click.echo(f"daemon stopped: pid {status['pid']}, {status['served']} commands served{left}")


def _idle(status: dict[str, Any]) -> str:
    seconds = float(status["idle_timeout"])
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


def register(cli: click.Group) -> None:
    cli.add_command(daemon)
