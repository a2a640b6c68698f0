"""``devflow serve`` (the HTTP API, with embedded workers) and ``devflow tokens`` (its tokens).

The server's modules (devflow.api, FastAPI, uvicorn) are imported by ``serve`` alone:
no other command loads them.
"""

from __future__ import annotations

import click

from devflow.cli import output
from devflow.cli.main import State


@click.command("serve", epilog="""\b
Examples:
  devflow serve                                  # http://127.0.0.1:8765/api/v1
  devflow serve --workers 2
  devflow serve --host 0.0.0.0 --allow-host devflow.example.org   # needs a live token
  devflow serve --check --json                   # the bind rule, database and port only

Every route needs a token (`devflow tokens create`); the API is described at
/api/v1/openapi.json. SIGTERM or Ctrl-C stops it gracefully: no new requests, event
streams closed, the workers' drives left at their next step.""")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; other than loopback only while an API token is live.")
@click.option("--port", type=int, default=8765, show_default=True, help="TCP port (0: any free).")
@click.option("--workers", type=int, default=1, show_default=True,
              help="Workers driving runs inside the server (0: leave runs to `devflow worker`).")
@click.option("--allow-host", "allow_hosts", multiple=True, metavar="NAME",
              help="A Host name clients may use besides loopback's (repeatable).")
@click.option("--poll", type=float, default=1.0, show_default=True,
              help="Seconds between the workers' looks for runnable runs.")
@click.option("--grace", type=float, default=30.0, show_default=True,
              help="Seconds a stopping server lets its drives finish their step.")
@click.option("--heartbeat", type=float, default=15.0, show_default=True,
              help="Seconds between the keep-alive comments of event streams.")
@click.option("--check", is_flag=True, help="Check the bind rule, the database and the port, "
                                            "then exit without serving.")
@click.option("--json", "as_json", is_flag=True, help="With --check: what would be served, "
                                                      "as JSON (and errors as JSON).")
@click.pass_obj
def serve(state: State, host: str, port: int, workers: int, allow_hosts: tuple[str, ...],
          poll: float, grace: float, heartbeat: float, check: bool, as_json: bool) -> None:
    """Serve the HTTP API (approvals, runs, live events) and drive runs with N workers."""
    from devflow.api import server
    from devflow.errors import Code, DevflowError
    if workers < 0 or poll <= 0 or grace < 0 or heartbeat <= 0 or not 0 <= port <= 65535:
        raise DevflowError(Code.INVALID_INPUT, "--workers must not be negative, --port a TCP "
                           "port, --poll and --heartbeat positive, --grace not negative",
                           hint="e.g. --workers 2 --port 8765")
    options = server.Options(host=host, port=port, workers=workers, allow_hosts=allow_hosts,
                             poll=poll, grace=grace, heartbeat=heartbeat)
    if not check:
        server.serve(state.app, options)
        return
    found = server.check(state.app, options)
    if as_json:
        output.emit_json(found)
    else:
        click.echo(f"would serve {found['url']} with {workers} worker(s); "
                   f"{found['live_tokens']} live token(s); Host names: "
                   f"{', '.join(found['hosts'])}")


@click.group("tokens")
def tokens_group() -> None:
    """HTTP API tokens: each names an actor and a role (viewer, approver, operator, admin)."""


@tokens_group.command("create", epilog="""\b
Examples:
  devflow tokens create --actor alice --role approver --expires 90d
  devflow tokens create --actor ci --role operator --json | jq -r .token

The token is printed this once; devflow keeps only its hash. Roles, each with what
the ones before it may do: viewer (read), approver (decide gates), operator (start,
pause, resume, abort runs), admin (list and revoke tokens). Who may decide a gate
that names approvers is still checked against the token's actor.""")
@click.option("--actor", required=True, help="Whom the token's actions are attributed to.")
@click.option("--role", required=True,
              type=click.Choice(["viewer", "approver", "operator", "admin"]))
@click.option("--expires", metavar="DURATION", help="Lifetime, e.g. 90d or 12h (default: none).")
@click.option("--json", "as_json", is_flag=True, help="The token and its record as JSON.")
@click.pass_obj
def tokens_create(state: State, actor: str, role: str, expires: str | None,
                  as_json: bool) -> None:
    """Create an API token for ACTOR with ROLE; print it once."""
    from devflow import access, durations
    seconds = durations.parse_duration(expires, field="--expires") if expires else None
    text, kept = state.app.token_create(actor, role, access.os_account().name, seconds)
    if as_json:
        output.emit_json({"token": text, **kept.to_json()})
        return
    click.echo(text)
    click.echo(f"token {kept.prefix} for {kept.actor} ({kept.role})"
               + (f", expires {kept.expires_at:%Y-%m-%d %H:%M} UTC" if kept.expires_at else "")
               + ": shown this once, keep it secret", err=True)


@tokens_group.command("list", epilog="""\b
Example:
  devflow tokens list --all --json""")
@click.option("--all", "include_dead", is_flag=True, help="Include revoked and expired tokens.")
@click.option("--json", "as_json", is_flag=True, help="The tokens as JSON (never the secrets).")
@click.pass_obj
def tokens_list(state: State, include_dead: bool, as_json: bool) -> None:
    """List API tokens: id, actor, role, expiry, last use (never the tokens themselves)."""
    items = state.app.tokens(include_dead=include_dead)
    if as_json:
        output.emit_json({"tokens": [t.to_json() for t in items]})
        return

    def when(value: object) -> str:
        return f"{value:%Y-%m-%d %H:%M}" if value else ""
    output.table(["id", "actor", "role", "created", "expires", "last used", "revoked"],
                 [[t.prefix, t.actor, t.role, when(t.created_at), when(t.expires_at),
                   when(t.last_used_at), when(t.revoked_at)] for t in items])


@tokens_group.command("revoke", epilog="""\b
Example:
  devflow tokens revoke k3mzq7abcd""")
@click.argument("token_id")
@click.option("--json", "as_json", is_flag=True, help="The revoked token as JSON.")
@click.pass_obj
def tokens_revoke(state: State, token_id: str, as_json: bool) -> None:
    """Revoke an API token by its id; its next request is refused (unauthenticated)."""
    kept, changed = state.app.token_revoke(token_id)
    if as_json:
        output.emit_json({**kept.to_json(), "changed": changed})
        return
    click.echo(f"token {kept.prefix} ({kept.actor}) "
               + ("revoked" if changed else "was revoked already"))


def register(cli: click.Group) -> None:
    cli.add_command(serve)
    cli.add_command(tokens_group)
