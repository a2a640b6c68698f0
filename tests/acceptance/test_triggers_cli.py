"""`devflow triggers …` and the sweep's ticks through the real CLI, as a subprocess."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from devflow.app import App
from devflow.model import utcnow
from devflow.settings import Settings
from tests.conftest import as_json

Cli = Callable[..., subprocess.CompletedProcess[str]]

HOURLY = """\
name: hourly
description: tidy up every hour
template: quick@1
repo: {repo}
base: main
requirements: "Tidy up ({{trigger}}, {{scheduled_at}}, {{kind}} by {{fired_by}})."
bindings:
  implementer: scripted-implementer
  reviewer: scripted-reviewer
schedule:
  cron: "0 * * * *"
  timezone: Europe/Berlin
  catchup: latest
"""

WEBHOOK = """\
name: labelled
template: quick@1
repo: {repo}
base: main
requirements: "Work on the labelled issue."
webhook:
  source: github
  secret_env: DEVFLOW_HOOK_SECRET
  events: [issues.labeled]
"""


@pytest.fixture
def triggers(home: Path, repo: Path) -> Path:
    """$DEVFLOW_HOME/triggers, read without any option, with a schedule and a webhook."""
    directory = home / "triggers"
    directory.mkdir()
    (directory / "hourly.yaml").write_text(HOURLY.format(repo=repo), encoding="utf-8")
    (directory / "labelled.yaml").write_text(WEBHOOK.format(repo=repo), encoding="utf-8")
    return directory


def test_validate_names_the_file_and_line_of_each_problem(cli: Cli, triggers: Path,
                                                          tmp_path: Path) -> None:
    done = cli("triggers", "validate", check=0)
    assert "ok       hourly" in done.stdout
    assert "ok       labelled" in done.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text((triggers / "hourly.yaml").read_text(encoding="utf-8")
                   .replace("0 * * * *", "0 * * *").replace("Europe/Berlin", "Berlin"),
                   encoding="utf-8")
    refused = cli("triggers", "validate", str(bad), check=2)
    assert f"{bad}:11: at /schedule/cron" in refused.stderr
    assert f"{bad}:12: at /schedule/timezone" in refused.stderr
    verdict = as_json(cli("triggers", "validate", str(bad), "--json", check=2))
    assert verdict["valid"] == [] and verdict["invalid"][0]["file"] == str(bad)
    assert {p["pointer"] for p in verdict["invalid"][0]["error"]["details"]["problems"]} == \
        {"/schedule/cron", "/schedule/timezone"}
    # a broken file beside them is named by list, never hidden
    (triggers / "bad.yaml").write_text(bad.read_text(encoding="utf-8").replace(
        "name: hourly", "name: broken"), encoding="utf-8")
    listed = as_json(cli("triggers", "list", "--json", check=0))
    assert [t["name"] for t in listed["triggers"]] == ["hourly", "labelled"]
    assert [s["file"] for s in listed["skipped"]] == [str(triggers / "bad.yaml")]


def test_list_show_pause_resume_and_fire(cli: Cli, triggers: Path) -> None:
    listed = as_json(cli("triggers", "list", "--json", check=0))["triggers"]
    hourly = next(t for t in listed if t["name"] == "hourly")
    assert hourly["paused"] is False and hourly["last_tick"] is None
    assert hourly["next_tick"] is not None and hourly["schedule"]["catchup"] == "latest"
    labelled = next(t for t in listed if t["name"] == "labelled")
    assert labelled["webhook"]["path"] == "/api/v1/hooks/labelled"

    fired = as_json(cli("triggers", "fire", "hourly", "--json", check=0))
    assert fired["outcome"] == "started" and fired["run_id"]
    status = as_json(cli("run", "status", fired["run_id"], "--json", check=0))["run"]
    assert status["created_by"] == "tester"
    shown = as_json(cli("triggers", "show", "hourly", "--json", check=0))
    assert shown["runs"] == [fired["run_id"]] and shown["last_tick"]["kind"] == "fire"
    assert shown["ticks"] == {"started": 1}
    assert "tick.started" in [e["type"] for e in shown["events"]]

    assert as_json(cli("triggers", "pause", "hourly", "--reason", "freeze", "--json",
                       check=0)) == {"trigger": "hourly", "state": "paused", "changed": True}
    text = cli("triggers", "list", check=0).stdout
    assert "hourly" in text and "paused" in text
    again = cli("triggers", "pause", "hourly", check=0)
    assert "paused already" in again.stdout
    assert as_json(cli("triggers", "show", "hourly", "--json", check=0))["next_tick"] is None
    assert as_json(cli("triggers", "resume", "hourly", "--json", check=0))["changed"] is True
    human = cli("triggers", "show", "hourly", check=0).stdout
    assert fired["run_id"] in human and "next tick" in human

    # a second fire meets the first run on the branch: refused for now, exit 3
    refused = as_json(cli("triggers", "fire", "hourly", "--json", check=3))["error"]
    assert refused["code"] == "active_run_exists" and "tried again" in refused["hint"]
    assert "not by fire" in cli("triggers", "fire", "labelled", check=2).stderr
    missing = cli("triggers", "fire", "hourli", "--json", check=4)
    assert as_json(missing)["error"]["code"] == "trigger_not_found"
    assert "did you mean hourly" in as_json(missing)["error"]["hint"]


def test_the_sweep_starts_the_latest_of_missed_ticks(cli: Cli, triggers: Path,
                                                     settings: Settings, home: Path) -> None:
    _first_seen_hours_ago(settings, home, 3)
    swept = as_json(cli("sweep", "--json", check=0))["actions"]
    # three hourly ticks since: catchup latest starts one of them, the others were missed
    assert sorted(a["action"] for a in swept) == ["tick_missed", "tick_missed", "tick_started"]
    started = next(a for a in swept if a["action"] == "tick_started")
    assert as_json(cli("sweep", "--json", check=0))["actions"] == []  # decided once
    shown = as_json(cli("triggers", "show", "hourly", "--json", check=0))
    assert shown["runs"] == [started["run_id"]] and len(shown["missed"]) == 2
    assert [e["type"] for e in shown["events"]].count("tick.missed") == 2
    text = cli("sweep", "--dry-run", check=0).stdout
    assert "nothing to do" in text


def _first_seen_hours_ago(settings: Settings, home: Path, hours: int) -> None:
    """The trigger was first seen ``hours`` ago (by a worker whose clock said so)."""
    earlier = utcnow() - timedelta(hours=hours)
    app = App(settings.replace(home=home), clock=lambda: earlier)
    try:
        assert app.evaluate_triggers() == []
    finally:
        app.close()


@pytest.mark.parametrize("crash_at", ["tick_decided", "run_inserted"])
def test_a_sweep_killed_while_starting_a_tick_neither_loses_nor_doubles_it(
        cli: Cli, triggers: Path, settings: Settings, home: Path, tmp_path: Path,
        crash_at: str) -> None:
    _first_seen_hours_ago(settings, home, 3)
    marker = tmp_path / "crashed"
    killed = cli("sweep", "--json", env={"DEVFLOW_CRASH_AT": crash_at,
                                         "DEVFLOW_CRASH_MARKER": str(marker)})
    assert killed.returncode == -9 and marker.read_text().startswith(crash_at)
    # a moment later, past the dead starter's claim, another evaluates the trigger
    later = utcnow() + timedelta(minutes=3)
    app = App(settings.replace(home=home), clock=lambda: later)
    try:
        outcomes = app.evaluate_triggers()
        started = [t for t in app.store.triggers.recent_ticks("hourly")
                   if t.state == "started"]
        assert len(started) == 1 and len(app.runs()) == 1
        if crash_at == "tick_decided":  # the pending tick is started now, once
            assert [o.outcome for o in outcomes if o.outcome == "started"] == ["started"]
        else:  # the run was inserted with its tick: nothing to start again
            assert [o for o in outcomes if o.outcome == "started"] == []
        assert app.trigger("hourly").counts.get("missed") == 2
    finally:
        app.close()
