"""Each backend's options schema (devflow/backends/options.py): valid, closed, described,
documented, and part of what a remembered persona check is keyed on."""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from devflow import backends
from devflow import memo as memos
from devflow.backends import command
from devflow.catalog import Catalog, Dirs
from devflow.definitions import Problem
from devflow.errors import Code

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", backends.SHIPPED)
def test_each_schema_is_a_closed_draft_2020_12_object_with_every_option_described(
        name: str) -> None:
    schema = backends.get(name).options_schema
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert set(schema.get("required", ())) <= set(schema["properties"])
    assert {key: body for key, body in schema["properties"].items()
            if not body.get("description")} == {}


def test_the_presets_share_the_common_options() -> None:
    for name in ("claude-code", "codex", "aider"):
        properties = backends.get(name).options_schema["properties"]
        assert {key: properties[key] for key in command.COMMON} == command.COMMON


@pytest.mark.parametrize(("name", "options"), [
    ("scripted", {}), ("scripted", {"scenario": "slow:0.5", "scenarios": {"plan": "plan:2"}}),
    ("command", {"argv": ["agent", "{prompt_file}"], "timeout": 90}),
    ("claude-code", {}), ("codex", {"provider": "my-gateway", "base_url_env": "MY_URL",
                                    "stream_max_retries": 0}),
    ("aider", {"model_metadata": {"max_input_tokens": 8192}, "files": ["src/app.py"]}),
])
def test_what_the_schema_allows_passes(name: str, options: dict[str, Any]) -> None:
    assert backends.check_options(name, options) == []


def _documented(text: str) -> dict[str, set[str]]:
    """The options docs/backends.md lists for each backend, by its section: the names in
    the first column of each `| option | meaning |` table."""
    found: dict[str, set[str]] = {}
    section = None
    in_table = False
    for line in text.splitlines():
        heading = re.match(r"^#{2,3} (?:`([a-z-]+)`|Presets for the real CLIs)", line)
        if heading:
            section = heading.group(1) or "presets"
            continue
        if line.startswith("| option | meaning |"):
            in_table = True
            continue
        if not line.startswith("|"):
            in_table = False
        elif in_table and section and not line.startswith("|---"):
            cell = line.split("|")[1]
            found.setdefault(section, set()).update(re.findall(r"`([a-z_]+)`", cell))
    return found


def test_docs_backends_md_lists_each_backends_options() -> None:
    documented = _documented((ROOT / "docs" / "backends.md").read_text(encoding="utf-8"))
    for name in backends.SHIPPED:
        declared = set(backends.get(name).options_schema["properties"])
        listed = documented.get(name, set())
        if name in ("claude-code", "codex", "aider"):
            listed |= documented["presets"]
        assert listed == declared, name


class _Counting:
    """A persona option check that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, backend: str, options: Mapping[str, Any]) -> list[Problem]:
        self.calls += 1
        return backends.check_options(backend, options)


def test_a_remembered_check_is_made_again_when_the_code_that_checks_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The schemas are source files of devflow (so, in its code stamp): a persona's pass
    is remembered under that stamp, and checked again under another one."""
    for name in backends.SHIPPED:
        source = Path(inspect.getsourcefile(type(backends.get(name))) or "")
        assert source.is_relative_to(Path(memos.__file__).resolve().parent), name
    memo = memos.Memo(tmp_path / "memo.json")
    counted = _Counting()

    def codex_persona() -> None:
        Catalog(Dirs.with_builtins(), check_persona_options=counted, memo=memo).persona(
            "codex-implementer")
    codex_persona()
    seen = counted.calls
    assert seen > 0
    codex_persona()
    assert counted.calls == seen  # remembered
    monkeypatch.setattr(memos, "code_stamp", lambda: "another version of devflow")
    codex_persona()
    assert counted.calls == 2 * seen


def test_a_refused_persona_is_never_remembered_as_checked(tmp_path: Path) -> None:
    personas = tmp_path / "personas"
    personas.mkdir()
    (personas / "typo.yaml").write_text(
        "name: typo\nversion: 1\nroles: [implementer]\nbackend: scripted\n"
        "options:\n  scenaro: ok\n", encoding="utf-8")
    memo = memos.Memo(tmp_path / "memo.json")
    for _ in range(2):
        catalog = Catalog(Dirs.with_builtins(personas=[personas]),
                          check_persona_options=backends.check_options, memo=memo)
        [broken] = catalog.broken_of("persona")
        assert broken.error.code is Code.BACKEND_OPTION_INVALID
        assert "did you mean 'scenario'?" in broken.error.message
