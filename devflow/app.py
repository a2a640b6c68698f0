"""The one place that wires settings, logging, the store, the catalog and the backends.

The CLI and the HTTP API (devflow.api) call ``App`` and nothing below it. Verbs that drive
runs enter the async core with ``anyio.run``.

Each verb imports what it needs when it is called: a command that reads runs loads the
store's Core tables, not the engine, the backends or the validators; one that lists
definitions opens no database (docs/performance.md, "Read commands"; a test walks the
read commands and checks what they imported).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

from devflow import git, logs, memo, model, redact
from devflow.catalog import Catalog, Dirs
from devflow.errors import Code, DevflowError
from devflow.settings import Settings
from devflow.states import RUNNABLE, TERMINAL, RunState

if TYPE_CHECKING:
    from devflow import access, approvals, ticks
    from devflow import sweep as sweep_module
    from devflow.definitions import Persona, Problem, Template
    from devflow.engine import control, deliveries, schedule, worker
    from devflow.engine import prune as prune_module
    from devflow.engine.context import Context, Observer
    from devflow.requests import StartRequest, WorkerOptions
    from devflow.store import Store
    from devflow.triggerdefs import Trigger

T = TypeVar("T")


@dataclass(frozen=True)
class RunView:
    """A run with its phases and, while it waits at a gate, the gate."""

    run: model.Run
    phases: list[model.Phase]
    gate: model.Approval | None
    #: what ``worktree prune`` did to the run once it ended
    housekeeping: model.Housekeeping = field(default_factory=model.Housekeeping)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"run": {**self.run.to_json(), **self.housekeeping.to_json(),
                                        "phases": [p.to_json() for p in self.phases]}}
        if self.gate is not None:
            body["gate"] = self.gate.gate_block()
        return body


class App:
    def __init__(self, settings: Settings, *, clock: Callable[[], datetime] | None = None,
                 log_level: str = "warning") -> None:
        self.settings = settings
        self._clock = clock
        logs.configure(settings.log_format, log_level)
        logs.set_redactor(self.redactor)
        #: answers checked once per version of a file (definitions, agent CLIs' versions)
        self.memo = memo.Memo(settings.home / "cache" / "memo.json", within=settings.home)
        git.configure(memo=self.memo)

    # -- wiring ----------------------------------------------------------------------------
    @functools.cached_property
    def redactor(self) -> redact.Redactor:
        """devflow's secret-looking variables; the engine adds what the personas of the
        runs it works on hand their agents (``Context.remember_secrets``)."""
        return redact.Redactor(lambda: redact.env_secrets(os.environ))

    @functools.cached_property
    def store(self) -> Store:
        from devflow.store import Store  # noqa: PLC0415 - see the module doc
        self.settings.home.mkdir(parents=True, exist_ok=True)
        if self._clock is not None:
            return Store.open(self.settings.database_url, clock=self._clock,
                              redact=self.redactor)
        return Store.open(self.settings.database_url, redact=self.redactor)

    @functools.cached_property
    def catalog(self) -> Catalog:
        s = self.settings
        home_triggers = s.home / "triggers"
        triggers = (*((home_triggers,) if home_triggers.is_dir() else ()), *s.triggers_dirs)
        return Catalog(Dirs.with_builtins(s.templates_dirs, s.personas_dirs, s.schemas_dirs,
                                          triggers),
                       check_persona_options=_check_options, memo=self.memo)

    @functools.cached_property
    def _backends(self) -> ModuleType:
        """The backends, configured (imported by the verbs that run agents or list them)."""
        from devflow import backends  # noqa: PLC0415 - see the module doc
        backends.configure(prices=self.settings.prices, memo=self.memo)
        return backends

    def context(self, observer: Observer | None = None) -> Context:
        from devflow.engine.context import Context, NoObserver  # noqa: PLC0415 - as above
        self._backends  # noqa: B018 - configured before the engine runs an agent
        return Context(self.settings, self.store, self.catalog, observer or NoObserver())

    def close(self) -> None:
        self.memo.save()  # what this process learnt (git's configuration, versions)
        if "store" in self.__dict__:
            self.store.close()

    # -- definitions -----------------------------------------------------------------------
    def templates(self) -> list[Template]:
        return self.catalog.templates()

    def template(self, ref: str) -> Template:
        return self.catalog.template(ref)

    def personas(self) -> list[Persona]:
        return self.catalog.personas()

    def persona(self, ref: str) -> Persona:
        return self.catalog.persona(ref)

    def check_definition(self, path: Path, kind: str) -> Template | Persona | Trigger:
        return self.catalog.check_file(path, kind)

    def check_document(self, schema_id: str, path: Path) -> list[Any]:
        from devflow import artifacts  # noqa: PLC0415 - see the module doc
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DevflowError(Code.FILE_NOT_FOUND, f"cannot read {path}: {exc.strerror}",
                               hint="check the path") from exc
        self.catalog.schemas.get(schema_id)
        return artifacts.check_bytes(data, schema_id, self.catalog.schemas).issues

    def backends(self) -> list[dict[str, Any]]:
        backends = self._backends
        rows = []
        personas = self.catalog.personas()
        for name in backends.names():
            users = [p for p in personas if p.backend == name]
            backend = backends.get(name)
            seen = backend.availability(users[0]) if users else None
            if seen is None and name == "command":
                # nothing to check until a persona names its program
                rows.append({"backend": name, "available": True, "version": None,
                             "reason": "runs the program a persona's options.argv names; no "
                                       "persona here uses it yet", "personas": [],
                             "sandbox": None})
                continue
            rows.append({"backend": name, "available": bool(seen and seen.available),
                         "version": seen.version if seen else None,
                         "reason": seen.reason if seen else "no persona uses it",
                         "personas": [p.ref for p in users],
                         "sandbox": self._sandboxes(users)})
        self.memo.save()
        return rows

    def backend_options(self, name: str) -> dict[str, Any]:
        """The JSON Schema of backend ``name``'s persona options (``backend_unavailable``
        for a name devflow does not know)."""
        return dict(self._backends.get(name).options_schema)

    def sandbox(self) -> dict[str, Any]:
        """bubblewrap here: its path and version, or why agents cannot be sandboxed."""
        from devflow.backends import sandbox  # noqa: PLC0415 - see the module doc
        found = sandbox.probe(self.settings.bwrap)
        return {"available": found.works, "path": found.path, "version": found.version,
                "reason": found.reason, "allow_unsandboxed": self.settings.allow_unsandboxed}

    def _sandboxes(self, personas: list[Persona]) -> str:
        """How these personas' agents run here, in a word or two, each answer once: bwrap
        (with its network when it is none), NONE (the persona's choice or the allowed
        fallback), or REFUSED (``sandbox_unavailable``)."""
        from devflow.backends import sandbox  # noqa: PLC0415 - see the module doc
        words = []
        for persona in personas:
            try:
                plan = sandbox.plan(persona, self.settings)
            except DevflowError:
                word = "REFUSED"
            else:
                word = ("bwrap" + (", no network" if persona.sandbox.network == "none" else "")
                        if plan.sandboxed else
                        "NONE (persona)" if not persona.sandbox.enabled else "NONE (allowed)")
            if word not in words:
                words.append(word)
        return "; ".join(words)

    # -- database --------------------------------------------------------------------------
    def db_upgrade(self) -> tuple[str | None, str | None]:
        from devflow.store import Database, migrate  # noqa: PLC0415 - not migrated yet
        self.settings.home.mkdir(parents=True, exist_ok=True)
        db = Database(self.settings.database_url)
        try:
            before = migrate.current(db)
            return before, migrate.upgrade(db)
        finally:
            db.dispose()

    def db_current(self) -> dict[str, Any]:
        from devflow.store import Database, migrate  # noqa: PLC0415 - as above
        db = Database(self.settings.database_url)
        try:
            return {"url": _safe_url(self.settings.database_url), "revision": migrate.current(db),
                    "head": migrate.HEAD_REVISION}
        finally:
            db.dispose()

    # -- runs ------------------------------------------------------------------------------
    def start(self, request: StartRequest, *, detach: bool = False,
              observer: Observer | None = None) -> RunView:
        from devflow.engine import start  # noqa: PLC0415 - see the module doc
        from devflow.engine.context import new_owner  # noqa: PLC0415 - as above
        start.requirements_text(request)  # bad text changes nothing: no database opened
        ctx = self.context(observer)
        if detach:
            return self.view(_run_async(start.start_detached, ctx, request, new_owner("cli")).id)
        run, lease = _run_async(start.start, ctx, request, new_owner("cli"))
        _drive_here(ctx, run.id, lease)
        return self.view(run.id)

    def drive(self, run_id: str, observer: Observer | None = None) -> tuple[RunView, bool]:
        """Drive a runnable run in this process; (view, False) when someone else holds it."""
        from devflow.engine.context import new_owner  # noqa: PLC0415 - as above
        run = self.store.runs.get(run_id)
        if run.state not in RUNNABLE:
            return self.view(run.id), False
        lease = self.store.leases.claim(run.id, new_owner("cli"), self.settings.lease_seconds)
        if lease is None:
            return self.view(run.id), False
        _drive_here(self.context(observer), run.id, lease)
        return self.view(run.id), True

    def view(self, run_id: str) -> RunView:
        run = self.store.runs.get(run_id)
        gate = None
        if run.state is RunState.AWAITING_APPROVAL:
            pending = self.store.approvals.find(pending=True, run_id=run.id)
            gate = pending[0] if pending else None
        housekeeping = model.Housekeeping()
        if run.terminal:
            from devflow import events  # noqa: PLC0415 - see the module doc
            housekeeping = events.housekeeping(
                self.store.events.of_types(events.HOUSEKEEPING_NAMES, run.id))
        return RunView(run, self.store.runs.phases(run.id), gate, housekeeping)

    def bindings(self, run_id: str) -> list[model.Binding]:
        return self.store.runs.bindings(self.store.runs.get(run_id).id)

    def invocations(self, run_id: str) -> list[model.Invocation]:
        """The agents and commands the run started, with their usage and cost."""
        return self.store.runs.invocations(self.store.runs.get(run_id).id)

    def diff(self, run_id: str, max_bytes: int = 512 * 1024) -> tuple[str, bool] | None:
        """The run's branch against its base, as a patch (text, cut at ``max_bytes``);
        None before the run has a base commit, when its repository is not here or its
        branch is gone (``worktree prune --delete-branches``)."""
        run = self.store.runs.get(run_id)
        if not run.base_sha or not run.branch or not Path(run.repo).is_dir():
            return None
        from devflow import worktree  # noqa: PLC0415 - see the module doc
        return worktree.diff(Path(run.repo), run.base_sha, run.branch, max_bytes)

    def report_text(self, run_id: str, fmt: str = "md") -> str | None:
        """The final report as written, or None while there is none (it writes nothing)."""
        run = self.store.runs.get(run_id)
        path = Path(run.workspace) / f"report.{fmt}"
        if run.state not in TERMINAL or not path.is_file():
            return None
        return path.read_text(encoding="utf-8")

    def runs(self, states: list[RunState] | None = None, repo: Path | None = None,
             limit: int = 200, before: tuple[datetime, str] | None = None) -> list[model.Run]:
        """Runs, newest first; ``repo``: those of the repository containing that path;
        ``before``: a cursor (created_at, id) of the page before."""
        top = None
        if repo is not None:
            from devflow import worktree  # noqa: PLC0415 - see the module doc
            top = worktree.top_of(repo)
        return self.store.runs.find(states_in=states, repo=top, limit=limit, before=before)

    def start_request(self, **fields: Any) -> StartRequest:
        """A ``StartRequest`` for interfaces that do not import the engine (the HTTP API)."""
        from devflow.requests import StartRequest  # noqa: PLC0415 - see the module doc
        return StartRequest(**fields)

    def approval_request(self, approval_id: int) -> model.Approval:
        return self.store.approvals.get(approval_id)

    def start_once(self, request: StartRequest, key: str) -> tuple[RunView, bool]:
        """Start a run (detached) once per ``key`` of the request's actor: (view, replayed).

        The run's id is derived from the actor and the key, so a start repeated with
        the key (racing the first or long after) meets the run the first one created
        (``run_id_exists`` under the store's start lock) and returns it; a key used for
        another template or base is ``idempotency_key_reused``.
        """
        import dataclasses  # noqa: PLC0415 - see the module doc
        import hashlib  # noqa: PLC0415 - as above
        if request.run_id is not None:
            raise DevflowError(Code.INVALID_INPUT, "an Idempotency-Key names the run: give "
                               "no run_id with it", hint="leave run_id out, or the key")
        digest = hashlib.sha256(f"{request.actor}\0{key}".encode()).hexdigest()
        run_id = f"api-{digest[:20]}"
        try:
            view = self.view(run_id)
        except DevflowError as missing:
            if missing.code is not Code.RUN_NOT_FOUND:
                raise
            try:
                return self.start(dataclasses.replace(request, run_id=run_id),
                                  detach=True), False
            except DevflowError as exc:
                if exc.code is not Code.RUN_ID_EXISTS:
                    raise
            view = self.view(run_id)
        if view.run.template_name != request.template.split("@")[0] \
                or view.run.base != request.base:
            raise DevflowError(Code.IDEMPOTENCY_KEY_REUSED, f"Idempotency-Key {key!r} started "
                               f"run {run_id} of {view.run.template_ref} on {view.run.repo} "
                               f"({view.run.base})", hint="a new start needs a new key")
        return view, True

    def artifacts(self, run_id: str) -> list[model.ArtifactRecord]:
        return self.store.runs.artifacts(self.store.runs.get(run_id).id)

    def artifact(self, run_id: str, sha256: str) -> Any:
        """A kept artifact of the run, parsed, found by its sha256."""
        kept = next((a for a in self.artifacts(run_id) if a.sha256 == sha256), None)
        if kept is None:
            raise DevflowError(Code.FILE_NOT_FOUND, f"run {run_id} kept no artifact {sha256}",
                               hint=f"GET /api/v1/runs/{run_id}/artifacts lists them")
        from devflow import artifacts  # noqa: PLC0415 - see the module doc
        return artifacts.load_stored(Path(kept.stored_path), kept.sha256)

    def event_span(self, run_id: str) -> tuple[int, int] | None:
        """The first and last event seq the run's log holds (None: none)."""
        return self.store.events.span(self.store.runs.get(run_id).id)

    def events(self, run_id: str, after: int = 0, follow: bool = False,
               poll: float = 0.5) -> Iterator[model.Event]:
        run = self.store.runs.get(run_id)
        while True:
            batch = self.store.events.after(run.id, after)
            yield from batch
            if batch:
                after = batch[-1].seq
                continue  # there may be more than one batch holds
            if not follow:
                return
            # The report is the last thing a run writes: stop once it is there.
            current = self.store.runs.get(run.id)
            if not (current.terminal and current.report_status):
                time.sleep(poll)
            elif not self.store.events.after(run.id, after):
                return

    def report_path(self, run_id: str, fmt: str = "md") -> Path:
        run = self.store.runs.get(run_id)
        if run.state not in TERMINAL:
            raise DevflowError(Code.ILLEGAL_TRANSITION, f"run {run.id} is {run.state}: its report "
                               "is written when it ends", hint=f"devflow run status {run.id}")
        path = Path(run.workspace) / f"report.{fmt}"
        if not path.exists():
            from devflow.engine import finish  # noqa: PLC0415 - see the module doc
            finish.write_report(self.context(), run.id)
        return path

    def demo_request(self, directory: Path | None = None) -> tuple[StartRequest, bool]:
        """The demo's run on its sample project, made under ``directory`` (default: a new
        directory under DEVFLOW_HOME/demo) or reused from an earlier demo there (True)."""
        from devflow import demo  # noqa: PLC0415 - see the module doc
        now = self._clock() if self._clock is not None else model.utcnow()
        base = directory or self.settings.home / "demo" / now.strftime("%Y%m%d-%H%M%S")
        return demo.start_request(base.expanduser().resolve(), self.settings.actor)

    # -- operators -------------------------------------------------------------------------
    def sweep(self, *, policy: str = "resume", max_recoveries: int | None = None,
              dry_run: bool = False) -> sweep_module.SweepResult:
        from devflow import sweep as sweep_module  # noqa: PLC0415 - see the module doc
        return sweep_module.sweep(self.context(), policy=policy, max_recoveries=max_recoveries,
                                  dry_run=dry_run)

    def work(self, options: WorkerOptions) -> worker.Stats:
        """Run a worker until SIGTERM or SIGINT (or, with ``once``, until nothing is left)."""
        import signal  # noqa: PLC0415 - see the module doc

        import anyio  # noqa: PLC0415 - as above
        import anyio.abc  # noqa: PLC0415 - as above

        from devflow.engine import worker  # noqa: PLC0415 - as above

        async def main() -> worker.Stats:
            stop = anyio.Event()
            async with anyio.create_task_group() as group:
                async def signals(*, task_status: anyio.abc.TaskStatus[None]) -> None:
                    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
                        task_status.started()
                        async for _ in received:
                            stop.set()
                # The handlers are in place before the worker registers: a worker that
                # shows in `devflow workers` stops cleanly when told to.
                await group.start(signals)
                stats = await worker.work(self.context(), options, stop)
                group.cancel_scope.cancel()
            return stats
        return _run_async(main)

    async def work_async(self, stop: Any, **options: Any) -> worker.Stats:
        """A worker in the caller's event loop (``devflow serve``'s) until ``stop`` (an
        ``anyio.Event``) is set; ``options`` are ``worker.Options``' fields."""
        from devflow.engine import worker  # noqa: PLC0415 - see the module doc
        from devflow.requests import WorkerOptions  # noqa: PLC0415 - as above
        return await worker.work(self.context(), WorkerOptions(**options), stop)

    async def deliver_async(self, stop: Any) -> None:
        """Send the configured webhooks' messages (``devflow serve``) until ``stop``."""
        from devflow.engine import notify  # noqa: PLC0415 - see the module doc
        await notify.deliver(self.context(), self.settings.webhooks, self.settings.public_url,
                             stop)

    def webhooks(self) -> list[dict[str, Any]]:
        """Each endpoint (its URL redacted): deliveries by state, last failure, disabled."""
        shown = {e.key: e.shown for e in self.settings.webhooks}
        found = self.store.outbox.status()
        for item in found:
            item["url"] = shown.get(item.pop("endpoint"), "(no longer configured)")
        return found

    def workers(self, include_stopped: bool = False) -> list[model.Worker]:
        return self.store.leases.workers(include_stopped=include_stopped)

    def prune(self, *, older_than: float | None = None, delete_branches: bool = False,
              dry_run: bool = False, force: Sequence[str] = ()) -> list[prune_module.Item]:
        from devflow.engine import prune  # noqa: PLC0415 - see the module doc
        return prune.prune(self.context(), older_than=older_than,
                           delete_branches=delete_branches, dry_run=dry_run, force=force)

    # -- triggers --------------------------------------------------------------------------
    def triggers(self) -> list[ticks.TriggerView]:
        return [self.trigger(t.name, detail=False) for t in self.catalog.triggers()]

    def trigger(self, name: str, *, detail: bool = True) -> ticks.TriggerView:
        """A trigger with its state, last and next tick; with ``detail``, its recent ticks
        (the runs it started, the ticks it missed) and events."""
        from devflow import ticks  # noqa: PLC0415 - see the module doc
        trigger = self.catalog.trigger(name)
        store = self.store.triggers
        state = store.states().get(name)
        recent = store.recent_ticks(name, limit=50 if detail else 1)
        now = (self._clock or model.utcnow)()
        return ticks.TriggerView(
            trigger, state, recent[0] if recent else None, ticks.next_due(trigger, state, now),
            store.counts(name), recent if detail else [],
            store.events(name) if detail else [],
            self.store.deliveries.recent(name, limit=50 if detail else 1)
            if trigger.webhook is not None else [],
            self.store.deliveries.counts(name) if trigger.webhook is not None else {})

    def pause_trigger(self, name: str, actor: str, reason: str | None = None) -> bool:
        """Pause: no tick of it starts until it is resumed; False when it was paused."""
        trigger = self.catalog.trigger(name)
        return self.store.triggers.set_paused(trigger.name, True, actor, reason)[1]

    def resume_trigger(self, name: str, actor: str) -> bool:
        """Resume: its ticks count from now (those of the pause are not missed)."""
        trigger = self.catalog.trigger(name)
        return self.store.triggers.set_paused(trigger.name, False, actor, None)[1]

    def fire_trigger(self, name: str, actor: str) -> schedule.Outcome:
        """Start one run of the trigger now (left to workers to drive)."""
        from devflow.engine import schedule  # noqa: PLC0415 - see the module doc
        trigger = self.catalog.trigger(name)
        if trigger.schedule is None:
            raise _not_served(trigger.name)
        return schedule.fire(self.context(), trigger, actor)

    def evaluate_triggers(self) -> list[schedule.Outcome]:
        """Evaluate every schedule trigger now, as a worker or the sweep does."""
        from devflow.engine import schedule  # noqa: PLC0415 - see the module doc
        return schedule.evaluate_all(self.context())

    def start_stale_deliveries(self) -> list[deliveries.Received]:
        """Start the webhook deliveries whose starter died before their run started (their
        claims ran out), as a worker or the sweep does."""
        from devflow.engine import deliveries  # noqa: PLC0415 - see the module doc
        return deliveries.start_stale(self.context())

    def receive_hook(self, name: str, headers: Mapping[str, str],
                     raw: bytes) -> deliveries.Received:
        """A webhook delivery to trigger ``name`` (``POST /api/v1/hooks/{trigger}``):
        verified, recorded once, its run started once."""
        from devflow.engine import deliveries  # noqa: PLC0415 - see the module doc
        return deliveries.receive(self.context(), name, headers, raw)

    # -- people ----------------------------------------------------------------------------
    # Who the caller is (``principal``) is the interface's to establish: the CLI's is the
    # OS account running it (the default); the HTTP API's is its token's actor.
    # Who may do what is decided below, by access.authorize, for every interface alike.
    def decide(self, request: approvals.DecisionRequest) -> approvals.DecisionResult:
        from devflow.engine import control  # noqa: PLC0415 - see the module doc
        return control.decide(self.context(), request)

    def pause(self, run_id: str, actor: str, reason: str | None = None,
              principal: access.Principal | None = None) -> control.Changed:
        from devflow.engine import control  # noqa: PLC0415 - see the module doc
        return control.pause(self.context(), run_id, actor, reason, principal)

    def resume(self, run_id: str, actor: str, reason: str | None = None,
               principal: access.Principal | None = None) -> control.Changed:
        from devflow.engine import control  # noqa: PLC0415 - see the module doc
        return control.resume(self.context(), run_id, actor, reason, principal)

    def abort(self, run_id: str, actor: str, reason: str | None = None,
              principal: access.Principal | None = None) -> control.Changed:
        from devflow.engine import control  # noqa: PLC0415 - see the module doc
        return control.abort(self.context(), run_id, actor, reason, principal)

    # -- API tokens ------------------------------------------------------------------------
    def token_create(self, actor: str, role: str, created_by: str,
                     expires_in: float | None = None) -> tuple[str, model.ApiToken]:
        """A new token: (the token, shown this once; what is kept of it)."""
        from datetime import timedelta  # noqa: PLC0415 - see the module doc

        from devflow import tokens  # noqa: PLC0415 - as above
        tokens.check_role(role)
        if not actor.strip() or actor.startswith("system:"):
            raise DevflowError(Code.INVALID_INPUT, f"actor {actor!r} cannot hold a token",
                               hint="a person's name (names starting with system: are "
                                    "devflow's own)")
        if expires_in is not None and expires_in <= 0:
            raise DevflowError(Code.INVALID_INPUT, "--expires must be a positive duration",
                               hint="e.g. --expires 90d")
        text, prefix, digest = tokens.new()
        expires_at = (self.store.clock() + timedelta(seconds=expires_in)
                      if expires_in is not None else None)
        kept = self.store.tokens.create(prefix, digest, actor, role, created_by, expires_at)
        return text, kept

    def tokens(self, include_dead: bool = False) -> list[model.ApiToken]:
        return self.store.tokens.list(include_dead=include_dead)

    def token_revoke(self, prefix: str) -> tuple[model.ApiToken, bool]:
        """Revoke a token; the web page's sessions opened with it end with it."""
        revoked = self.store.tokens.revoke(prefix)
        self.store.sessions.close_token(revoked[0].prefix)
        return revoked

    def authenticate(self, presented: str) -> model.ApiToken:
        """The live token presented (its use recorded), or ``unauthenticated``."""
        from devflow import tokens  # noqa: PLC0415 - see the module doc
        prefix = tokens.prefix_of(presented)
        found = self.store.tokens.find(prefix) if prefix else None
        if found is None or not tokens.matches(presented, found[1]):
            raise DevflowError(Code.UNAUTHENTICATED, "the API token is not known",
                               hint="send Authorization: Bearer TOKEN with a token from "
                                    "`devflow tokens create`")
        token = found[0]
        if not token.live(self.store.clock()):
            why = "revoked" if token.revoked_at is not None else "expired"
            raise DevflowError(Code.UNAUTHENTICATED, f"API token {token.prefix} is {why}",
                               hint="ask an admin for a new one (devflow tokens create)")
        self.store.tokens.touch(token)
        return token

    def now(self) -> datetime:
        """The store's clock (what deadlines, leases and sessions are compared with)."""
        return self.store.clock()

    # -- web page sessions -----------------------------------------------------------------
    def session_open(self, token: model.ApiToken, seconds: float,
                     replacing: str | None = None) -> tuple[str, model.WebSession]:
        """A new session of the web page for a live token (authenticated just before):
        (its id, for the cookie only; what is kept). It lasts ``seconds``, never beyond
        the token; ``replacing``: the session id the browser had, ended."""
        from datetime import timedelta  # noqa: PLC0415 - see the module doc

        from devflow import tokens  # noqa: PLC0415 - as above
        session_id, key, csrf = tokens.new_session()
        expires = self.now() + timedelta(seconds=seconds)
        if token.expires_at is not None:
            expires = min(expires, token.expires_at)
        kept = self.store.sessions.open(key, token.prefix, csrf, expires,
                                        tokens.digest(replacing) if replacing else None)
        return session_id, kept

    def token_live(self, prefix: str) -> bool:
        """Whether the API token is live now (an open event stream asks now and then)."""
        try:
            return self.store.tokens.get(prefix).live(self.now())
        except DevflowError:
            return False

    def session_live(self, session_id: str) -> bool:
        """Whether the web session is live now, its token too (as ``session`` says)."""
        try:
            self.session(session_id)
        except DevflowError:
            return False
        return True

    def session(self, session_id: str) -> tuple[model.WebSession, model.ApiToken]:
        """The live session of this id and its token, or ``unauthenticated``: none, ended,
        expired, or its token revoked or expired. It changes nothing."""
        from devflow import tokens  # noqa: PLC0415 - see the module doc
        found = self.store.sessions.find(tokens.digest(session_id)) if session_id else None
        if found is None:
            raise DevflowError(Code.UNAUTHENTICATED, "not signed in",
                               hint="sign in with an API token")
        session, token = found
        now = self.now()
        if session.expires_at <= now:
            raise DevflowError(Code.UNAUTHENTICATED, "the session expired",
                               hint="sign in again")
        if not token.live(now):
            why = "revoked" if token.revoked_at is not None else "expired"
            raise DevflowError(Code.UNAUTHENTICATED, f"API token {token.prefix} is {why}",
                               hint="sign in with a live token")
        return found

    def session_close(self, session_id: str) -> bool:
        """End a session (sign out); whether there was one."""
        from devflow import tokens  # noqa: PLC0415 - see the module doc
        return self.store.sessions.close(tokens.digest(session_id))

    def approvals(self, *, pending: bool = False,
                  run_id: str | None = None) -> list[model.Approval]:
        if run_id:
            run_id = self.store.runs.get(run_id).id
        return self.store.approvals.find(pending=pending, run_id=run_id)

    def approval(self, approval_id: int) -> tuple[model.Approval, list[model.Decision], Any]:
        approval = self.store.approvals.get(approval_id)
        decisions = self.store.approvals.decisions(approval_id=approval_id)
        run = self.store.runs.get(approval.run_id)
        artifact = None
        kept = next((a for a in self.store.runs.artifacts(run.id)
                     if a.phase_key == approval.phase_key
                     and a.sha256 == approval.evidence.artifact_sha), None)
        if kept is not None:
            from devflow import artifacts  # noqa: PLC0415 - see the module doc
            artifact = artifacts.load_stored(Path(kept.stored_path), kept.sha256)
        return approval, decisions, artifact


def _drive_here(ctx: Context, run_id: str, lease: model.Lease) -> None:
    """Drive in this process, in the foreground. SIGINT (Ctrl-C) or SIGTERM stops the drive
    as a worker's grace period does, and then raises ``Interrupted``: the attempt under way
    is recorded as interrupted (its agent stopped), the lease released, the run left
    runnable for ``devflow run drive`` or a worker."""
    import signal  # noqa: PLC0415 - see the module doc
    import threading  # noqa: PLC0415 - as above

    import anyio  # noqa: PLC0415 - as above
    import anyio.abc  # noqa: PLC0415 - as above

    from devflow.engine import drive  # noqa: PLC0415 - as above
    from devflow.errors import Interrupted  # noqa: PLC0415 - as above
    if threading.current_thread() is not threading.main_thread():
        _run_async(drive.drive, ctx, run_id, lease)  # signals reach the main thread only
        return
    caught: list[int] = []
    wanted = (signal.SIGINT, signal.SIGTERM)
    before = {signum: signal.getsignal(signum) for signum in wanted}

    async def main() -> None:
        driving = anyio.CancelScope()

        async def watch(*, task_status: anyio.abc.TaskStatus[None]) -> None:
            # kept until the drive has recorded the interruption: a second Ctrl-C does
            # not break that off
            with anyio.open_signal_receiver(*wanted) as received:
                task_status.started()
                async for signum in received:
                    caught.append(signum)
                    driving.cancel()
        async with anyio.create_task_group() as group:
            await group.start(watch)
            with driving:
                await drive.drive(ctx, run_id, lease)
            group.cancel_scope.cancel()
    try:
        _run_async(main)
    finally:
        for signum, handler in before.items():  # asyncio leaves the defaults behind
            signal.signal(signum, handler)
    if caught:
        raise Interrupted(run_id, caught[0])


def _check_options(backend: str, options: Any) -> list[Problem]:
    """A persona's options checked by its backend (loaded for it: a persona whose check
    is remembered needs none)."""
    from devflow import backends  # noqa: PLC0415 - see the module doc
    return backends.check_options(backend, options)


def _run_async(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Enter the async core; a lone error of its task groups comes out as itself."""
    import anyio  # noqa: PLC0415 - see the module doc

    from devflow.engine.context import single  # noqa: PLC0415 - as above
    try:
        return anyio.run(fn, *args)
    except BaseExceptionGroup as failed:
        raise single(failed) from None


def _not_served(name: str) -> DevflowError:
    return DevflowError(Code.INVALID_INPUT, f"trigger {name} is a webhook trigger: its runs "
                        "start from deliveries to POST /api/v1/hooks/{name}, not by fire",
                        hint="schedule triggers can be fired; see docs/triggers.md")


def _safe_url(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':')[0]}:***@{host}" if ":" in creds else url
    return url


def preload() -> None:
    """Import at once what the verbs import where first used, and nothing more: no setting
    read, no database opened, no process started. For ``devflow daemon``, whose one import
    serves many commands (docs/decisions.md, The daemon); nothing else calls it. (By name:
    these are the modules this one already imports inside its verbs.)"""
    import importlib  # noqa: PLC0415 - the daemon only

    for name in _USED_LATER:
        importlib.import_module(name)
    from devflow import backends, store  # noqa: PLC0415 - as above
    backends.preload()
    store.preload()


#: the modules ``App``'s verbs import where first used
_USED_LATER = (
    "anyio.abc", "devflow.approvals", "devflow.artifacts", "devflow.demo", "devflow.events",
    "devflow.report", "devflow.sweep", "devflow.ticks", "devflow.tokens", "devflow.worktree",
    "devflow.engine.context", "devflow.engine.control", "devflow.engine.deliveries",
    "devflow.engine.drive", "devflow.engine.finish", "devflow.engine.notify",
    "devflow.engine.prune", "devflow.engine.schedule", "devflow.engine.start",
    "devflow.engine.worker",
)
