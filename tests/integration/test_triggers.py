"""Schedule triggers on both databases, under a clock the test moves: catchup after missed
ticks, one run per tick whoever evaluates it (threads and processes), a local time kept
across a change of the clocks, pause, resume and fire, workers and the sweep."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from devflow import ticks
from devflow.app import App
from devflow.engine import schedule
from devflow.errors import Code, DevflowError
from devflow.requests import WorkerOptions
from devflow.settings import Settings
from devflow.states import RunState
from tests.conftest import ROOT

T0 = datetime(2027, 1, 4, 9, 0, tzinfo=UTC)

TRIGGER = """\
name: {name}
template: quick@1
repo: {repo}
base: main
requirements: "Tidy up: tick {{scheduled_at}} of {{trigger}} ({{kind}})."
bindings:
  implementer: scripted-implementer
  reviewer: scripted-reviewer
schedule:
  cron: "{cron}"
  timezone: {zone}
  catchup: {catchup}
  overlap: {overlap}
"""


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self.now

    def set(self, now: datetime) -> None:
        with self._lock:
            self.now = now

    def advance(self, **delta: float) -> None:
        with self._lock:
            self.now += timedelta(**delta)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def triggers_dir(tmp_path: Path) -> Path:
    path = tmp_path / "triggers"
    path.mkdir()
    return path


@pytest.fixture
def define(triggers_dir: Path, repo: Path) -> Callable[..., str]:
    def write(name: str = "hourly", *, cron: str = "0 * * * *", zone: str = "UTC",
              catchup: str = "skip", overlap: str = "allow") -> str:
        (triggers_dir / f"{name}.yaml").write_text(TRIGGER.format(
            name=name, repo=repo, cron=cron, zone=zone, catchup=catchup, overlap=overlap),
            encoding="utf-8")
        return name
    return write


@pytest.fixture
def trigger_settings(settings: Settings, triggers_dir: Path) -> Settings:
    return settings.replace(triggers_dirs=(triggers_dir,), max_active_per_branch=5)


@pytest.fixture
def make_app(trigger_settings: Settings, clock: Clock) -> Iterator[Callable[[], App]]:
    made: list[App] = []

    def make() -> App:
        made.append(App(trigger_settings, clock=clock))
        return made[-1]
    yield make
    for application in made:
        application.close()


def _started(app: App, name: str) -> list[ticks.Tick]:
    return [t for t in app.store.triggers.recent_ticks(name) if t.state == ticks.STARTED]


# -- catchup -------------------------------------------------------------------------------
@pytest.mark.parametrize(("catchup", "runs"), [("skip", 0), ("latest", 1), ("all", 3)])
def test_three_missed_ticks_start_runs_by_the_catchup_policy(
        make_app: Callable[[], App], define: Callable[..., str], clock: Clock, catchup: str,
        runs: int) -> None:
    name = define(catchup=catchup)
    app = make_app()
    assert app.evaluate_triggers() == []  # first seen: its ticks count from now
    clock.advance(hours=3, minutes=30)  # 10:00, 11:00 and 12:00 passed unseen
    outcomes = app.evaluate_triggers()
    started = _started(app, name)
    assert len(started) == runs == len(app.runs())
    assert sorted(o.outcome for o in outcomes) == sorted(["missed"] * (3 - runs)
                                                         + ["started"] * runs)
    if catchup == "latest":
        assert started[0].scheduled_at == T0 + timedelta(hours=3)
    view = app.trigger(name)
    assert view.counts.get("missed", 0) == 3 - runs
    assert [e.type for e in view.events].count("tick.missed") == 3 - runs
    assert view.next_at == T0 + timedelta(hours=4)
    for tick in started:  # each run says which tick started it
        run = app.store.runs.get(tick.run_id or "")
        assert run.options["trigger"] == {"name": name,
                                          "scheduled_at": tick.scheduled_at.isoformat()}
        assert run.created_by == f"trigger:{name}"
        assert tick.scheduled_at.isoformat(timespec="seconds") in run.requirements
    assert app.evaluate_triggers() == []  # decided once


# -- one run per tick ----------------------------------------------------------------------
def test_workers_in_threads_evaluating_the_same_tick_start_one_run(
        make_app: Callable[[], App], define: Callable[..., str], clock: Clock) -> None:
    name = define()
    make_app().evaluate_triggers()
    clock.advance(hours=1, minutes=1)
    apps = [make_app() for _ in range(4)]
    for application in apps:
        application.catalog.triggers()
    barrier = threading.Barrier(len(apps))
    results: list[list[schedule.Outcome]] = []

    def evaluate(application: App) -> None:
        barrier.wait()
        results.append(application.evaluate_triggers())
    threads = [threading.Thread(target=evaluate, args=(a,)) for a in apps]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    outcomes = [o for found in results for o in found]
    assert [o.outcome for o in outcomes] == ["started"]
    assert len(_started(apps[0], name)) == 1 and len(apps[0].runs()) == 1


def test_starters_racing_for_one_pending_tick_make_one_run(
        make_app: Callable[[], App], define: Callable[..., str]) -> None:
    """Past the trigger's lock: the run's insert claims the tick, or is not made."""
    name = define()
    apps = [make_app() for _ in range(4)]
    trigger = apps[0].catalog.trigger(name)
    tick = apps[0].store.triggers.fire(name, "tester", claim_seconds=60)
    barrier = threading.Barrier(len(apps))
    outcomes: list[schedule.Outcome] = []

    def start(application: App) -> None:
        ctx = application.context()
        barrier.wait()
        outcomes.append(schedule.start_tick(ctx, trigger, tick))
    threads = [threading.Thread(target=start, args=(a,)) for a in apps]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(o.outcome for o in outcomes) == ["started", "taken", "taken", "taken"]
    assert len(apps[0].runs()) == 1


def test_worker_processes_evaluating_the_same_tick_start_one_run(
        make_app: Callable[[], App], define: Callable[..., str], clock: Clock,
        trigger_settings: Settings, triggers_dir: Path) -> None:
    name = define()
    app = make_app()
    app.evaluate_triggers()
    now = T0 + timedelta(hours=1, minutes=1)
    children = [subprocess.Popen(
        [sys.executable, "-m", "tests.tick_child", str(trigger_settings.home),
         trigger_settings.database_url, str(trigger_settings.workspace), str(triggers_dir),
         now.isoformat()], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True) for _ in range(3)]
    try:
        for child in children:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        outcomes = []
        for child in children:
            out, err = child.communicate(timeout=120)
            assert child.returncode == 0, err
            outcomes += json.loads(out.strip().splitlines()[-1])
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
    assert [o["outcome"] for o in outcomes] == ["started"]
    assert len(_started(app, name)) == 1 and len(app.runs()) == 1


# -- time zones ----------------------------------------------------------------------------
def test_a_daily_tick_keeps_its_local_time_across_the_march_change(
        make_app: Callable[[], App], define: Callable[..., str], clock: Clock) -> None:
    name = define("nightly", cron="30 2 * * *", zone="Europe/Berlin")
    clock.set(datetime(2027, 3, 26, 12, 0, tzinfo=UTC))
    app = make_app()
    app.evaluate_triggers()
    expected = [datetime(2027, 3, 27, 1, 30, tzinfo=UTC),   # 02:30 CET
                datetime(2027, 3, 28, 1, 0, tzinfo=UTC),    # 03:00 CEST: 02:30 does not exist
                datetime(2027, 3, 29, 0, 30, tzinfo=UTC)]   # 02:30 CEST
    for at in expected:
        clock.set(at - timedelta(minutes=1))
        assert app.evaluate_triggers() == []
        clock.set(at + timedelta(minutes=1))
        assert [(o.outcome, o.scheduled_at) for o in app.evaluate_triggers()] == \
            [("started", at)]
    requirements = sorted(app.store.runs.get(t.run_id or "").requirements
                          for t in _started(app, name))
    assert [r.split("tick ")[1][:25] for r in requirements] == [
        "2027-03-27T02:30:00+01:00", "2027-03-28T03:00:00+02:00", "2027-03-29T02:30:00+02:00"]


# -- overlap -------------------------------------------------------------------------------
def test_overlap_skip_drops_ticks_while_the_trigger_run_is_active(
        make_app: Callable[[], App], define: Callable[..., str], clock: Clock) -> None:
    name = define(overlap="skip")
    app = make_app()
    app.evaluate_triggers()
    clock.advance(hours=1, minutes=1)
    assert [o.outcome for o in app.evaluate_triggers()] == ["started"]
    clock.advance(hours=1)
    assert [o.outcome for o in app.evaluate_triggers()] == ["skipped"]
    run_id = _started(app, name)[0].run_id or ""
    app.abort(run_id, "tester", "done with it")
    clock.advance(hours=1)
    assert [o.outcome for o in app.evaluate_triggers()] == ["started"]


def test_overlap_buffer_one_starts_the_kept_tick_when_the_run_ends(
        make_app: Callable[[], App], define: Callable[..., str], clock: Clock) -> None:
    name = define(overlap="buffer_one")
    app = make_app()
    app.evaluate_triggers()
    clock.advance(hours=1, minutes=1)
    app.evaluate_triggers()
    clock.advance(hours=2)  # 12:01: 11:00 was missed; 12:00 meets the run of 10:00
    assert sorted(o.outcome for o in app.evaluate_triggers()) == ["buffered", "missed"]
    clock.advance(hours=1)  # one is kept already: 13:00 is dropped
    assert [o.outcome for o in app.evaluate_triggers()] == ["skipped"]
    app.abort(_started(app, name)[0].run_id or "", "tester", "done")
    outcomes = app.evaluate_triggers()
    assert [(o.outcome, o.scheduled_at) for o in outcomes] == \
        [("started", T0 + timedelta(hours=3))]
    assert app.evaluate_triggers() == []


# -- pause, resume, fire -------------------------------------------------------------------
def test_a_paused_trigger_starts_nothing_and_resumed_counts_from_then(
        make_app: Callable[[], App], define: Callable[..., str], clock: Clock) -> None:
    name = define(catchup="all")
    app = make_app()
    app.evaluate_triggers()
    assert app.pause_trigger(name, "tester", "freeze") is True
    assert app.pause_trigger(name, "tester") is False
    clock.advance(hours=3, minutes=1)
    assert app.evaluate_triggers() == []
    view = app.trigger(name)
    assert view.paused and view.next_at is None and view.state is not None
    assert view.state.paused_by == "tester" and view.state.reason == "freeze"
    assert app.resume_trigger(name, "tester") is True
    assert app.evaluate_triggers() == []  # the ticks of the pause were not wanted
    clock.advance(hours=1)
    assert [o.outcome for o in app.evaluate_triggers()] == ["started"]
    assert [e.type for e in app.trigger(name).events][:2] == ["trigger.paused",
                                                              "trigger.resumed"]


def test_fire_starts_one_run_now_even_when_paused(
        make_app: Callable[[], App], define: Callable[..., str], clock: Clock) -> None:
    name = define()
    app = make_app()
    app.pause_trigger(name, "tester")
    clock.advance(minutes=7)
    outcome = app.fire_trigger(name, "alice")
    assert outcome.outcome == "started" and outcome.scheduled_at == clock()
    run = app.store.runs.get(outcome.run_id or "")
    assert run.created_by == "alice" and "(fire)" in run.requirements
    tick = app.trigger(name).last
    assert tick is not None and (tick.kind, tick.fired_by, tick.run_id) == \
        ("fire", "alice", run.id)
    with pytest.raises(DevflowError) as twice:  # the same instant: that tick exists
        app.fire_trigger(name, "bob")
    assert twice.value.code is Code.TICK_TAKEN and len(app.runs()) == 1
    with pytest.raises(DevflowError) as caught:
        app.fire_trigger("nope", "alice")
    assert caught.value.code is Code.TRIGGER_NOT_FOUND


def test_a_start_refused_as_bad_input_fails_the_tick_with_its_reason(
        make_app: Callable[[], App], define: Callable[..., str], clock: Clock,
        repo: Path) -> None:
    name = define()
    app = make_app()
    app.evaluate_triggers()
    shutil.rmtree(repo)  # the repository went away
    clock.advance(hours=1, minutes=1)
    [outcome] = app.evaluate_triggers()
    assert outcome.outcome == "failed"
    assert (outcome.reason or "").startswith(("not_a_git_repo", "file_not_found")), outcome
    tick = app.trigger(name).last
    assert tick is not None and tick.state == ticks.FAILED and app.runs() == []


# -- workers and the sweep -----------------------------------------------------------------
def test_a_worker_starts_the_due_tick_and_drives_its_run(
        make_app: Callable[[], App], define: Callable[..., str], clock: Clock) -> None:
    name = define()
    app = make_app()
    app.evaluate_triggers()
    clock.advance(hours=1, minutes=1)
    stats = app.work(WorkerOptions(name="t", once=True, poll=0.05))
    [tick] = _started(app, name)
    assert stats.driven == [tick.run_id]
    assert app.store.runs.get(tick.run_id or "").state is RunState.COMPLETED


def test_the_sweep_evaluates_triggers(make_app: Callable[[], App], define: Callable[..., str],
                                      clock: Clock) -> None:
    define(catchup="latest")
    app = make_app()
    app.sweep()
    clock.advance(hours=2, minutes=30)
    actions = [a.to_json() for a in app.sweep().actions]
    assert sorted(a["action"] for a in actions) == ["tick_missed", "tick_started"]
    assert app.sweep(dry_run=True).actions == []
    started = next(a for a in actions if a["action"] == "tick_started")
    assert started["run_id"] and started["trigger"] == "hourly"
