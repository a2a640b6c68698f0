"""The ``devflow`` command: parse, call the app, render text or ``--json``, exit with a code.

Exit codes: 0 ok (including "stopped at a gate"), 1 run failed or aborted, 2 invalid
input, 3 conflict, 4 not found. With ``--json`` an error prints
``{"error": {"code", "message", "hint"}}``. Heavy modules are imported inside the
commands so that ``devflow --help`` starts fast.
"""

from __future__ import annotations

import atexit
import gc
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from devflow.app import App


class State:
    """What the root options set; builds the app on first use."""

    def __init__(self, overrides: dict[str, Any], log_format: str | None, verbose: int) -> None:
        self.overrides = overrides
        self.log_format = log_format
        self.verbose = verbose
        self._app: App | None = None

    @property
    def app(self) -> App:
        if self._app is None:
            from devflow.app import App
            from devflow.settings import Settings
            settings = Settings.load(**self.overrides)
            if self.log_format:
                settings = settings.replace(log_format=self.log_format)
            level = {0: "warning", 1: "info"}.get(self.verbose, "debug")
            self._app = App(settings, log_level=level)
        return self._app

    def close(self) -> None:
        if self._app is not None:
            self._app.close()


_PATHS = click.Path(path_type=Path, file_okay=False)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--templates-dir", multiple=True, type=_PATHS, help="Extra template directory.")
@click.option("--personas-dir", multiple=True, type=_PATHS, help="Extra persona directory.")
@click.option("--schemas-dir", multiple=True, type=_PATHS, help="Extra schema directory.")
@click.option("--log-format", type=click.Choice(["auto", "console", "json"]), default=None,
              help="Log format on stderr (default: console on a terminal, else JSON).")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="devflow")
@click.pass_context
def cli(ctx: click.Context, templates_dir: tuple[Path, ...], personas_dir: tuple[Path, ...],
        schemas_dir: tuple[Path, ...], log_format: str | None, verbose: int) -> None:
    """devflow runs coding agents through reviewed, reproducible workflows.

    A run binds a template's roles to personas, works in its own git worktree,
    makes every phase leave a schema-validated artifact, waits at gates for a
    person's decision, and ends with a report.

    Start with `devflow demo`, then `devflow run start --help`.
    """
    overrides: dict[str, Any] = {
        "templates_dirs": [str(p) for p in templates_dir] or None,
        "personas_dirs": [str(p) for p in personas_dir] or None,
        "schemas_dirs": [str(p) for p in schemas_dir] or None,
    }
    state = State(overrides, log_format, verbose)
    ctx.obj = state
    ctx.call_on_close(state.close)


def _register() -> None:
    from devflow.cli import admin, decisions, defs, runs
    for module in (runs, decisions, defs, admin):
        module.register(cli)


def main(argv: list[str] | None = None) -> None:
    # At exit, after the atexit handlers and the threads' shutdown, the interpreter
    # collects garbage over every object the imports made (SQLAlchemy's are many): a
    # tenth of a second of a command that took three. Frozen, they are left to the OS;
    # nothing of devflow's waits on that collection (files and connections are closed
    # where they are used, the app when the command's context closes).
    atexit.register(gc.freeze)
    from devflow.cli import output
    args = sys.argv[1:] if argv is None else argv
    _register()
    want_json = "--json" in args
    try:
        code = cli.main(args=args, prog_name="devflow", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        output.usage_error(exc, want_json)
        sys.exit(2)
    except BaseException as exc:
        from devflow.errors import DevflowError
        if isinstance(exc, DevflowError):
            output.error(exc, want_json)
            sys.exit(exc.exit_code)
        if isinstance(exc, KeyboardInterrupt):
            click.echo("interrupted", err=True)
            sys.exit(130)
        if isinstance(exc, SystemExit):
            raise
        output.crash(exc, want_json)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
