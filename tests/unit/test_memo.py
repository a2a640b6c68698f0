"""What is checked once per version of a file is remembered on disk, and only that: the
definitions' parse and meta-schema check, schema files' check, an agent CLI's version."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from devflow import backends, memo
from devflow.backends import command
from devflow.catalog import Catalog, Dirs
from devflow.errors import Code, DevflowError

TEMPLATE = """\
name: remembered
version: 1
roles: {implementer: {}}
phases:
  - key: implement
    roles: [implementer]
    artifact: {path: .devflow/implementation.json, schema: dev/implementation@1}
"""


def test_a_memo_saves_and_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "home" / "cache" / "memo.json"
    first = memo.Memo(path)
    first.put("a", {"x": 1})
    first.save()
    assert memo.Memo(path).get("a") == {"x": 1}
    path.write_text("not json", encoding="utf-8")
    assert memo.Memo(path).get("a") is None  # a broken file is an empty memo


def test_a_memo_does_not_create_devflows_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    kept = memo.Memo(home / "cache" / "memo.json", within=home)
    kept.put("a", 1)
    kept.save()
    assert not home.exists()
    home.mkdir()
    kept.save()
    assert (home / "cache" / "memo.json").is_file()


def test_answers_about_content_are_shared_by_the_homes_of_a_process(tmp_path: Path) -> None:
    one = memo.Memo(tmp_path / "one" / "memo.json")
    other = memo.Memo(tmp_path / "other" / "memo.json")
    parsed = memo.key("yaml", "shared: [1]")
    one.put(parsed, {"data": {"shared": [1]}})
    one.put(probe := memo.key("bwrap-works", "a stamp of this host"), True)
    assert other.get(parsed) == {"data": {"shared": [1]}}
    other.save()  # the shared answer goes into the other home's file too
    assert json.loads((tmp_path / "other" / "memo.json").read_text())["entries"][parsed] == {
        "data": {"shared": [1]}}
    third = memo.Memo(tmp_path / "third" / "memo.json")
    third.get(parsed)["data"]["shared"].append(2)  # each home's copy is its own
    assert one.get(parsed) == other.get(parsed) == {"data": {"shared": [1]}}
    assert other.get(probe) is None  # an answer about the machine stays with its home


def test_keys_change_with_the_content_and_the_kind() -> None:
    assert memo.key("yaml", "a: 1") == memo.key("yaml", "a: 1")
    assert memo.key("yaml", "a: 1") != memo.key("yaml", "a: 2")
    assert memo.key("yaml", "a: 1") != memo.key("schema-checked", "a: 1")
    assert memo.key("x", "ab", "c") != memo.key("x", "a", "bc")


# -- definitions ------------------------------------------------------------------------------
LOAD = """
import json, sys
from pathlib import Path
from devflow import memo
from devflow.catalog import Catalog, Dirs
home = Path(sys.argv[1])
catalog = Catalog(Dirs.with_builtins([home / "templates"]), memo=memo.Memo(home / "memo.json"),
                  check_persona_options=lambda backend, options: [])
refs = [t.ref for t in catalog.templates()] + [p.ref for p in catalog.personas()]
print(json.dumps({"refs": refs, "schemas": catalog.schemas.ids(),
                  "loaded": sorted(m for m in ("yaml", "jsonschema", "referencing")
                                   if m in sys.modules)}))
"""


def _load(home: Path) -> dict[str, list[str]]:
    done = subprocess.run([sys.executable, "-c", LOAD, str(home)], capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_definitions_seen_before_load_without_yaml_or_jsonschema(tmp_path: Path) -> None:
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "remembered.yaml").write_text(TEMPLATE, encoding="utf-8")
    first = _load(tmp_path)
    assert first["loaded"] == ["jsonschema", "referencing", "yaml"]
    second = _load(tmp_path)
    assert second["loaded"] == []
    assert second["refs"] == first["refs"] and "remembered@1" in second["refs"]
    assert second["schemas"] == first["schemas"]
    # a changed file is parsed and checked again
    (tmp_path / "templates" / "remembered.yaml").write_text(
        TEMPLATE.replace("version: 1", "version: 2"), encoding="utf-8")
    third = _load(tmp_path)
    assert "yaml" in third["loaded"] and "jsonschema" in third["loaded"]
    assert "remembered@2" in third["refs"]


def test_a_remembered_definition_still_gets_its_cross_checks(tmp_path: Path) -> None:
    """The meta-schema's pass is remembered; what depends on other files is checked each
    time: the same template is broken once its artifact's schema is gone."""
    templates, schemas = tmp_path / "templates", tmp_path / "schemas"
    templates.mkdir()
    schemas.mkdir()
    (schemas / "own.json").write_text(json.dumps(
        {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "own/thing@1",
         "type": "object"}), encoding="utf-8")
    (templates / "t.yaml").write_text(TEMPLATE.replace("dev/implementation@1", "own/thing@1"),
                                      encoding="utf-8")
    kept = memo.Memo(tmp_path / "memo.json")
    assert Catalog(Dirs.with_builtins([templates], [], [schemas]), memo=kept).template(
        "remembered@1").phases[0].artifact is not None
    kept.save()
    (schemas / "own.json").unlink()
    catalog = Catalog(Dirs.with_builtins([templates], [], [schemas]),
                      memo=memo.Memo(tmp_path / "memo.json"))
    with pytest.raises(DevflowError) as caught:
        catalog.template("remembered@1")
    assert caught.value.code is Code.UNKNOWN_SCHEMA
    assert "t.yaml:7" in caught.value.message  # its line, from the text parsed again


def test_a_persona_checked_without_its_options_is_not_taken_as_checked_with_them(
        tmp_path: Path) -> None:
    personas = tmp_path / "personas"
    personas.mkdir()
    (personas / "odd.yaml").write_text(textwrap.dedent("""\
        name: odd
        version: 1
        roles: [implementer]
        backend: command
        options: {argv: [agent], shell: true}
        """), encoding="utf-8")
    kept = memo.Memo(tmp_path / "memo.json")
    assert Catalog(Dirs.with_builtins([], [personas]), memo=kept).persona("odd@1")
    with pytest.raises(DevflowError) as caught:
        Catalog(Dirs.with_builtins([], [personas]), memo=kept,
                check_persona_options=backends.check_options).persona("odd@1")
    assert "unknown option 'shell'" in caught.value.message


def test_an_invalid_definition_is_never_remembered(tmp_path: Path) -> None:
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "bad.yaml").write_text(
        TEMPLATE.replace("roles: {implementer: {}}", "roles: 3"), encoding="utf-8")
    kept = memo.Memo(tmp_path / "memo.json")
    for _ in range(2):
        catalog = Catalog(Dirs.with_builtins([tmp_path / "templates"]), memo=kept)
        assert [b.path.name for b in catalog.broken()] == ["bad.yaml"]


# -- agent CLIs' versions ---------------------------------------------------------------------
def test_an_agent_clis_version_is_asked_once_per_version_of_the_executable(
        tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    cli = tmp_path / "fake-cli"
    cli.write_text(f"#!{sys.executable}\nopen({str(calls)!r}, 'a').write('x')\n"
                   "print('fake-cli 1.0')\n", encoding="utf-8")
    cli.chmod(0o755)
    kept = memo.Memo(tmp_path / "home" / "memo.json")
    try:
        for _ in range(2):  # two processes: the in-process answers are forgotten between
            command.configure(memo=memo.Memo(kept.path))
            command._versions.clear()
            assert command.version([str(cli), "--version"]) == "fake-cli 1.0"
        assert calls.read_text() == "x"
        stat = cli.stat()  # a new executable at the same path is asked again
        os.utime(cli, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        command._versions.clear()
        command.configure(memo=memo.Memo(kept.path))
        assert command.version([str(cli), "--version"]) == "fake-cli 1.0"
        assert calls.read_text() == "xx"
    finally:
        command.configure()
        command._versions.clear()


def test_gits_repository_local_variables_are_asked_once_per_git(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from devflow import git
    try:
        git.configure(memo=memo.Memo(tmp_path / "memo.json"))
        git.local_env_vars.cache_clear()
        first = git.local_env_vars()
        assert "GIT_DIR" in first
        git.configure(memo=memo.Memo(tmp_path / "memo.json"))  # another process
        git.local_env_vars.cache_clear()

        def no_git(*args: object, **kwargs: object) -> None:
            raise AssertionError(f"git was asked again: {args}")
        monkeypatch.setattr(subprocess, "run", no_git)
        assert git.local_env_vars() == first
    finally:
        monkeypatch.undo()
        git.configure()
        git.local_env_vars.cache_clear()


def test_threads_remember_while_another_saves(tmp_path: Path) -> None:
    """Worker threads put answers (git's, a probe's) while one saves: no thread fails and
    the file holds whole JSON with every answer once the last save is done."""
    kept = memo.Memo(tmp_path / "memo.json")
    for i in range(1500):  # a file's worth already: each save walks them all
        kept.put(f"old-{i}", ["x" * 40, i])
    failures: list[BaseException] = []
    done = threading.Event()

    def put(n: int) -> None:
        try:
            for i in range(3000):
                kept.put(f"k{n}-{i}", i)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            failures.append(exc)

    def save() -> None:
        try:
            while not done.is_set():
                kept.put("dirty", time.monotonic())
                kept.save()
        except BaseException as exc:  # noqa: BLE001 - as above
            failures.append(exc)
    saver = threading.Thread(target=save)
    saver.start()
    putters = [threading.Thread(target=put, args=(n,)) for n in range(3)]
    for t in putters:
        t.start()
    for t in putters:
        t.join()
    done.set()
    saver.join()
    assert failures == []
    kept.save()
    body = json.loads((tmp_path / "memo.json").read_text())
    assert {f"k{n}-{i}" for n in range(3) for i in range(3000)} <= set(body["entries"])
