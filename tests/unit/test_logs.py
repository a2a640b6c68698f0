"""Logging: structlog to stderr, JSON when not on a terminal or when asked, fields bound;
what the level drops costs no import."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest
import structlog

from devflow import logs


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    logs._wanted, logs._configured, logs._threshold = None, False, 0


def test_json_lines_carry_the_bound_fields(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("json", "info")
    log = logs.get_logger("devflow.test").bind(run_id="r-1", phase="spec", attempt=2)
    log.info("artifact_invalid", errors=3)
    log.debug("not_shown")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert len(lines) == 1
    [line] = lines
    assert {k: line[k] for k in ("event", "run_id", "phase", "attempt", "errors", "level")} == {
        "event": "artifact_invalid", "run_id": "r-1", "phase": "spec", "attempt": 2,
        "errors": 3, "level": "info"}
    assert line["timestamp"].endswith("Z")


def test_auto_is_json_when_stderr_is_not_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("auto", "warning")
    logs.get_logger().warning("lease_lost", run_id="r-2")
    assert json.loads(capsys.readouterr().err)["event"] == "lease_lost"


def test_console_format_is_for_people(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("console", "warning")
    logs.get_logger().warning("lease_lost", run_id="r-3")
    err = capsys.readouterr().err
    assert "lease_lost" in err and "r-3" in err
    with pytest.raises(json.JSONDecodeError):
        json.loads(err)


def test_the_level_filters(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("json", "warning")
    logs.get_logger().info("quiet")
    logs.get_logger().error("loud")
    assert [json.loads(line)["event"] for line in capsys.readouterr().err.splitlines()] == [
        "loud"]


def test_lines_below_the_level_load_nothing() -> None:
    """A process that writes no line never imports structlog (nor rich, its console's)."""
    code = ("import sys; from devflow import logs; logs.configure('console', 'warning'); "
            "log = logs.get_logger('devflow.test').bind(run_id='r-4'); "
            "log.info('quiet'); log.debug('quieter'); "
            "assert 'structlog' not in sys.modules and 'rich' not in sys.modules, 'loaded'")
    subprocess.run([sys.executable, "-c", code], check=True)
