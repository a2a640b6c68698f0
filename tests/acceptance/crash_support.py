"""Helpers of the crash suite: real ``devflow`` processes killed for real, and the invariants
of DESIGN.md §3.3 and §3.4 checked on what the database holds afterwards.

``Devflow`` starts the real command as processes of their own (children of a server that
imported devflow once, ``cli_fork``; output to files, so a pipe never
blocks a process we want to see die), remembers every process it started and kills and
reaps them all in ``close``. ``audit_run`` reads one run back through ``App`` and counts
what the guarantees forbid: gaps in the event sequence, a phase whose agent ran again
after the phase was accepted, a decision recorded twice, a terminal run without a valid
report. ``figures`` adds them up over many runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil

from devflow import git, model
from devflow.app import App
from devflow.catalog import Catalog, Dirs
from devflow.report import REPORT_SCHEMA
from devflow.settings import Settings
from devflow.states import RUNNABLE, TERMINAL, ApprovalState, RunState
from tests.acceptance import cli_fork
from tests.acceptance.cli_fork import Forked

T = TypeVar("T")
SIGKILLED = -signal.SIGKILL
#: What the kill-point tests bind: scripted agents only, and a plan that adds no phase.
BINDS = ["--bind", "planner=scripted-planner@1", "--bind", "implementer=scripted-implementer@1",
         "--bind", "reviewer=scripted-reviewer@1"]
DEV_SCENARIOS = ["--scenario", "plan=plan:0"]

_SCHEMAS: list[Any] = []


def schemas() -> Any:
    if not _SCHEMAS:
        _SCHEMAS.append(Catalog(Dirs.with_builtins()).schemas)
    return _SCHEMAS[0]


# -- waiting ------------------------------------------------------------------------------
def wait_until(predicate: Callable[[], T], what: str, timeout: float = 120.0,
               interval: float = 0.1) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# -- processes ----------------------------------------------------------------------------
@dataclass
class Proc:
    """One ``devflow`` process started by the test, its output in files."""

    name: str
    args: tuple[str, ...]
    popen: subprocess.Popen[bytes] | Forked
    out: Path
    err: Path
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    @property
    def seconds(self) -> float:
        return (self.ended or time.monotonic()) - self.started

    def poll(self) -> int | None:
        code = self.popen.poll()
        if code is not None and self.ended is None:
            self.ended = time.monotonic()
        return code

    def wait(self, timeout: float = 180.0) -> int:
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"devflow {' '.join(self.args)} did not end within "
                                 f"{timeout:.0f}s\n{self.tail()}") from None
        self.poll()
        return code

    def kill(self, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def stdout(self) -> str:
        return self.out.read_text(encoding="utf-8", errors="replace") if self.out.exists() else ""

    def stderr(self) -> str:
        return self.err.read_text(encoding="utf-8", errors="replace") if self.err.exists() else ""

    def json(self) -> Any:
        return json.loads(self.stdout())

    def tail(self, chars: int = 3000) -> str:
        return (f"exit {self.popen.returncode}\nstdout:\n{self.stdout()[-chars:]}\n"
                f"stderr:\n{self.stderr()[-chars:]}")


class Devflow:
    """The real ``devflow`` command against one test's database, home and workspace."""

    def __init__(self, settings: Settings, directory: Path, *, lease: float = 2.0,
                 max_recoveries: int = 20, database_url: str | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.logs = directory / "proc-logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.base_env = {k: v for k, v in os.environ.items() if not k.startswith("DEVFLOW_")}
        self.base_env.update({
            "DEVFLOW_HOME": str(settings.home),
            "DEVFLOW_DATABASE_URL": database_url or settings.database_url,
            "DEVFLOW_WORKSPACE": str(settings.workspace), "DEVFLOW_ACTOR": "tester",
            "DEVFLOW_LOG_FORMAT": "json", "DEVFLOW_LEASE_SECONDS": f"{lease:g}",
            "DEVFLOW_MAX_RECOVERIES": str(max_recoveries)})
        self.base_env.update(env or {})
        self.lease = lease
        self.procs: list[Proc] = []
        self._count = 0
        self._app: App | None = None

    # -- reading the database in this process -----------------------------------------------
    @property
    def app(self) -> App:
        if self._app is None:
            self._app = App(self.settings)
        return self._app

    def run_of(self, run_id: str) -> model.Run:
        return self.app.store.runs.get(run_id)

    def events(self, run_id: str) -> list[model.Event]:
        return all_events(self.app, run_id)

    def types(self, run_id: str) -> list[str]:
        return [e.type for e in self.events(run_id)]

    def pending(self, run_id: str | None = None) -> list[model.Approval]:
        return self.app.store.approvals.find(pending=True, run_id=run_id)

    # -- processes --------------------------------------------------------------------------
    def spawn(self, *args: str, env: Mapping[str, str] | None = None,
              name: str | None = None) -> Proc:
        self._count += 1
        label = name or args[0]
        stem = self.logs / f"{self._count:04d}-{label}"
        out, err = stem.with_suffix(".out"), stem.with_suffix(".err")
        full_env = {**self.base_env, **(env or {})}
        popen: subprocess.Popen[bytes] | Forked
        if os.environ.get("DEVFLOW_TEST_CLI") == "spawn":
            with open(out, "wb") as stdout, open(err, "wb") as stderr:
                popen = subprocess.Popen([sys.executable, "-m", "devflow.cli.main", *args],
                                         stdin=subprocess.DEVNULL, stdout=stdout,
                                         stderr=stderr, env=full_env, cwd=self.logs)
        else:
            popen = cli_fork.shared().spawn(tuple(args), full_env, self.logs, out, err)
        proc = Proc(label, tuple(args), popen, out, err)
        self.procs.append(proc)
        return proc

    def run(self, *args: str, env: Mapping[str, str] | None = None, name: str | None = None,
            check: int | Iterable[int] | None = 0, timeout: float = 180.0) -> Proc:
        """Run a command to its end; with ``check``, its exit code must be that (or in it)."""
        proc = self.spawn(*args, env=env, name=name)
        code = proc.wait(timeout)
        if check is not None:
            wanted = {check} if isinstance(check, int) else set(check)
            assert code in wanted, (f"devflow {' '.join(args)} exited {code}, wanted "
                                    f"{sorted(wanted)}\n{proc.tail()}")
        return proc

    def crash(self, point: str, marker: Path, *args: str, name: str | None = None) -> Proc:
        """Run a command that must kill itself with SIGKILL at ``point``."""
        marker.unlink(missing_ok=True)
        proc = self.run(*args, env={"DEVFLOW_CRASH_AT": point,
                                    "DEVFLOW_CRASH_MARKER": str(marker)},
                        name=name, check=SIGKILLED)
        text = marker.read_text(encoding="utf-8").split()
        assert text == [point, str(proc.pid)], f"crash marker says {text}"
        return proc

    def paused(self, point: str, *args: str, name: str | None = None) -> Proc:
        """Start a command that stops itself (SIGSTOP) at ``point`` (``devflow.faults``);
        return once it is stopped there, learnt from ``waitpid`` (the fork server's, or
        this process's under ``DEVFLOW_TEST_CLI=spawn``): no sleep, no polling.
        The caller SIGKILLs it, or SIGCONTs it when done."""
        marker = self.logs / f"{self._count + 1:04d}-paused.marker"
        proc = self.spawn(*args, env={"DEVFLOW_PAUSE_AT": point,
                                      "DEVFLOW_PAUSE_MARKER": str(marker)}, name=name)
        if isinstance(proc.popen, Forked):
            stopped = proc.popen.wait_stopped()
        else:
            _, status = os.waitpid(proc.pid, os.WUNTRACED)
            stopped = os.WIFSTOPPED(status)
            if not stopped:  # it ended (and was reaped here)
                proc.popen.returncode = os.waitstatus_to_exitcode(status)
        if not stopped:  # say how it ended
            proc.ended = time.monotonic()
            raise AssertionError(f"devflow {' '.join(args)} ended with {proc.popen.returncode}"
                                 f" before it reached {point}\n{proc.tail()}")
        text = marker.read_text(encoding="utf-8").split()
        assert text == [point, str(proc.pid)], f"pause marker says {text}"
        return proc

    def sweep(self) -> list[dict[str, Any]]:
        actions: list[dict[str, Any]] = self.run("sweep", "--json").json()["actions"]
        return actions

    def start(self, repo: Path, run_id: str, *extra: str, base: str = "main",
              template: str = "development@1", detach: bool = True) -> Proc:
        return self.run("run", "start", "--repo", str(repo), "--base", base, "--template",
                        template, "--objective", "Add a farewell function.", "--run-id", run_id,
                        *BINDS, *DEV_SCENARIOS, *extra, *(["--detach"] if detach else []),
                        "--json", name="start")

    def worker_once(self, *, check: int | Iterable[int] | None = 0,
                    env: Mapping[str, str] | None = None) -> Proc:
        return self.run("worker", "--once", "--poll", "0.2", "--json", check=check, env=env,
                        name="worker")

    def approve(self, run_id: str, approval_id: int, *, drive: bool = True,
                check: int | Iterable[int] | None = 0,
                env: Mapping[str, str] | None = None) -> Proc:
        """Approve with the stable token of this approval, so a retry never decides twice."""
        return self.run("decide", run_id, "approve", "--approval", str(approval_id), "--token",
                        token_for(approval_id), "--json", *([] if drive else ["--no-drive"]),
                        check=check, env=env, name="decide")

    def lease_gone(self, run_id: str) -> bool:
        """The run's lease expired or was released: a sweep or a worker may act now."""
        run = self.run_of(run_id)
        return run.lease_owner is None or run_id in self.app.store.leases.expired()

    def wait_lease_gone(self, run_id: str, timeout: float = 60.0) -> None:
        wait_until(lambda: self.lease_gone(run_id), f"the lease of {run_id} to expire", timeout)

    def settle(self, run_id: str, *, approve: bool = True, rounds: int = 30) -> model.Run:
        """Sweep, drive and approve until the run is terminal with its report."""
        for _ in range(rounds):
            run = self.run_of(run_id)
            if run.state in TERMINAL:
                if run.report_status is not None:
                    return run
                self.sweep()
            elif run.lease_owner is not None:
                self.wait_lease_gone(run_id)
                self.sweep()
            elif run.state is RunState.AWAITING_APPROVAL:
                pending = self.pending(run_id)
                assert pending, f"run {run_id} awaits approval but has no pending request"
                if not approve:
                    return run
                self.approve(run_id, pending[0].id, check=(0, 1))
            elif run.state in RUNNABLE:
                self.worker_once(check=(0, 1))
            else:
                raise AssertionError(f"run {run_id} is {run.state}: nothing here moves it")
        raise AssertionError(f"run {run_id} did not settle in {rounds} rounds: "
                             f"{self.run_of(run_id).state}")

    def close(self) -> None:
        """Kill and reap every process this test started; close the reader."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill(signal.SIGCONT)
                proc.kill(signal.SIGKILL)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(30)
        if self._app is not None:
            self._app.close()
            self._app = None

    def timings(self) -> dict[str, str]:
        """How long each kind of process took: count, mean and max seconds."""
        kinds: dict[str, list[float]] = {}
        for proc in self.procs:
            if proc.ended is not None:
                kinds.setdefault(proc.name.split("-")[0], []).append(proc.seconds)
        return {k: f"{len(v)} x {sum(v) / len(v):.1f}s (max {max(v):.1f}s)"
                for k, v in sorted(kinds.items())}

    def outputs(self) -> Iterable[tuple[Proc, str]]:
        for proc in self.procs:
            yield proc, proc.stdout() + proc.stderr()


def token_for(approval_id: int) -> str:
    return f"approve-{approval_id}"


def agents_of(directory: Path) -> list[psutil.Process]:
    """Live scripted agents whose script lies under ``directory`` (this test's workspace)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            argv = proc.info["cmdline"] or []
            if any(a.endswith("scripted_agent.py") for a in argv) \
                    and any(str(directory) in a for a in argv) \
                    and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def pid_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# -- reading runs back --------------------------------------------------------------------
def all_events(app: App, run_id: str) -> list[model.Event]:
    events: list[model.Event] = []
    while True:
        batch = app.store.events.after(run_id, events[-1].seq if events else 0)
        if not batch:
            return events
        events += batch


_ACCEPTS = ("approval.requested", "phase.completed", "phase.skipped")


@dataclass
class RunAudit:
    """What one run's history says about the guarantees; every list should be empty."""

    run_id: str
    state: str
    recoveries: int
    lost: bool
    event_gaps: list[str] = field(default_factory=list)
    duplicate_phase_executions: list[str] = field(default_factory=list)
    duplicate_decisions: list[str] = field(default_factory=list)
    report_problems: list[str] = field(default_factory=list)
    open_invocations: list[str] = field(default_factory=list)
    #: checkpoint commits on the run branch that no accepted attempt accounts for
    stray_commits: list[str] = field(default_factory=list)
    #: phase -> agent invocations that ran to exit 0 (outcome ok), for the figures
    ok_invocations: dict[str, int] = field(default_factory=dict)
    interrupted: int = 0

    @property
    def problems(self) -> dict[str, list[str]]:
        found = {"event_gaps": self.event_gaps,
                 "duplicate_phase_executions": self.duplicate_phase_executions,
                 "duplicate_decisions": self.duplicate_decisions,
                 "report_problems": self.report_problems,
                 "open_invocations": self.open_invocations,
                 "stray_commits": self.stray_commits}
        if self.lost:
            found["lost"] = [f"{self.run_id} is {self.state}"]
        return {k: v for k, v in found.items() if v}


def audit_run(app: App, run_id: str) -> RunAudit:
    store = app.store
    run = store.runs.get(run_id)
    events = all_events(app, run_id)
    waiting = (run.state is RunState.AWAITING_APPROVAL and run.lease_owner is None
               and bool(store.approvals.find(pending=True, run_id=run_id)))
    audit = RunAudit(run_id, str(run.state), run.recoveries,
                     lost=run.state not in TERMINAL and not waiting)
    _audit_events(audit, run, events)
    _audit_phases(audit, app, run, events)
    _audit_decisions(audit, app, events)
    _audit_branch(audit, app, run)
    if run.state in TERMINAL:
        audit.report_problems += report_problems(run)
        written = [e for e in events if e.type == "report.written"]
        if len(written) != 1:
            audit.report_problems.append(f"{run_id}: report.written recorded {len(written)} "
                                         "times")
    return audit


def _audit_events(audit: RunAudit, run: model.Run, events: list[model.Event]) -> None:
    """Event numbers: 1..n, no gap, no repeat, and the run's counter says n."""
    seqs = [e.seq for e in events]
    if seqs != list(range(1, len(seqs) + 1)) or run.last_seq != len(seqs):
        missing = sorted(set(range(1, max([*seqs, run.last_seq]) + 1)) - set(seqs))
        repeated = [s for s, n in Counter(seqs).items() if n > 1]
        audit.event_gaps.append(f"{run.id}: missing {missing[:20]}, repeated {repeated[:20]}, "
                                f"last_seq {run.last_seq}, {len(seqs)} events")


def _audit_phases(audit: RunAudit, app: App, run: model.Run,
                  events: list[model.Event]) -> None:
    """No phase runs its agent again once it was accepted (its gate opened or it completed)
    unless a person requested changes: counted from the events and from the rows."""
    accepted: dict[str, bool] = {}
    changes: Counter[str] = Counter()
    for e in events:
        key = e.phase or ""
        if e.type in _ACCEPTS:
            accepted[key] = True
        elif e.type == "phase.changes_requested":
            accepted[key] = False
            changes[key] += 1
        elif e.type in ("phase.started", "agent.started") and accepted.get(key):
            audit.duplicate_phase_executions.append(
                f"{run.id}/{key}: {e.type} (seq {e.seq}, attempt {e.payload.get('attempt')}) "
                "after the phase was accepted")
        elif e.type == "phase.interrupted":
            audit.interrupted += 1
    store = app.store
    invocations = [i for i in store.runs.invocations(run.id) if i.kind == "agent"]
    artifacts = store.runs.artifacts(run.id)
    for phase in store.runs.phases(run.id):
        mine = [i for i in invocations if i.phase_key == phase.key]
        ok = [i for i in mine if i.outcome == "ok"]
        audit.ok_invocations[phase.key] = len(ok)
        kept = sorted({a.attempt for a in artifacts if a.phase_key == phase.key})
        if len(kept) > 1 + changes[phase.key]:
            audit.duplicate_phase_executions.append(
                f"{run.id}/{phase.key}: artifacts accepted for attempts {kept}")
        if kept and not changes[phase.key]:
            again = [i.attempt for i in mine if i.attempt > kept[-1]]
            ran = [i for i in ok if i.attempt == kept[-1]]
            if again or len(ran) != 1:
                audit.duplicate_phase_executions.append(
                    f"{run.id}/{phase.key}: attempt {kept[-1]} was accepted with {len(ran)} "
                    f"agent(s) that exited 0; agents of later attempts: {again}")
    if run.state in TERMINAL:
        audit.open_invocations += [f"{run.id}: invocation {i.id} ({i.phase_key} attempt "
                                   f"{i.attempt}) never ended" for i in invocations
                                   if i.ended_at is None]


def _audit_decisions(audit: RunAudit, app: App, events: list[model.Event]) -> None:
    """One decision per resolved request, none on a request nobody resolved, one request
    per gate and round."""
    resolved = Counter(e.payload.get("approval_id") for e in events
                       if e.type == "approval.resolved")
    rounds: Counter[tuple[str, int, str]] = Counter()
    for approval in app.store.approvals.find(run_id=audit.run_id):
        rounds[(approval.phase_key, approval.round, approval.gate)] += 1
        decisions = app.store.approvals.decisions(approval_id=approval.id)
        decided = approval.state in (ApprovalState.APPROVED, ApprovalState.REJECTED,
                                     ApprovalState.CHANGES_REQUESTED)
        if len(decisions) != (1 if decided else 0) or resolved[approval.id] > 1:
            audit.duplicate_decisions.append(
                f"{audit.run_id}: approval {approval.id} ({approval.gate}) is {approval.state} "
                f"with {len(decisions)} decision(s) {[d.client_token for d in decisions]} and "
                f"{resolved[approval.id]} approval.resolved event(s)")
    audit.duplicate_decisions += [f"{audit.run_id}: gate {g} of {p} round {r} opened {n} times"
                                  for (p, r, g), n in rounds.items() if n > 1]


def _audit_branch(audit: RunAudit, app: App, run: model.Run) -> None:
    """The run branch holds one checkpoint per accepted attempt, in phase order: what an
    interrupted attempt committed was reset away, nothing was committed twice."""
    if not run.base_sha or run.state in (RunState.FAILED, RunState.ABORTED):
        return  # a run that failed mid-attempt keeps what that attempt committed
    repo = Path(run.repo)
    found = git.run(["rev-parse", "--verify", "--quiet", f"refs/heads/{run.branch}"], repo,
                    check=False)
    if found.returncode != 0:
        return  # killed before its worktree was made, and never driven since
    subjects = git.out(["log", "--reverse", "--format=%s", f"{run.base_sha}..{run.branch}"],
                       repo).splitlines()
    kept = {(a.phase_key, a.attempt) for a in app.store.runs.artifacts(run.id)}
    wanted = [f"devflow({p.key}): attempt {p.attempt}" for p in app.store.runs.phases(run.id)
              if (p.key, p.attempt) in kept and p.checkpoint_sha]
    if subjects != wanted:
        audit.stray_commits.append(f"{run.id}: the branch has {subjects}, the accepted "
                                   f"attempts are {wanted}")


def report_problems(run: model.Run) -> list[str]:
    if run.report_status is None:
        return [f"{run.id}: terminal ({run.state}) without a report"]
    path = Path(run.workspace) / "report.json"
    if not path.is_file() or not (Path(run.workspace) / "report.md").is_file():
        return [f"{run.id}: report_status {run.report_status} but no {path} (or report.md)"]
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        return [f"{run.id}: report.json is not JSON: {exc}"]
    problems = [f"{run.id}: report.json {p}" for p in schemas().validate(REPORT_SCHEMA, body)]
    if run.report_status != "written" or "final_report_compose_failed" in body.get(
            "unresolved", []):
        problems.append(f"{run.id}: the report is a stub ({run.report_status})")
    if body.get("run", {}).get("state") != str(run.state):
        problems.append(f"{run.id}: the report says {body.get('run', {}).get('state')}, "
                        f"the run is {run.state}")
    return problems


def figures(audits: Sequence[RunAudit]) -> dict[str, int]:
    """The five figures of the crash suite, and a few counts beside them."""
    return {
        "runs": len(audits),
        "runs_lost": sum(a.lost for a in audits),
        "duplicate_phase_executions": sum(len(a.duplicate_phase_executions) for a in audits),
        "duplicate_decisions": sum(len(a.duplicate_decisions) for a in audits),
        "terminal_runs_without_report": sum(bool(a.report_problems) for a in audits),
        "event_gaps": sum(len(a.event_gaps) for a in audits),
        "open_invocations_in_terminal_runs": sum(len(a.open_invocations) for a in audits),
        "stray_checkpoint_commits": sum(len(a.stray_commits) for a in audits),
        "completed": sum(a.state == "completed" for a in audits),
        "failed": sum(a.state == "failed" for a in audits),
        "awaiting_approval": sum(a.state == "awaiting_approval" for a in audits),
        "recoveries": sum(a.recoveries for a in audits),
        "interrupted_attempts": sum(a.interrupted for a in audits),
    }


ZERO = ("runs_lost", "duplicate_phase_executions", "duplicate_decisions",
        "terminal_runs_without_report", "event_gaps", "open_invocations_in_terminal_runs",
        "stray_checkpoint_commits")


def publish(name: str, values: Mapping[str, Any], directory: Path) -> None:
    """Print the figures (pytest -s shows them) and keep them in the test's directory."""
    text = json.dumps({"test": name, **values}, sort_keys=False, default=str)
    print(f"\nCRASH FIGURES {text}", flush=True)
    (directory / "figures.json").write_text(text + "\n", encoding="utf-8")


def assert_clean(audits: Sequence[RunAudit]) -> None:
    problems = {a.run_id: a.problems for a in audits if a.problems}
    assert not problems, json.dumps(problems, indent=1)
