"""Refused artifacts on SQLite and PostgreSQL: an agent's JSON nested 3,000 levels deep is
artifact_invalid and repaired (the run completes), and what every refused attempt left is
kept in the run's workspace and linked from the report, or the report says why not."""

from __future__ import annotations

import hashlib
import json
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from devflow.app import App
from devflow.backends import samples
from devflow.catalog import Catalog, Dirs
from devflow.requests import StartRequest
from devflow.settings import Settings
from tests.integration.helpers import QUICK_BINDS, quick, report_of, subjects

DEEP = b"[" * 3000 + b"]" * 3000
IMPLEMENTATION = ".devflow/implementation.json"


def _deep_then_valid_persona(directory: Path) -> str:
    """A ``command`` implementer whose first attempt writes DEEP, the next a valid artifact."""
    directory.mkdir(parents=True, exist_ok=True)
    valid = directory / "valid.json"
    schemas = Catalog(Dirs.with_builtins()).schemas
    valid.write_text(json.dumps(samples.valid("dev/implementation@1", schemas)),
                     encoding="utf-8")
    agent = directory / "deep_agent.py"
    agent.write_text(textwrap.dedent(f"""\
        import os, sys
        path = os.environ["DEVFLOW_ARTIFACT"]
        os.makedirs(os.path.dirname(path), exist_ok=True)
        first = os.environ["DEVFLOW_ATTEMPT"] == "1"
        data = {DEEP!r} if first else open(sys.argv[1], "rb").read()
        with open(path, "wb") as handle:
            handle.write(data)
        """), encoding="utf-8")
    body = {"name": "deep-implementer", "version": 1, "roles": ["implementer"],
            "backend": "command", "prompt": "Writes deep JSON first.",
            "options": {"argv": [sys.executable, "-I", str(agent), str(valid)]},
            # its script and the valid artifact it copies, read-only in its sandbox
            "sandbox": {"read_only": [str(directory)]}}
    (directory / "deep-implementer.yaml").write_text(yaml.safe_dump(body), encoding="utf-8")
    return "deep-implementer@1"


def test_json_nested_3000_levels_deep_is_repaired_and_the_run_completes(
        settings: Settings, repo: Path, tmp_path: Path) -> None:
    personas = tmp_path / "personas"
    persona = _deep_then_valid_persona(personas)
    app = App(settings.replace(personas_dirs=(personas,)))
    try:
        view = app.start(StartRequest(
            repo=repo, base="main", template="quick@1", requirements="Add a farewell.",
            actor="tester", binds={**QUICK_BINDS, "implementer": persona}))
        assert view.run.state == "completed", view.run.failure_reason
        implement = next(p for p in view.phases if p.key == "implement")
        assert (implement.attempt, implement.repairs) == (2, 1)
        events = list(app.events(view.run.id))
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        [refused] = [e for e in events if e.type == "phase.artifact_invalid"]
        assert refused.payload["code"] == "artifact_invalid" and refused.payload["repair"]
        assert "nested more than 64 arrays or objects deep" in \
            refused.payload["errors"][0]["message"]
        report = report_of(view)
    finally:
        app.close()
    kept = Path(view.run.workspace) / "artifacts" / "implement.attempt-1.invalid.json"
    assert kept.read_bytes() == DEEP
    [validation] = report["validation_errors"]
    assert validation["artifact"] == {
        "kept": str(kept), "link": "artifacts/implement.attempt-1.invalid.json",
        "sha256": hashlib.sha256(DEEP).hexdigest(), "bytes": len(DEEP)}
    markdown = (Path(view.run.workspace) / "report.md").read_text(encoding="utf-8")
    assert ("[artifacts/implement.attempt-1.invalid.json]"
            "(<artifacts/implement.attempt-1.invalid.json>)") in markdown
    # one checkpoint per phase: the refused attempt committed nothing
    assert subjects(repo, view.run.base_sha or "", view.run.branch) == [
        "devflow(implement): attempt 2", "devflow(review): attempt 1"]


@pytest.mark.parametrize(("scenario", "kept"), [("invalid", True), ("no-artifact", False)])
def test_every_refused_attempt_is_kept_or_the_report_says_why_not(
        app: App, repo: Path, scenario: str, kept: bool) -> None:
    view = app.start(quick(repo, scenarios={"implement": scenario}))
    assert view.run.state == "failed"
    report = report_of(view)
    attempts = [v for v in report["validation_errors"] if v["phase"] == "implement"]
    assert [v["attempt"] for v in attempts] == [1, 2, 3]
    markdown = (Path(view.run.workspace) / "report.md").read_text(encoding="utf-8")
    for v in attempts:
        name = f"implement.attempt-{v['attempt']}.invalid.json"
        copy = Path(view.run.workspace) / "artifacts" / name
        if kept:
            assert v["artifact"]["link"] == f"artifacts/{name}"
            assert hashlib.sha256(copy.read_bytes()).hexdigest() == v["artifact"]["sha256"]
            assert f"[artifacts/{name}](<artifacts/{name}>)" in markdown
        else:
            assert not copy.exists()
            assert v["artifact"] == {"kept": None, "why": f"no artifact at {IMPLEMENTATION}"}
            assert f"not kept: no artifact at {IMPLEMENTATION}" in markdown
    leftovers = [p.name for p in (Path(view.run.workspace) / "artifacts").glob(".*")] \
        if (Path(view.run.workspace) / "artifacts").exists() else []
    assert leftovers == []  # no temporary file stays behind


def test_an_artifact_over_the_cap_is_not_kept_and_the_report_says_so(
        settings: Settings, repo: Path) -> None:
    app = App(settings.replace(artifact_max_bytes=40))
    try:
        view = app.start(quick(repo))
        report = report_of(view)
    finally:
        app.close()
    assert view.run.state == "failed"
    first = report["validation_errors"][0]
    assert first["code"] == "artifact_too_large" and first["artifact"]["kept"] is None
    assert "more than the cap of 40" in first["artifact"]["why"]
    assert not (Path(view.run.workspace) / "artifacts").exists()
