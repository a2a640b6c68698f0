"""The ``devflow`` command: parse, call the app, render text or ``--json``, exit with a code.

The exit code says how the command went (``EXIT_CODES`` below, printed by ``--help``).
With ``--json`` an error prints ``{"error": {"code", "message", "hint"}}``. Heavy
modules are imported inside the commands so that ``devflow --help`` starts fast.
"""

from __future__ import annotations

import atexit
import gc
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

if TYPE_CHECKING:
    from devflow.app import App

EXIT_CODES = """\
Exit codes, the same for every command:

\b
  0    done as asked: a run that stopped at a gate or was paused included
  1    it failed; a command that drives a run (run start, run drive, run resume,
       approve, request-changes, decide approve|request-changes, demo) also
       exits 1 when the run is failed or aborted at its end, or paused because a
       fault of the machine blocks it (a full disk, a git lock held)
  2    invalid input: nothing was changed
  3    conflict: the state of things forbids it now (nothing was changed)
  4    not found: a run, approval, template, persona, schema, file or branch
  130  interrupted (Ctrl-C), 143 stopped by SIGTERM: a run being driven is left
       runnable, not aborted
  141  the reader of the output went away (a closed pipe)

Commands that show things (run status, report, events, ...) exit 0 whatever state
the run is in, and reject, decide abort and run abort exit 0 once the run ended as
asked: the run's state is in their output (`--json` for scripts).
"""


#: the garbage collector's thresholds for a devflow process (``main``)
GC_THRESHOLDS = (10_000, 20, 20)


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


class _Root(click.Group):
    """The root group: a closed pipe under any command becomes ``PipeClosed`` here, before
    click's own handling (which would exit 1)."""

    def invoke(self, ctx: click.Context) -> Any:
        from devflow.cli import output
        try:
            return super().invoke(ctx)
        except BrokenPipeError as exc:
            raise output.PipeClosed() from exc


_PATHS = click.Path(path_type=Path, file_okay=False)
#: ids, counts and sequence numbers: what the tables' INTEGER columns hold on both
#: databases (a larger number was the driver's overflow error: internal_error on SQLite,
#: database_error on PostgreSQL)
NUMBER = click.IntRange(0, 2**31 - 1)


@click.group(cls=_Root, epilog=EXIT_CODES,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--templates-dir", multiple=True, type=_PATHS, help="Extra template directory.")
@click.option("--personas-dir", multiple=True, type=_PATHS, help="Extra persona directory.")
@click.option("--schemas-dir", multiple=True, type=_PATHS, help="Extra schema directory.")
@click.option("--triggers-dir", multiple=True, type=_PATHS,
              help="Trigger directory (besides $DEVFLOW_HOME/triggers).")
@click.option("--log-format", type=click.Choice(["auto", "console", "json"]), default=None,
              help="Logs and progress on stderr: console text or JSON lines (default: console "
                   "on a terminal, else JSON).")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="devflow")
@click.pass_context
def cli(ctx: click.Context, templates_dir: tuple[Path, ...], personas_dir: tuple[Path, ...],
        schemas_dir: tuple[Path, ...], triggers_dir: tuple[Path, ...], log_format: str | None,
        verbose: int) -> None:
    """devflow runs coding agents through reviewed, reproducible workflows.

    A run binds a template's roles to personas, works in its own git worktree,
    makes every phase leave a schema-validated artifact, waits at gates for a
    person's decision, and ends with a report.

    Start with `devflow demo`, then `devflow run start --help`. Every command has
    its own --help with an example, and --json for scripts.
    """
    overrides: dict[str, Any] = {
        "templates_dirs": [str(p) for p in templates_dir] or None,
        "personas_dirs": [str(p) for p in personas_dir] or None,
        "schemas_dirs": [str(p) for p in schemas_dir] or None,
        "triggers_dirs": [str(p) for p in triggers_dir] or None,
    }
    state = State(overrides, log_format, verbose)
    ctx.obj = state
    ctx.call_on_close(state.close)


def _register() -> None:
    from devflow.cli import admin, daemon, decisions, defs, runs, serve, triggers
    for module in (runs, decisions, defs, triggers, admin, serve, daemon):
        module.register(cli)


class _Terminated(BaseException):
    """SIGTERM outside a drive (which has its own handling): unwind like Ctrl-C does."""


def _terminated(signum: int, frame: object) -> NoReturn:
    raise _Terminated()


def main(argv: list[str] | None = None) -> None:
    # At exit, after the atexit handlers and the threads' shutdown, the interpreter
    # collects garbage over every object the imports made (SQLAlchemy's are many): a
    # tenth of a second of a command that took three. Frozen, they are left to the OS;
    # nothing of devflow's waits on that collection (files and connections are closed
    # where they are used, the app when the command's context closes).
    atexit.register(gc.freeze)
    # Start-up makes objects that live as long as the process (modules, classes,
    # SQLAlchemy's constructs): under the default thresholds a young collection ran every
    # 700 of them and full ones over all of them during the imports (a tenth of a gated
    # command's CPU). Collections still run, less often (docs/performance.md).
    gc.set_threshold(*GC_THRESHOLDS)
    from devflow.cli import output
    args = sys.argv[1:] if argv is None else argv
    _register()
    want_json = "--json" in args
    signal.signal(signal.SIGTERM, _terminated)
    try:
        _check_text(args)
        code = cli.main(args=args, prog_name="devflow", standalone_mode=False)
        sys.stdout.flush()  # here, where a closed pipe is still ours to handle
    except output.PipeClosed:
        output.silence_stdout()
        sys.exit(141)
    except BrokenPipeError:  # the final flush
        output.silence_stdout()
        sys.exit(141)
    except (click.exceptions.Abort, KeyboardInterrupt):  # click turns Ctrl-C into Abort
        _quietly(output.failure, "interrupted", "devflow was interrupted", "", want_json)
        sys.exit(130)
    except _Terminated:
        _quietly(output.failure, "terminated", "devflow was stopped by SIGTERM", "",
                 want_json)
        sys.exit(143)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        _quietly(output.usage_error, exc, want_json)
        sys.exit(2)
    except BaseException as exc:
        from devflow.errors import DevflowError, Interrupted, LeaseLost
        if isinstance(exc, Interrupted):
            _quietly(_interrupted, exc, want_json)
            sys.exit(128 + exc.signum)
        if isinstance(exc, LeaseLost):  # a drive stops on it; one that reached here is told
            exc = exc.error()
        if isinstance(exc, DevflowError):
            _quietly(output.error, exc, want_json)
            sys.exit(exc.exit_code)
        if isinstance(exc, SystemExit):
            raise
        from devflow import machine
        if (blocked := machine.classify(exc)) is not None:  # a full disk is not a bug
            _quietly(output.error, machine.MachineFault(blocked), want_json)
            sys.exit(1)
        _quietly(output.crash, exc, want_json)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


def _check_text(args: list[str]) -> None:
    """Arguments are text: bytes that are not UTF-8 reach Python as lone surrogates, which
    no file, database or git call could take later (paths included: devflow records
    them). Refused here, naming the argument and the byte, before anything runs."""
    from devflow import jsontext
    from devflow.errors import Code, DevflowError
    for i, arg in enumerate(args, 1):
        why = jsontext.unstorable(arg)
        if why is None:
            continue
        message = f"argument {i} is not text: it {why}"
        try:
            raw = arg.encode("utf-8", "surrogateescape")  # the bytes as they were given
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            message = (f"argument {i} is not UTF-8 text: byte {raw[exc.start]:#04x} at "
                       f"offset {exc.start}")
        except UnicodeEncodeError:
            pass  # not from bytes: the surrogate itself is named
        raise DevflowError(Code.INVALID_INPUT, message, hint="arguments must be UTF-8 text")


def _interrupted(exc: Any, want_json: bool) -> None:
    from devflow.cli import output
    name = signal.Signals(exc.signum).name
    output.failure("interrupted", f"{name}: run {exc.run_id} was interrupted, not aborted; "
                   "the attempt under way is recorded as interrupted and its agent stopped",
                   f"continue with `devflow run drive {exc.run_id}` or abort with "
                   f"`devflow run abort {exc.run_id}`", want_json)


def _quietly(say: Any, *args: Any) -> None:
    """Print an error; if even that finds the pipe closed, leave it."""
    from devflow.cli import output
    try:
        say(*args)
        sys.stdout.flush()
    except BrokenPipeError:
        output.silence_stdout()


if __name__ == "__main__":
    main()
