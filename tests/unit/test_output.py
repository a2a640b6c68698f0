"""What people read: values as JSON with costs rounded, tables with every value in full off a
terminal, hints that name the devflow that runs, progress in the format of the logs."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import structlog

from devflow import logs, model
from devflow.cli import output
from devflow.cli.progress import Progress


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    output.program.cache_clear()
    yield
    output.program.cache_clear()
    structlog.reset_defaults()


@pytest.mark.parametrize(("key", "value", "shown"), [
    ("cost_usd", 0.020196000000000002, "$0.0202"),
    ("cost", 1.5, "$1.5000"),
    ("ratio", 0.020196000000000002, "0.020196"),
    ("gate", "spec_review", "spec_review"),
    ("reason", "not good", '"not good"'),
    ("bindings", {"planner": "scripted-planner@1"}, '{"planner":"scripted-planner@1"}'),
    ("phases", ["plan-step-1"], '["plan-step-1"]'),
    ("repair", False, "false"),
    ("attempt", 2, "2"),
])
def test_values_are_json_and_costs_are_rounded(key: str, value: object, shown: str) -> None:
    assert output.value_text(key, value) == shown


def test_pairs_leave_out_what_is_empty() -> None:
    assert output.pairs_text({"a": 1, "b": None, "c": "", "d": [], "e": "x"}) == "a=1 e=x"
    assert output.pairs_text({"a": 1, "b": 2}, ["b"]) == "b=2"


def test_a_table_off_a_terminal_prints_every_value(capsys: pytest.CaptureFixture[str]) -> None:
    long_id = "20261207-" + "x" * 40
    output.table(["run", "state", "note"], [[long_id, "awaiting_approval", None],
                                            ["r2", "completed", "done"]])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["run", "state", "note"]
    assert lines[1].split() == [long_id, "awaiting_approval", "-"]
    assert lines[2].split() == ["r2", "completed", "done"]
    assert lines[1].index("awaiting") == lines[2].index("completed")  # aligned


def test_hints_name_the_devflow_that_runs(monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    script = tmp_path / "bin" / "devflow"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\n", encoding="utf-8")
    script.chmod(0o755)
    monkeypatch.setattr(sys, "argv", [str(script), "run", "status"])
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    text = "see `devflow run list`; devflow's runs; DEVFLOW_HOME; devflow/x"
    assert output.commands(text) == (f"see `{script} run list`; devflow's runs; DEVFLOW_HOME; "
                                     "devflow/x")
    output.program.cache_clear()
    monkeypatch.setenv("PATH", str(script.parent))
    assert output.commands(text) == text
    output.program.cache_clear()
    monkeypatch.setattr(sys, "argv", ["/src/devflow/cli/main.py"])  # python -m devflow...
    assert output.program() == "devflow"


def _event(seq: int, kind: str, **payload: object) -> model.Event:
    return model.Event(run_id="r-1", seq=seq, type=kind, ts=datetime(2026, 1, 1, tzinfo=UTC),
                       phase="plan", payload=payload)


def test_progress_follows_the_log_format(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("json", "warning")
    with Progress() as progress:
        progress.event(_event(1, "phase.planned", phases=["plan-step-1"]))
    [line] = capsys.readouterr().err.splitlines()
    record = json.loads(line)
    assert (record["event"], record["level"], record["run_id"], record["seq"]) == (
        "phase.planned", "info", "r-1", 1)
    assert record["payload"] == {"phases": ["plan-step-1"]}
    logs.configure("console", "warning")
    with Progress() as progress:
        progress.event(_event(2, "phase.planned", phases=["plan-step-1"]))
    text = capsys.readouterr().err
    assert 'phases=["plan-step-1"]' in text and "'" not in text
