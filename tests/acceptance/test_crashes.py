"""The crash suite (DESIGN.md §3.3 "Nothing is lost in a crash", §3.4 "One writer per run").

Real ``devflow`` processes, killed with a real SIGKILL: at named points of the code
(``DEVFLOW_CRASH_AT``, see ``devflow.faults``), from outside while an agent works, by
their own agent, by a chaos loop, by SIGSTOP until their lease ran out, and by
``pg_terminate_backend`` on their database connections. After each, ``devflow sweep``
and a driver must bring every run to a terminal state with a report (or to its gate),
and the history must show no gap in the events, no completed phase whose agent ran
again, and no decision recorded twice. The figures are printed (run pytest with -s).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import filelock
import psutil
import psycopg
import pytest

from devflow import git
from devflow.errors import Code, DevflowError
from devflow.model import utcnow
from devflow.settings import Settings
from devflow.states import RUNNABLE, TERMINAL, RunState
from tests.acceptance.crash_support import (
    BINDS,
    DEV_SCENARIOS,
    SIGKILLED,
    ZERO,
    Devflow,
    Proc,
    agents_of,
    assert_clean,
    audit_run,
    figures,
    pid_alive,
    publish,
    wait_until,
)
from tests.conftest import make_repo

pytestmark = pytest.mark.slow

MakeDevflow = Callable[..., Devflow]


@pytest.fixture
def make_devflow(tmp_path: Path) -> Iterator[MakeDevflow]:
    """Devflow command runners for this test; every process they started is killed and
    reaped at the end, and no scripted agent of this test may survive it."""
    made: list[Devflow] = []

    def make(settings: Settings, **kw: Any) -> Devflow:
        runner = Devflow(settings, tmp_path / f"df{len(made)}", **kw)
        made.append(runner)
        return runner

    yield make
    for runner in made:
        runner.close()
    deadline = time.monotonic() + 15
    leftover = agents_of(tmp_path)
    while leftover and time.monotonic() < deadline:
        time.sleep(0.2)
        leftover = agents_of(tmp_path)
    for proc in leftover:
        proc.kill()
    assert not leftover, f"scripted agents outlived the test: {[p.pid for p in leftover]}"


@pytest.fixture
def pg_settings(pg_url: str, home: Path, tmp_path: Path) -> Settings:
    return Settings.load(env={}, home=str(home), database_url=pg_url,
                         workspace=str(tmp_path / "ws"), actor="tester")


def _db(settings: Settings) -> str:
    return "sqlite" if settings.database_url.startswith("sqlite") else "postgresql"


# -- 1. kill points -------------------------------------------------------------------------
@dataclass(frozen=True)
class Kill:
    """Where the process dies: a named fault point, or "agent" (SIGKILL from outside while
    a slow agent works); and which process it is: the starter, the first worker, the
    worker after the spec was approved, the approver, or the worker that ends the run."""

    point: str
    stage: str
    scenarios: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.point}-in-{self.stage}"


KILLS = [
    Kill("agent", "first_drive", ("--scenario", "spec=hang-then-ok")),
    Kill("agent_started", "first_drive"),
    Kill("agent_exited", "first_drive"),
    Kill("artifact_checked", "first_drive"),
    Kill("artifact_stored", "first_drive"),
    Kill("gate_opened", "first_drive"),
    Kill("phase_accepted", "first_drive"),
    Kill("checkpoint_committed", "after_spec"),
    Kill("phase_accepted", "after_spec"),
    Kill("decision_recorded", "decide_spec"),
    Kill("agent_started", "decide_drive"),
    Kill("report_composed", "finish"),
    Kill("run_inserted", "start"),
]
#: What the sweep finds of the interrupted attempt (phase.interrupted): its artifact, and
#: the worktree against the last checkpoint, where that does not depend on timing.
_FOUND = {"agent": ("absent", "clean"), "agent_exited": ("present", "dirty"),
          "artifact_checked": ("present", "dirty"), "artifact_stored": ("present", "dirty"),
          "gate_opened": ("present", "dirty"), "checkpoint_committed": ("present", "dirty")}
#: Kill points where no attempt was cut short after its agent exited 0: the agent was still
#: at work, or the attempt had been accepted. Elsewhere that agent's run may be recorded
#: beside the one of the attempt that replaced it.
_NO_SECOND_OK = {"agent", "agent_started", "phase_accepted", "decision_recorded",
                 "report_composed", "run_inserted"}


def _to_gate(df: Devflow, run_id: str, gate: str) -> int:
    """Drive (a worker, --once) until the run waits at ``gate``; the approval's id."""
    for _ in range(5):
        if df.run_of(run_id).lease_owner is not None:  # a drive starved past its lease
            df.wait_lease_gone(run_id)
            df.sweep()
        df.worker_once()
        view = df.app.view(run_id)
        if view.gate is not None:
            assert view.gate.gate == gate, f"run {run_id} is at {view.gate.gate}, not {gate}"
            return view.gate.id
    raise AssertionError(f"run {run_id} is {df.run_of(run_id).state}, not at gate {gate}")


def _crash(df: Devflow, kill: Kill, repo: Path, run_id: str, marker: Path) -> Proc:
    """Bring the run to the kill's stage and run the process that dies there."""
    worker = ("worker", "--once", "--poll", "0.2")
    if kill.stage == "start":
        proc = df.crash(kill.point, marker, "run", "start", "--repo", str(repo), "--base",
                        "main", "--template", "development@1", "--objective", "x",
                        "--run-id", run_id, *BINDS, *DEV_SCENARIOS, "--json", name="start")
        run = df.run_of(run_id)
        assert run.state is RunState.BOUND and not (Path(run.worktree) / ".git").exists()
        return proc
    df.start(repo, run_id, *kill.scenarios)
    if kill.point == "agent":
        return _kill_during_agent(df, run_id)
    if kill.stage == "first_drive":
        return df.crash(kill.point, marker, *worker, name="worker")
    approval = _to_gate(df, run_id, "spec_review")
    if kill.stage == "after_spec":
        df.approve(run_id, approval, drive=False)
        return df.crash(kill.point, marker, *worker, name="worker")
    if kill.stage in ("decide_spec", "decide_drive"):
        # decide_spec dies right after the decision; decide_drive while it drives the run on.
        proc = df.crash(kill.point, marker, "decide", run_id, "approve", "--approval",
                        str(approval), "--token", f"approve-{approval}", "--json",
                        name="decide")
        # The decision landed before the kill: the same token again is a replay (which may
        # drive the run on when nobody holds it).
        replay = df.approve(run_id, approval).json()
        assert replay["replayed"] is True, replay
        assert replay["decision"]["token"] == f"approve-{approval}"
        return proc
    assert kill.stage == "finish"
    df.approve(run_id, approval, drive=False)
    df.approve(run_id, _to_gate(df, run_id, "final_review"), drive=False)
    proc = df.crash(kill.point, marker, *worker, name="worker")
    run = df.run_of(run_id)  # ended (which drops the lease), its report half-written
    assert run.state is RunState.COMPLETED and run.report_status is None
    assert (Path(run.workspace) / "report.md").exists()
    assert not (Path(run.workspace) / "report.json").exists()
    return proc


@pytest.mark.parametrize("kill", KILLS, ids=[k.id for k in KILLS])
def test_kill_point_then_sweep_and_drive(kill: Kill, settings: Settings, tmp_path: Path,
                                         make_devflow: MakeDevflow) -> None:
    started = time.monotonic()
    df = make_devflow(settings)
    run_id = f"crash-{kill.point.replace('_', '-')}"
    crashed = _crash(df, kill, make_repo(tmp_path / "repo"), run_id, tmp_path / "crash.marker")
    assert crashed.returncode == SIGKILLED
    holds_lease = kill.stage not in ("decide_spec", "finish")

    # Two sweeps at once: a sweep is safe beside another; one of them recovers the run.
    df.wait_lease_gone(run_id)
    sweeps = [df.spawn("sweep", "--json", name="sweep") for _ in range(2)]
    for sweep in sweeps:
        assert sweep.wait() == 0, sweep.tail()
    actions = [a for p in sweeps for a in p.json()["actions"] if a["run_id"] == run_id]
    kinds = Counter(a["action"] for a in actions)
    if holds_lease:
        assert kinds["recovered"] == 1, actions
        recovered = next(a for a in actions if a["action"] == "recovered")
        assert all(a["agent"] in ("gone", "killed") for a in recovered["agents"]), actions
    elif kill.stage == "finish":
        assert set(kinds) == {"report_written"}, actions
    else:
        assert kinds == {}, actions

    interrupted = [e.payload for e in df.events(run_id) if e.type == "phase.interrupted"]
    if kill.point in _FOUND:
        assert [(i["artifact"], i["worktree"]) for i in interrupted] == [_FOUND[kill.point]]
        assert all(a["agent"] == "gone" for i in interrupted for a in i["agents"])

    final = df.settle(run_id)
    assert final.state is RunState.COMPLETED, (final.state, final.failure_code,
                                                 final.failure_reason)
    audit = audit_run(df.app, run_id)
    numbers = figures([audit])
    publish(f"kill {kill.id} on {_db(settings)}", {
        **numbers, "ok_invocations_per_phase": audit.ok_invocations,
        "sweeps": dict(kinds), "seconds": round(time.monotonic() - started, 1)}, tmp_path)
    assert_clean([audit])
    assert set(audit.ok_invocations) == {"spec", "plan", "implement", "review"}
    # Only the attempt the kill interrupted ran again, and only when it was not accepted
    # (unless a drive starved past its lease on a busy machine: one more recovery).
    if final.recoveries == int(holds_lease):
        ran = sum(audit.ok_invocations.values())
        assert ran == 4 if kill.point in _NO_SECOND_OK else 4 <= ran <= 5, audit.ok_invocations
    if kill.point == "phase_accepted":  # accepted before the kill: its agent never ran again
        assert audit.ok_invocations["spec" if kill.stage == "first_drive" else "plan"] == 1


def _kill_during_agent(df: Devflow, run_id: str) -> Proc:
    """Start a worker, SIGKILL it while its agent works (the agent of the first attempt
    works until stopped; the worker is frozen at agent_started); its agent dies with it."""
    worker = df.paused("agent_started", "worker", "--once", "--poll", "0.2", "--json",
                       name="worker")
    invocation = _agent(df, run_id)
    assert invocation.pid and invocation.pgid == invocation.pid
    assert pid_alive(invocation.pid) and os.getpgid(invocation.pid) == invocation.pgid
    worker.kill()
    assert worker.wait(60) == SIGKILLED
    _dies(invocation.pid, "the agent to die with its worker (PR_SET_PDEATHSIG)")
    return worker


def _agent(df: Devflow, run_id: str, attempt: int = 1) -> Any:
    """The agent of the attempt, recorded before the fault point agent_started."""
    [invocation] = [i for i in df.app.store.runs.invocations(run_id)
                    if i.attempt == attempt and i.pid]
    return invocation


def _dies(pid: int, what: str, timeout: float = 10) -> None:
    with contextlib.suppress(psutil.NoSuchProcess):
        try:
            psutil.Process(pid).wait(timeout)
        except psutil.TimeoutExpired:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}") from None


def _first_agent(df: Devflow, run_id: str, attempt: int = 1) -> Any:
    return wait_until(lambda: next((i for i in df.app.store.runs.invocations(run_id)
                                    if i.attempt == attempt and i.pid), None),
                      f"the agent of attempt {attempt} to start", interval=0.02)


# -- 3. a live run beside sweeps ----------------------------------------------------------------
def test_live_run_with_a_slow_agent_is_untouched_by_concurrent_sweeps(
        settings: Settings, tmp_path: Path, make_devflow: MakeDevflow) -> None:
    # The agent works twice as long as the lease: only the heartbeat keeps the run held.
    df = make_devflow(settings, lease=3.0)
    repo = make_repo(tmp_path / "repo")
    run_id = "live"
    df.start(repo, run_id, "--scenario", "spec=slow:6")
    worker = df.spawn("worker", "--once", "--poll", "0.2", "--json", name="worker")
    agent = _first_agent(df, run_id)
    working_since = time.monotonic()
    # Two sweeps in flight all the time, until the agent is done.
    sweeps: list[Proc] = []
    while pid_alive(agent.pid):
        if sum(p.poll() is None for p in sweeps) < 2:
            sweeps.append(df.spawn("sweep", "--json", name="sweep"))
        time.sleep(0.05)
    worked_until = time.monotonic()
    for sweep in sweeps:
        assert sweep.wait() == 0, sweep.tail()
    assert worker.wait() == 0, worker.tail()

    during = [p for p in sweeps if p.ended is not None and p.ended < worked_until]
    past_the_lease = [p for p in during if p.ended and p.ended > working_since + df.lease]
    touched = [a for p in sweeps for a in p.json()["actions"] if a["run_id"] == run_id]
    types = df.types(run_id)
    spec = [i for i in df.app.store.runs.invocations(run_id) if i.phase_key == "spec"]
    run = df.run_of(run_id)
    publish("live run beside sweeps on " + _db(settings), {
        "sweeps": len(sweeps), "sweeps_done_while_the_agent_worked": len(during),
        "of_them_past_the_first_lease": len(past_the_lease),
        "actions_on_the_run": len(touched), "recoveries": run.recoveries}, tmp_path)
    assert during and past_the_lease, "no sweep ran while the agent worked"
    assert touched == []
    assert "phase.interrupted" not in types and "run.recovered" not in types
    assert [(i.attempt, i.outcome, i.exit_code) for i in spec] == [(1, "ok", 0)]
    assert run.state is RunState.AWAITING_APPROVAL and run.recoveries == 0
    assert run.lease_owner is None  # released at the gate
    assert_clean([audit_run(df.app, run_id)])


# -- 4. a stale worker ----------------------------------------------------------------------
def test_stale_worker_writes_nothing_after_another_took_its_run_over(
        settings: Settings, tmp_path: Path, make_devflow: MakeDevflow) -> None:
    """SIGSTOP a worker mid-phase past its lease; the sweep kills its agent (a process
    group of its own) and another worker takes over; SIGCONT: it writes nothing more."""
    df = make_devflow(settings, lease=3.0)
    repo = make_repo(tmp_path / "repo")
    run_id = "stale"
    # The agent of attempt 1 works until stopped; the worker freezes once it started it.
    df.start(repo, run_id, "--scenario", "spec=hang-then-ok")
    stale = df.paused("agent_started", "worker", "--once", "--poll", "0.2", "--json",
                      name="worker-stale")
    first = _agent(df, run_id)
    assert first.pgid == first.pid
    assert os.getpgid(first.pid) == first.pid != os.getpgid(stale.pid)  # a group of its own
    stale_lease = df.run_of(run_id)
    try:
        df.wait_lease_gone(run_id)
        assert pid_alive(first.pid), "the agent died with its stopped worker"

        actions = [a for a in df.sweep() if a["run_id"] == run_id]
        assert [a["action"] for a in actions] == ["recovered"], actions
        assert [a["agent"] for a in actions[0]["agents"]] == ["killed"], actions
        assert not pid_alive(first.pid)
        recovered_at = max(e.seq for e in df.events(run_id) if e.type == "run.recovered")

        fresh = df.paused("agent_started", "worker", "--once", "--poll", "0.2", "--json",
                          name="worker-fresh")
        second = _agent(df, run_id, attempt=2)
        taken = df.run_of(run_id)
        assert taken.lease_owner != stale_lease.lease_owner
        assert taken.lease_fence > stale_lease.lease_fence
    finally:
        stale.kill(signal.SIGCONT)
    assert stale.wait(120) == 0, stale.tail()
    assert "lease_lost" in stale.stderr(), stale.tail()
    # It stopped its own drive and left the new attempt alone (whose worker is frozen).
    assert _agent(df, run_id, attempt=2) == second
    assert "agent.exited" not in df.types(run_id)
    fresh.kill(signal.SIGCONT)
    assert fresh.wait(120) == 0, fresh.tail()

    final = df.settle(run_id)
    events = df.events(run_id)
    after = [e for e in events if e.seq > recovered_at and e.phase == "spec"]
    spec = [i for i in df.app.store.runs.invocations(run_id) if i.phase_key == "spec"]
    completed = [e for e in events if e.type == "phase.completed" and e.phase == "spec"]
    publish("stale worker, taken over, on " + _db(settings), {
        "spec_invocations": [(i.attempt, i.outcome) for i in spec],
        "spec_events_after_recovery": [(e.type, e.payload.get("attempt")) for e in after]},
        tmp_path)
    # Nothing of attempt 1 after the takeover: the stale worker's writes were all fenced off.
    assert 1 not in {e.payload.get("attempt") for e in after}
    assert spec[0].reason and "sweep" in spec[0].reason
    # The phase's agent ran to completion once, in the attempt that completed the phase
    # (attempt 2, or a later one if the new worker itself starved past its lease).
    _interrupted_then_once_ok(spec, df.types(run_id))
    assert [e.payload["attempt"] for e in completed] == [spec[-1].attempt]
    assert final.state is RunState.COMPLETED
    assert_clean([audit_run(df.app, run_id)])


def test_stale_worker_resumed_before_any_sweep_kills_its_agent_and_writes_nothing(
        settings: Settings, tmp_path: Path, make_devflow: MakeDevflow) -> None:
    """SIGCONT before anybody swept: the worker finds its lease expired, terminates its own
    agent and stops without one more write; the sweep then recovers the attempt."""
    df = make_devflow(settings, lease=3.0)
    repo = make_repo(tmp_path / "repo")
    run_id = "stale-alone"
    df.start(repo, run_id, "--scenario", "spec=hang-then-ok")
    stale = df.paused("agent_started", "worker", "--once", "--poll", "0.2", "--json",
                      name="worker-stale")
    agent = _agent(df, run_id)
    try:
        wait_until(lambda: run_id in df.app.store.leases.expired(), "the lease to expire")
        before = df.events(run_id)
    finally:
        stale.kill(signal.SIGCONT)
    assert stale.wait(120) == 0, stale.tail()
    assert "lease_lost" in stale.stderr(), stale.tail()
    # it works until stopped: only the worker that lost its lease can have ended it
    assert not pid_alive(agent.pid), "the worker that lost its lease left its agent running"
    assert df.events(run_id) == before, "a worker wrote after its lease expired"
    held = df.run_of(run_id)
    assert held.lease_owner is not None and held.state is RunState.EXECUTING

    actions = [a for a in df.sweep() if a["run_id"] == run_id]
    assert [a["action"] for a in actions] == ["recovered"]
    assert [a["agent"] for a in actions[0]["agents"]] == ["gone"]
    final = df.settle(run_id)
    spec = [i for i in df.app.store.runs.invocations(run_id) if i.phase_key == "spec"]
    publish("stale worker, resumed first, on " + _db(settings), {
        "spec_invocations": [(i.attempt, i.outcome) for i in spec]}, tmp_path)
    _interrupted_then_once_ok(spec, df.types(run_id))
    assert final.state is RunState.COMPLETED
    assert_clean([audit_run(df.app, run_id)])


def _interrupted_then_once_ok(spec: list[Any], types: list[str]) -> None:
    """Attempts 1..n of the phase: all interrupted but the last, which ran to exit 0; one
    recovery (``run.recovered``) per interrupted attempt (n is 2 unless a drive starved
    past its lease; a recovery of a worker still alive is recorded, not counted in
    ``run.recoveries``)."""
    assert [i.attempt for i in spec] == list(range(1, len(spec) + 1))
    assert [i.outcome for i in spec] == ["interrupted"] * (len(spec) - 1) + ["ok"]
    assert len(spec) == types.count("run.recovered") + 1 >= 2


def test_lease_lost_while_the_agent_works_is_not_reported_as_a_crash(
        settings: Settings, tmp_path: Path, make_devflow: MakeDevflow) -> None:
    df = make_devflow(settings, lease=2.0)
    run_id = "lost-quietly"
    df.start(make_repo(tmp_path / "repo"), run_id, "--scenario", "spec=hang-then-ok")
    worker = df.paused("agent_started", "worker", "--once", "--poll", "0.2", "--json",
                       name="worker")
    try:
        wait_until(lambda: run_id in df.app.store.leases.expired(), "the lease to expire")
    finally:
        worker.kill(signal.SIGCONT)
    assert worker.wait(120) == 0, worker.tail()
    log = worker.stderr()
    assert "lease_lost" in log
    assert "drive_crashed" not in log and "internal_error" not in log, log[:2000]


# -- 5. an agent that always kills its worker ---------------------------------------------
def test_agent_that_always_kills_its_worker_fails_the_run_after_max_recoveries(
        settings: Settings, tmp_path: Path, make_devflow: MakeDevflow) -> None:
    df = make_devflow(settings, lease=2.0, max_recoveries=2)
    repo = make_repo(tmp_path / "repo")
    run_id = "crashy"
    df.start(repo, run_id, "--scenario", "spec=crash-worker")
    crashes, sweeps, sweep_killed = 0, 0, False
    for _ in range(12):
        run = df.run_of(run_id)
        if run.state in TERMINAL and run.report_status:
            break
        if run.lease_owner is not None and run.recoveries == 2 and not sweep_killed:
            # The sweep that fails the run dies while it writes the report; the next one
            # writes it.
            df.wait_lease_gone(run_id)
            df.crash("report_composed", tmp_path / "marker", "sweep", "--json", name="sweep")
            sweep_killed = True
            ended = df.run_of(run_id)
            assert ended.state is RunState.FAILED and ended.report_status is None
        elif run.lease_owner is not None or run.state in TERMINAL:
            df.wait_lease_gone(run_id)
            df.sweep()
            sweeps += 1
        else:
            df.worker_once(check=SIGKILLED)
            crashes += 1
    run = df.run_of(run_id)
    audit = audit_run(df.app, run_id)
    publish("crash-worker on " + _db(settings), {
        "worker_crashes": crashes, "sweeps": sweeps, "state": str(run.state),
        "failure": run.failure_code, "recoveries": run.recoveries}, tmp_path)
    assert run.state is RunState.FAILED
    assert run.failure_code == Code.PROCESS_RESTART_UNRECOVERED
    assert "max_recoveries is 2" in (run.failure_reason or "")
    assert (crashes, run.recoveries, sweep_killed) == (3, 3, True)
    assert df.types(run_id).count("run.recovered") == 3
    assert_clean([audit])


# -- 2. chaos: four workers, fifty runs, random SIGKILLs -------------------------------------
def _branches(tmp_path: Path, repos: int, per_repo: int) -> list[tuple[Path, str]]:
    """(repo, base) pairs: one active run per (repo, base) is the default limit."""
    targets = []
    for r in range(repos):
        repo = make_repo(tmp_path / f"repo{r}")
        for b in range(per_repo):
            name = "main" if b == 0 else f"base{b}"
            if b:
                git.run(["branch", name], repo)
            targets.append((repo, name))
    return targets


class Chaos:
    """Four workers, a chaos loop that SIGKILLs one of them every 1.5 to 3 s and starts
    another, a sweep every ~2 s, a test approver, and the runs started three at a time."""

    def __init__(self, df: Devflow, targets: list[tuple[Path, str]], seed: int) -> None:
        self.df = df
        self.rng = random.Random(seed)
        self.run_ids = [f"chaos-{i:02d}" for i in range(len(targets))]
        self.to_start = list(zip(self.run_ids, targets, strict=True))
        self.counts: Counter[str] = Counter()
        self.problems: list[str] = []
        self.serial = 0
        self.workers = [self._worker() for _ in range(4)]
        self.starting: list[Proc] = []
        self.deciding: dict[int, Proc] = {}
        self.decided: set[int] = set()
        self.sweeping: Proc | None = None
        self.next_kill = time.monotonic() + self.rng.uniform(1.5, 3)
        self.next_sweep = time.monotonic() + 2
        self.kill_budget = 30
        self.seen: dict[int, float] = {}  # worker pid -> when it was first seen registered

    def _worker(self) -> Proc:
        self.serial += 1
        return self.df.spawn("worker", "--concurrency", "3", "--poll", "0.2", "--grace", "5",
                             "--name", f"w{self.serial}", name=f"worker-{self.serial}")

    def _check(self, proc: Proc, wanted: tuple[int, ...] = (0,)) -> bool:
        code = proc.popen.returncode
        self.counts[f"{proc.name.split('-')[0]}_processes"] += 1
        if code not in wanted:
            self.problems.append(f"devflow {' '.join(proc.args)} exited {code}: "
                                 f"{proc.tail(800)}")
        return code in wanted

    def step(self) -> bool:
        """One turn of every actor; True once every run is terminal with its report."""
        now = time.monotonic()
        self._starts()
        self._chaos(now)
        self._sweep(now)
        self._approve()
        runs = self.df.app.runs(limit=500)
        return (not self.to_start and not self.starting and len(runs) == len(self.run_ids)
                and all(r.state in TERMINAL and r.report_status for r in runs))

    def _starts(self) -> None:
        for proc in [p for p in self.starting if p.poll() is not None]:
            self.starting.remove(proc)
            self._check(proc)
        while self.to_start and len(self.starting) < 3:
            run_id, (repo, base) = self.to_start.pop(0)
            # Agents that take a moment, so that kills fall on drives at work too.
            slow = ["--scenario", "implement=slow:1"]
            if len(self.to_start) % 2:
                slow += ["--scenario", "spec=slow:1"]
            self.starting.append(self.df.spawn(
                "run", "start", "--repo", str(repo), "--base", base, "--template",
                "development@1", "--objective", "chaos", "--run-id", run_id, *BINDS,
                *DEV_SCENARIOS, *slow, "--detach", "--json", name="start"))

    def _chaos(self, now: float) -> None:
        for i, proc in enumerate(self.workers):
            if proc.poll() is not None:  # a worker must never end by itself
                self._check(proc, wanted=())
                self.workers[i] = self._worker()
        if now < self.next_kill or self.counts["workers_killed"] >= self.kill_budget:
            return
        # Kill one that has been up (registered) for a moment: a worker killed while it
        # still boots on a busy machine would test nothing.
        for worker in self.df.app.workers():
            self.seen.setdefault(worker.pid, now)
        up = [i for i, proc in enumerate(self.workers)
              if now - self.seen.get(proc.pid, now) >= 2.0]
        owners = [r.lease_owner for r in self.df.app.runs(limit=500) if r.lease_owner]
        driving = [i for i in up
                   if any(f":{self.workers[i].pid}:" in o for o in owners)]
        if not up:
            return
        i = self.rng.choice(driving or up)  # a random one, of those at work if any
        victim = self.workers[i]
        victim.kill()
        assert victim.wait(60) == SIGKILLED
        self.counts["workers_killed"] += 1
        self.counts["kills_while_driving"] += bool(driving)
        self.workers[i] = self._worker()
        self.next_kill = now + self.rng.uniform(1.5, 3)

    def _sweep(self, now: float) -> None:
        if self.sweeping is not None and self.sweeping.poll() is not None:
            if self._check(self.sweeping):
                for action in self.sweeping.json()["actions"]:
                    self.counts[f"sweep_{action['action']}"] += 1
            self.sweeping = None
        if self.sweeping is None and now >= self.next_sweep:
            self.sweeping = self.df.spawn("sweep", "--json", name="sweep")
            self.next_sweep = now + 2

    def _approve(self) -> None:
        for approval_id, proc in list(self.deciding.items()):
            if proc.poll() is not None:
                del self.deciding[approval_id]
                if self._check(proc):
                    self.decided.add(approval_id)
        for approval in self.df.pending():
            if approval.id in self.decided or approval.id in self.deciding \
                    or len(self.deciding) >= 3:
                continue
            self.deciding[approval.id] = self.df.spawn(
                "decide", approval.run_id, "approve", "--approval", str(approval.id),
                "--token", f"approve-{approval.id}", "--no-drive", "--json", name="decide")

    def stop(self) -> None:
        # A worker installs its signal handlers before it registers; one the chaos loop
        # has just started may still be importing, and SIGTERM would kill it outright.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            registered = {w.pid for w in self.df.app.workers()}
            if all(p.pid in registered or p.poll() is not None for p in self.workers):
                break
            time.sleep(0.1)
        for proc in self.workers:
            proc.kill(signal.SIGTERM)
        for proc in self.workers:
            proc.wait(60)
            self._check(proc)
        if self.sweeping is not None:
            self.sweeping.wait()
            self._check(self.sweeping)
        for approval_id, proc in self.deciding.items():
            proc.wait()
            if self._check(proc):
                self.decided.add(approval_id)


@pytest.mark.postgresql_only
@pytest.mark.timeout(1200)
def test_chaos_fifty_runs_four_workers_random_kills(pg_settings: Settings, tmp_path: Path,
                                                   make_devflow: MakeDevflow) -> None:
    started = time.monotonic()
    df = make_devflow(pg_settings, lease=3.0, max_recoveries=1000)
    chaos = Chaos(df, _branches(tmp_path, repos=10, per_repo=5), seed=1123)
    deadline = time.monotonic() + 900
    settled = False
    while not settled and time.monotonic() < deadline:
        settled = chaos.step()
        time.sleep(0.2)
    chaos.stop()

    audits = [audit_run(df.app, run_id) for run_id in chaos.run_ids]
    numbers = figures(audits)
    unfinished = {r.id: f"{r.state} {r.failure_code or ''} {r.failure_reason or ''}".strip()
                  for r in df.app.runs(limit=500) if r.state is not RunState.COMPLETED}
    publish("chaos on postgresql", {**numbers, **dict(sorted(chaos.counts.items())),
                                    "not_completed": unfinished,
                                    "decisions": len(chaos.decided),
                                    "process_problems": len(chaos.problems),
                                    "seconds": round(time.monotonic() - started, 1),
                                    "process_seconds": df.timings()}, tmp_path)
    assert settled, f"the runs did not settle in {deadline - started:.0f}s: {numbers}"
    assert not chaos.problems, "\n\n".join(chaos.problems[:10])
    assert all(numbers[k] == 0 for k in ZERO), numbers
    assert_clean(audits)
    assert numbers["completed"] == len(chaos.run_ids), unfinished
    assert chaos.counts["workers_killed"] >= 10 and chaos.counts["kills_while_driving"] >= 5


# -- a start slower than its lease ----------------------------------------------------------
def test_start_that_outlives_its_lease_while_making_the_worktree(
        settings: Settings, tmp_path: Path, make_devflow: MakeDevflow) -> None:
    """`run start` holds the new run's lease while it makes the worktree (git may wait for
    another start's lock): it must keep the lease, not lose it to its own slowness."""
    df = make_devflow(settings, lease=2.0)
    repo = make_repo(tmp_path / "repo")
    run_id = "slow-start"
    # Another start holds the repository's worktree lock a little longer than the lease.
    with filelock.FileLock(str(repo / ".git" / "devflow-worktree.lock")):
        start = df.spawn("run", "start", "--repo", str(repo), "--base", "main", "--template",
                         "development@1", "--objective", "x", "--run-id", run_id, *BINDS,
                         *DEV_SCENARIOS, "--json", name="start")
        taken = wait_until(lambda: _row(df, run_id), "the run row")
        # Well past the lease the starter took with the row: it still holds the run, on a
        # lease it renewed (a starter that lost it fails to make the worktree, below).
        assert taken.lease_expires_at is not None
        past = taken.lease_expires_at + timedelta(seconds=df.lease)
        wait_until(lambda: (utcnow() > past and (run := df.run_of(run_id)).lease_expires_at
                            is not None and run.lease_expires_at > past)
                   or start.poll() is not None, "the starter to renew its lease past the "
                   "first one", timeout=60, interval=0.2)
    code = start.wait()
    run = df.run_of(run_id)
    publish("start slower than its lease on " + _db(settings), {
        "exit": code, "state": str(run.state), "events": df.types(run_id)}, tmp_path)
    assert code == 0, start.tail()
    assert run.state is RunState.AWAITING_APPROVAL


def _row(df: Devflow, run_id: str) -> Any:
    return next((r for r in df.app.runs(limit=500) if r.id == run_id), None)


# -- 6. PostgreSQL connections terminated under a worker ----------------------------------------
@pytest.mark.postgresql_only
def test_pg_terminate_backend_under_a_working_worker(pg_url: str, pg_settings: Settings,
                                                     tmp_path: Path,
                                                     make_devflow: MakeDevflow) -> None:
    started = time.monotonic()
    name = f"devflow-worker-{os.getpid()}-{random.randrange(10**6)}"
    df = make_devflow(pg_settings, lease=3.0)
    worker_env = {"DEVFLOW_DATABASE_URL": f"{pg_url}?application_name={name}"}
    run_ids = []
    for i, (repo, base) in enumerate(_branches(tmp_path, repos=1, per_repo=3)):
        run_ids.append(f"pgkill-{i}")
        df.start(repo, run_ids[-1], "--scenario", "implement=slow:1", base=base)
    admin = psycopg.connect(pg_url.replace("postgresql+psycopg://", "postgresql://"),
                            autocommit=True)
    workers = [df.spawn("worker", "--concurrency", "3", "--poll", "0.2", env=worker_env,
                        name="worker-pg")]
    # In the middle of its work: once it registered and took a run.
    wait_until(lambda: any(df.run_of(r).lease_owner for r in run_ids), "the worker to start")
    deciding: dict[int, Proc] = {}
    kills: Counter[str] = Counter()
    stop_killing = time.monotonic() + 40
    deadline = time.monotonic() + 300
    try:
        while not all(df.run_of(r).state in TERMINAL for r in run_ids):
            assert time.monotonic() < deadline, f"runs did not end: {kills}"
            if time.monotonic() < stop_killing and kills["in_transaction"] < 15:
                _terminate(admin, name, kills)
            if workers[-1].poll() is not None:  # it gave up: a new one takes over
                workers.append(df.spawn("worker", "--concurrency", "3", "--poll", "0.2",
                                        env=worker_env, name="worker-pg"))
            for approval in df.pending():
                if approval.id not in deciding:
                    deciding[approval.id] = df.spawn(
                        "decide", approval.run_id, "approve", "--approval", str(approval.id),
                        "--token", f"approve-{approval.id}", "--no-drive", "--json",
                        name="decide")
            if any(df.lease_gone(r) and df.run_of(r).lease_owner for r in run_ids) \
                    and not any(p.poll() is None for p in df.procs if p.name == "sweep"):
                df.spawn("sweep", "--json", name="sweep")
            time.sleep(0.02)
    finally:
        admin.close()
    workers[-1].kill(signal.SIGTERM)
    for proc in df.procs:
        proc.wait()
    for run_id in run_ids:
        df.settle(run_id)

    exits = [(w.popen.returncode, _unclean(w)) for w in workers]
    audits = [audit_run(df.app, r) for r in run_ids]
    numbers = figures(audits)
    publish("pg_terminate_backend", {
        **numbers, **{f"terminated_{k}": v for k, v in kills.items()},
        "worker_exits": exits, "failures": [df.run_of(r).failure_code for r in run_ids],
        "seconds": round(time.monotonic() - started, 1)}, tmp_path)
    assert kills["in_transaction"] >= 3, kills
    # Nothing half-written, nothing failed for good: the drives that met a dead connection
    # stopped, the sweep recovered them, the runs completed.
    assert_clean(audits)
    assert numbers["completed"] == len(run_ids), [
        (r, df.run_of(r).failure_code, df.run_of(r).failure_reason) for r in run_ids]
    # A worker reconnects or ends; never by a signal. (Whether it ends with a clear
    # database_error rather than an internal error is checked deterministically below:
    # here it depends on where a terminated connection happened to fall.)
    assert all(code is not None and code >= 0 for code, _ in exits), exits
    assert all(p.popen.returncode == 0 for p in df.procs if p.name == "decide")


def test_worker_without_its_database_exits_with_database_error(
        sqlite_settings: Settings, tmp_path: Path, make_devflow: MakeDevflow) -> None:
    df = make_devflow(sqlite_settings, database_url="postgresql+psycopg://postgres@127.0.0.1:1/none")
    worker = df.run("worker", "--once", "--json", name="worker", check=None)
    sweep = df.run("sweep", "--json", name="sweep", check=None)
    assert (sweep.popen.returncode, sweep.json()["error"]["code"]) == (1, "database_error")
    assert worker.json()["error"]["code"] == "database_error", worker.tail()
    assert worker.popen.returncode == 1


@pytest.mark.postgresql_only
def test_read_whose_connection_dies_midway_is_retried(pg_url: str) -> None:
    from devflow.store import Database
    admin = psycopg.connect(pg_url.replace("postgresql+psycopg://", "postgresql://"),
                            autocommit=True)
    db = Database(pg_url)
    calls: list[int] = []

    def read(conn: Any) -> int:
        pid = int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar())
        calls.append(pid)
        if len(calls) == 1:  # the connection dies between two statements of the read
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        conn.exec_driver_sql("SELECT 1")
        return pid
    try:
        assert db.read(read) == calls[-1] and len(calls) == 2
    finally:
        db.dispose()
        admin.close()


def test_a_database_that_refuses_connections_is_a_database_error() -> None:
    """Connecting is inside the retried part of a transaction: a refused connection is
    retried, then reported as DATABASE_ERROR, never as a raw driver error."""
    from devflow.store import Database
    db = Database("postgresql+psycopg://postgres@127.0.0.1:1/test")
    try:
        for run in (db.read, db.write):
            with pytest.raises(DevflowError) as caught:
                run(lambda conn: conn.exec_driver_sql("SELECT 1"))
            assert caught.value.code is Code.DATABASE_ERROR
    finally:
        db.dispose()


def test_connections_that_died_in_the_pool_are_replaced(pg_url: str) -> None:
    """The pool does not ping a connection before lending it (a round trip per
    transaction): one that died while pooled fails its first statement, which
    invalidates the pool, and the transaction runs again on a new connection."""
    from devflow.store import Database
    admin = psycopg.connect(pg_url.replace("postgresql+psycopg://", "postgresql://"),
                            autocommit=True)
    db = Database(pg_url, pool_size=3)
    try:
        with contextlib.ExitStack() as stack:  # three connections, back in the pool after
            conns = [stack.enter_context(db.engine.connect()) for _ in range(3)]
            pids = [int(c.exec_driver_sql("SELECT pg_backend_pid()").scalar()) for c in conns]
        for pid in pids:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))

        def pid_of(conn: Any) -> int:
            return int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar())
        assert db.read(pid_of) not in pids
        assert db.write(pid_of) not in pids
    finally:
        db.dispose()
        admin.close()


def _terminate(admin: Any, name: str, kills: Counter[str]) -> None:
    """Terminate the worker's backends that are inside a transaction (and now and then an
    idle one of its pool)."""
    rows = admin.execute("SELECT pid, state FROM pg_stat_activity WHERE application_name = %s",
                         (name,)).fetchall()
    kills["looks"] += 1
    for pid, state in rows:
        busy = state in ("active", "idle in transaction", "idle in transaction (aborted)")
        if busy or kills["looks"] % 100 == 0:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            kills["in_transaction" if busy else "idle"] += 1


def _unclean(proc: Proc) -> str:
    """Why a process's end was not clean: a crash, a traceback, an internal error."""
    text = proc.stdout() + proc.stderr()
    if proc.popen.returncode is not None and proc.popen.returncode < 0:
        return f"killed by signal {-proc.popen.returncode}"
    for sign in ("Traceback (most recent call last)", "internal_error"):
        if sign in text:
            line = next(li for li in text.splitlines() if sign in li)
            return f"{sign}: {line[:300]}"
    return ""


# -- 7. SQLite: eight processes at once -----------------------------------------------------
class Mill:
    """Eight devflow processes at once on one SQLite file: two workers, two starters, two
    approvers, a driver and a sweeper/reader, each actor starting its next process as soon as
    the last one ended."""

    def __init__(self, df: Devflow, targets: list[tuple[Path, str]], seconds: float) -> None:
        self.df = df
        self.targets = targets
        self.until = time.monotonic() + seconds
        self.lock = threading.Lock()
        self.started: list[str] = []
        self.busy: set[int] = set()
        self.unexpected: list[str] = []
        self.errors: list[str] = []
        self.rng = random.Random(7)

    def _run(self, *args: str, name: str, wanted: tuple[int, ...] = (0,)) -> Proc:
        proc = self.df.spawn(*args, name=name)
        code = proc.wait(300)
        if code not in wanted:
            with self.lock:
                self.unexpected.append(f"devflow {' '.join(args)} exited {code}: "
                                       f"{proc.tail(600)}")
        return proc

    def actor(self, body: Callable[[], None]) -> Callable[[], None]:
        def loop() -> None:
            try:
                while time.monotonic() < self.until:
                    body()
            except BaseException as exc:  # noqa: BLE001 - reported by the test, not lost
                with self.lock:
                    self.errors.append(f"{body.__name__}: {type(exc).__name__}: {exc}")
        return loop

    def start_detached(self) -> None:
        self._start(detach=True)

    def start_and_drive(self) -> None:
        self._start(detach=False)

    def _start(self, detach: bool) -> None:
        with self.lock:
            if not self.targets:
                time.sleep(0.5)
                return
            repo, base = self.targets.pop(0)
            run_id = f"mill-{len(self.started):02d}"
            self.started.append(run_id)
        self._run("run", "start", "--repo", str(repo), "--base", base, "--template",
                  "development@1", "--objective", "mill", "--run-id", run_id, *BINDS,
                  *DEV_SCENARIOS, *(["--detach"] if detach else []), "--json", name="start")

    def approve_and_drive(self) -> None:
        self._approve(drive=True)

    def approve_only(self) -> None:
        self._approve(drive=False)

    def _approve(self, drive: bool) -> None:
        with self.lock:
            choices = [a for a in self.df.pending() if a.id not in self.busy]
            approval = self.rng.choice(choices) if choices else None
            if approval is not None:
                self.busy.add(approval.id)
        if approval is None:
            time.sleep(0.3)
            return
        try:
            self._run("decide", approval.run_id, "approve", "--approval", str(approval.id),
                      "--token", f"approve-{approval.id}", "--json",
                      *([] if drive else ["--no-drive"]), name="decide")
        finally:
            with self.lock:
                self.busy.discard(approval.id)

    def drive(self) -> None:
        free = [r for r in self.df.app.runs(limit=500)
                if r.state in RUNNABLE and r.lease_owner is None]
        if not free:
            time.sleep(0.3)
            return
        self._run("run", "drive", self.rng.choice(free).id, "--json", name="drive")

    def sweep_and_read(self) -> None:
        self._run("sweep", "--json", name="sweep")
        runs = self.df.app.runs(limit=500)
        if runs:
            run_id = self.rng.choice(runs).id
            reader = self.rng.choice([("events", run_id, "--json"),
                                      ("run", "status", run_id, "--json"),
                                      ("run", "list", "--json"),
                                      ("approvals", "list", "--pending", "--json"),
                                      ("workers", "list", "--json")])
            self._run(*reader, name="read")


@pytest.fixture
def sqlite_settings(sqlite_url: str, home: Path, tmp_path: Path) -> Settings:
    return Settings.load(env={}, home=str(home), database_url=sqlite_url,
                         workspace=str(tmp_path / "ws"), actor="tester")


@pytest.mark.timeout(900)
def test_sqlite_eight_processes_starting_driving_and_deciding_at_once(
        sqlite_settings: Settings, tmp_path: Path, make_devflow: MakeDevflow) -> None:
    started = time.monotonic()
    df = make_devflow(sqlite_settings, lease=3.0)
    mill = Mill(df, _branches(tmp_path, repos=4, per_repo=10), seconds=45)
    assert df.app.runs() == []  # the reader is made here, not by two threads at once
    workers = [df.spawn("worker", "--concurrency", "2", "--poll", "0.2", "--grace", "10",
                        "--name", f"mill{i}", name="worker") for i in range(2)]
    actors = [threading.Thread(target=mill.actor(body), name=body.__name__) for body in (
        mill.start_detached, mill.start_and_drive, mill.approve_and_drive, mill.approve_only,
        mill.drive, mill.sweep_and_read)]
    for thread in actors:
        thread.start()
    for thread in actors:
        thread.join(600)
    for worker in workers:
        worker.kill(signal.SIGTERM)
    for worker in workers:
        if worker.wait(120) != 0:
            mill.unexpected.append(f"worker exited {worker.popen.returncode}: {worker.tail()}")
    # What the eight left runnable is driven on; runs stay at their gates or end.
    existing = {r.id for r in df.app.runs(limit=500)}
    assert existing == set(mill.started), "\n\n".join(mill.unexpected[:5])
    for run_id in mill.started:
        df.settle(run_id, approve=False)

    locked = [f"{p.name} {' '.join(p.args)[:80]}" for p, text in df.outputs()
              if "database is locked" in text.lower()]
    audits = [audit_run(df.app, r) for r in mill.started]
    numbers = figures(audits)
    publish("sqlite eight processes", {
        **numbers, "processes": len(df.procs), "database_is_locked": len(locked),
        "unexpected_exits": len(mill.unexpected), "actor_errors": mill.errors,
        "seconds": round(time.monotonic() - started, 1), "process_seconds": df.timings()},
        tmp_path)
    assert not mill.errors
    assert locked == []
    assert mill.unexpected == [], "\n\n".join(mill.unexpected[:5])
    assert len(mill.started) >= 4 and len(df.procs) >= 16
    assert all(numbers[k] == 0 for k in ZERO), numbers
    assert_clean(audits)
    assert numbers["failed"] == 0
