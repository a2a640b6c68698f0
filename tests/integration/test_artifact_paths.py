"""Artifacts cannot escape the worktree (DESIGN.md §3.5): `..` and absolute paths are refused
when a template is loaded, a symlink out of the worktree is refused when a run reads the
artifact and its target is never read; containment compares paths, not strings; size is
capped."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from devflow import artifacts, git
from devflow.app import App
from devflow.backends import samples
from devflow.errors import Code, DevflowError
from devflow.requests import StartRequest
from devflow.schemas import SchemaRegistry
from devflow.settings import Settings
from tests.conftest import make_repo
from tests.integration.helpers import (
    QUICK_BINDS,
    app_with_templates,
    report_of,
    write_template,
)

_ESCAPING = """\
    name: {name}
    version: 1
    roles:
      implementer:
    phases:
      - key: work
        roles: [implementer]
        artifact:
          path: {path}
          schema: dev/implementation@1
"""


@pytest.mark.parametrize(("name", "path"), [
    ("dotdot", "../outside.json"),
    ("dotdot-inner", ".devflow/../../outside.json"),
    ("absolute", "/tmp/outside.json"),
    ("into-git", ".git/hooks/artifact.json"),
])
def test_escaping_artifact_paths_are_refused_when_the_template_loads(
        settings: Settings, repo: Path, tmp_path: Path, name: str, path: str) -> None:
    write_template(tmp_path / "templates", name, _ESCAPING.format(name=name, path=path))
    app = app_with_templates(settings, tmp_path / "templates")
    try:
        with pytest.raises(DevflowError) as caught:
            app.template(f"{name}@1")
        assert caught.value.code is Code.PATH_ESCAPE
        assert path in caught.value.message
        assert "/phases/0/artifact/path" in caught.value.message
        with pytest.raises(DevflowError) as started:
            app.start(StartRequest(repo=repo, base="main", template=f"{name}@1",
                                   requirements="x", actor="tester",
                                   binds={"implementer": "scripted-implementer"}))
        assert started.value.code is Code.PATH_ESCAPE
        assert started.value.exit_code == 2
        assert app.runs() == []
    finally:
        app.close()


def test_symlink_out_of_the_worktree_is_refused_and_never_read(app: App,
                                                               tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    # A valid artifact waits outside: read through the link, it would pass validation.
    sample = json.loads((Path(samples.__file__).parent / "samples" / "implementation.json")
                        .read_text(encoding="utf-8"))
    sample["summary"] = "OUTSIDE-BYTES-7f3a"
    assert app.catalog.schemas.validate("dev/implementation@1", sample) == []
    (outside / "implementation.json").write_text(json.dumps(sample), encoding="utf-8")
    repo = make_repo(tmp_path / "linked")
    os.symlink(outside, repo / ".devflow")
    git.run(["add", ".devflow"], repo)
    git.run(["commit", "--quiet", "--no-verify", "-m", "a link out"], repo, env=git.AUTHOR)

    view = app.start(StartRequest(repo=repo, base="main", template="quick@1", requirements="x",
                                  actor="tester", binds=QUICK_BINDS,
                                  scenarios={"implement": "no-artifact"}))
    assert view.run.state == "failed"
    assert view.run.failure_code == "path_escape"
    implement = view.phases[0]
    assert (implement.key, implement.state) == ("implement", "failed")
    assert implement.artifact_sha is None and implement.artifact_stored is None
    refused = [e.payload for e in app.events(view.run.id) if e.type == "phase.artifact_invalid"]
    assert refused and {r["code"] for r in refused} == {"path_escape"}
    assert any(str(outside) in e["message"] for r in refused for e in r["errors"])
    # nothing of the outside file made it into the run: no kept copy, no report, no prompt
    workspace = Path(view.run.workspace)
    assert not (workspace / "artifacts").exists()
    for path in workspace.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert "OUTSIDE-BYTES-7f3a" not in path.read_text(encoding="utf-8",
                                                              errors="replace"), path
    body = report_of(view)
    assert app.catalog.schemas.validate("common/final-report@1", body) == []
    assert {v["code"] for v in body["validation_errors"]} == {"path_escape"}


# -- unit level: devflow.artifacts ---------------------------------------------------------
def test_contained_path_compares_paths_not_string_prefixes(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    run1, run10 = ws / "run1", ws / "run10"
    run1.mkdir(parents=True)
    (run10 / "x").mkdir(parents=True)
    (run10 / "x" / "a.json").write_text("{}", encoding="utf-8")
    os.symlink(run10, run1 / "sibling")
    assert str(run10 / "x").startswith(str(run1))  # the trap a string prefix falls into
    with pytest.raises(DevflowError) as caught:
        artifacts.contained_path(run1, "sibling/x/a.json")
    assert caught.value.code is Code.PATH_ESCAPE
    with pytest.raises(DevflowError) as read:
        artifacts.read_contained(run1, "sibling/x/a.json", 1024)
    assert read.value.code is Code.PATH_ESCAPE
    # a link that stays inside is fine, and resolves to its target
    (run1 / "real").mkdir()
    (run1 / "real" / "a.json").write_text("{}", encoding="utf-8")
    os.symlink(run1 / "real", run1 / "alias")
    assert artifacts.contained_path(run1, "alias/a.json") == (run1 / "real" / "a.json").resolve()


@pytest.mark.parametrize("rel", ["../run10/x/a.json", "/etc/passwd", "", ".git/config"])
def test_contained_path_refuses_escaping_spellings(tmp_path: Path, rel: str) -> None:
    (tmp_path / "run1").mkdir()
    with pytest.raises(DevflowError) as caught:
        artifacts.contained_path(tmp_path / "run1", rel)
    assert caught.value.code is Code.PATH_ESCAPE


def test_read_contained_caps_the_size(tmp_path: Path) -> None:
    (tmp_path / "at-cap.json").write_bytes(b"x" * 100)
    (tmp_path / "over-cap.json").write_bytes(b"x" * 101)
    assert artifacts.read_contained(tmp_path, "at-cap.json", 100) == b"x" * 100
    with pytest.raises(DevflowError) as caught:
        artifacts.read_contained(tmp_path, "over-cap.json", 100)
    assert caught.value.code is Code.ARTIFACT_TOO_LARGE
    assert "101" in caught.value.message and "100" in caught.value.message
    checked = artifacts.check(tmp_path, "over-cap.json", "dev/implementation@1",
                              _schemas(), 100)
    assert checked.code is Code.ARTIFACT_TOO_LARGE and checked.data is None


def test_read_contained_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(DevflowError) as caught:
        artifacts.read_contained(tmp_path, "dir.json", 100)
    assert caught.value.code is Code.ARTIFACT_MISSING
    with pytest.raises(DevflowError) as missing:
        artifacts.read_contained(tmp_path, "nothing.json", 100)
    assert missing.value.code is Code.ARTIFACT_MISSING


def test_read_contained_does_not_block_on_a_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "artifact.json"
    os.mkfifo(fifo)
    outcome: dict[str, BaseException] = {}

    def read() -> None:
        try:
            artifacts.read_contained(tmp_path, "artifact.json", 100)
        except BaseException as exc:  # noqa: BLE001 - examined below
            outcome["error"] = exc

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(3)
    blocked = thread.is_alive()
    if blocked:  # let the stuck open return, so the thread ends
        os.close(os.open(fifo, os.O_WRONLY))
        thread.join(5)
    assert not blocked, "read_contained blocked on a FIFO for 3 s"
    error = outcome.get("error")
    assert isinstance(error, DevflowError) and error.code is Code.ARTIFACT_MISSING


def _schemas() -> SchemaRegistry:
    from devflow.catalog import Catalog, Dirs
    return Catalog(Dirs.with_builtins()).schemas
