"""The catalog: built-ins plus user directories; a changed name@version is a conflict."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from devflow import backends
from devflow.catalog import BUILTIN_ROOT, Catalog, Dirs
from devflow.errors import Code, DevflowError
from tests.unit.malformed_definitions import GOOD_PERSONA, GOOD_TEMPLATE


def _catalog(templates: list[Path] | None = None, personas: list[Path] | None = None) -> Catalog:
    return Catalog(Dirs.with_builtins(templates or (), personas or ()),
                   check_persona_options=backends.check_options)


def _changed_development(directory: Path) -> Path:
    """development@1 with one word of its body changed, the version kept."""
    directory.mkdir(parents=True, exist_ok=True)
    text = (BUILTIN_ROOT / "templates" / "development.yaml").read_text(encoding="utf-8")
    assert "Write the specification" in text
    path = directory / "development.yaml"
    path.write_text(text.replace("Write the specification", "Write a specification"),
                    encoding="utf-8")
    return path


def test_a_user_directory_adds_templates(tmp_path: Path) -> None:
    (tmp_path / "custom.yaml").write_text(GOOD_TEMPLATE, encoding="utf-8")
    catalog = _catalog([tmp_path])
    assert catalog.template("custom@1").source == tmp_path / "custom.yaml"
    assert {"custom@1", "development@1", "quick@1"} <= {t.ref for t in catalog.templates()}


def test_a_changed_builtin_with_the_same_version_is_a_conflict(tmp_path: Path) -> None:
    path = _changed_development(tmp_path)
    catalog = _catalog([tmp_path])
    for ref in ("development@1", "development"):
        with pytest.raises(DevflowError) as caught:
            catalog.template(ref)
        error = caught.value
        assert error.code is Code.TEMPLATE_VERSION_CONFLICT and error.exit_code == 3
        assert str(path) in error.message
        assert str(BUILTIN_ROOT / "templates" / "development.yaml") in error.message
        assert "new version" in error.hint
    assert [e.code for e in catalog.conflicts()] == [Code.TEMPLATE_VERSION_CONFLICT]
    # the other templates stay usable
    assert catalog.template("quick@1").ref == "quick@1"


def test_checking_a_changed_builtin_file_is_a_conflict(tmp_path: Path) -> None:
    path = _changed_development(tmp_path)
    with pytest.raises(DevflowError) as caught:
        _catalog().check_file(path, "template")
    assert caught.value.code is Code.TEMPLATE_VERSION_CONFLICT


def test_an_identical_copy_of_a_builtin_is_no_conflict(tmp_path: Path) -> None:
    shutil.copy(BUILTIN_ROOT / "templates" / "development.yaml", tmp_path / "dev-copy.yaml")
    catalog = _catalog([tmp_path])
    assert catalog.conflicts() == []
    assert catalog.template("development@1").hash == _catalog().template("development@1").hash


def test_a_changed_persona_with_the_same_version_is_a_conflict(tmp_path: Path) -> None:
    text = (BUILTIN_ROOT / "personas" / "scripted-planner.yaml").read_text(encoding="utf-8")
    (tmp_path / "planner.yaml").write_text(text + "model: another-model\n", encoding="utf-8")
    catalog = _catalog(personas=[tmp_path])
    with pytest.raises(DevflowError) as caught:
        catalog.persona("scripted-planner@1")
    assert caught.value.code is Code.PERSONA_VERSION_CONFLICT and caught.value.exit_code == 3
    assert catalog.persona("scripted-reviewer@1").backend == "scripted"


def test_the_latest_version_is_chosen_in_natural_order(tmp_path: Path) -> None:
    for version in ("2", "10", "9"):
        (tmp_path / f"custom-{version}.yaml").write_text(
            GOOD_TEMPLATE.replace("version: 1", f"version: {version}"), encoding="utf-8")
    (tmp_path / "custom-1.yaml").write_text(GOOD_TEMPLATE, encoding="utf-8")
    catalog = _catalog([tmp_path])
    assert catalog.template("custom").version == "10"
    assert catalog.template("custom@9").version == "9"
    assert [t.version for t in catalog.templates() if t.name == "custom"] == ["1", "2", "9", "10"]


def test_a_broken_file_does_not_hide_the_others_and_is_named_on_lookup(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text(GOOD_TEMPLATE, encoding="utf-8")
    (tmp_path / "broken.yaml").write_text(
        GOOD_TEMPLATE.replace("name: custom", "name: broken").replace("roles: [reviewer]",
                                                                      "roles: [auditor]"),
        encoding="utf-8")
    catalog = _catalog([tmp_path])
    assert catalog.template("custom@1").name == "custom"
    assert [(b.kind, b.name, b.path.name) for b in catalog.broken()] == [
        ("template", "broken", "broken.yaml")]
    with pytest.raises(DevflowError) as caught:
        catalog.template("broken@1")
    assert caught.value.code is Code.UNKNOWN_ROLE  # the file's own problem, not "not found"


def test_an_unknown_template_lists_the_known_ones() -> None:
    with pytest.raises(DevflowError) as caught:
        _catalog().template("nope@1")
    assert caught.value.code is Code.TEMPLATE_NOT_FOUND and caught.value.exit_code == 4
    assert "development@1" in caught.value.hint
    with pytest.raises(DevflowError) as caught:
        _catalog().template("development@7")
    assert caught.value.code is Code.TEMPLATE_NOT_FOUND
    with pytest.raises(DevflowError) as caught:
        _catalog().persona("nobody")
    assert caught.value.code is Code.PERSONA_NOT_FOUND


def test_a_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DevflowError) as caught:
        _catalog([tmp_path / "absent"])
    assert caught.value.code is Code.FILE_NOT_FOUND
    assert str(tmp_path / "absent") in caught.value.message


def test_a_single_file_may_stand_for_a_directory(tmp_path: Path) -> None:
    path = tmp_path / "custom.yaml"
    path.write_text(GOOD_TEMPLATE, encoding="utf-8")
    assert _catalog([path]).template("custom").source == path


def test_user_personas_can_be_added(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(GOOD_PERSONA, encoding="utf-8")
    catalog = _catalog(personas=[tmp_path])
    assert catalog.persona("custom-implementer").roles == ("implementer",)
    assert catalog.persona("scripted-implementer@1").backend == "scripted"
