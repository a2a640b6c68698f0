"""Settings: defaults, then $DEVFLOW_HOME/config.yaml, then DEVFLOW_* variables, then options."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from devflow.errors import Code, DevflowError
from devflow.settings import Settings


def _config(home: Path, text: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.yaml").write_text(text, encoding="utf-8")


def test_defaults_live_under_home(tmp_path: Path) -> None:
    s = Settings.load(env={"DEVFLOW_HOME": str(tmp_path / "h")})
    home = (tmp_path / "h").resolve()
    assert s.home == home
    assert s.database_url == f"sqlite:///{home / 'devflow.db'}"
    assert s.workspace == home / "workspace"
    assert (s.templates_dirs, s.personas_dirs, s.schemas_dirs) == ((), (), ())
    assert (s.max_active_per_branch, s.max_concurrent_runs) == (1, 50)
    assert (s.agent_timeout, s.lease_seconds, s.max_recoveries) == (1800.0, 30.0, 3)
    assert s.artifact_max_bytes == 5 * 1024 * 1024
    assert s.log_format == "auto" and s.actor


def test_home_defaults_to_dot_devflow(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert Settings.load(env={}).home == (tmp_path / ".devflow").resolve()


def test_variables_override_the_defaults(tmp_path: Path) -> None:
    env = {"DEVFLOW_HOME": str(tmp_path), "DEVFLOW_DATABASE_URL": "postgresql+psycopg://u@h/db",
           "DEVFLOW_WORKSPACE": str(tmp_path / "ws"), "DEVFLOW_MAX_CONCURRENT_RUNS": "7",
           "DEVFLOW_MAX_ACTIVE_PER_BRANCH": "2", "DEVFLOW_ARTIFACT_MAX_BYTES": "1024",
           "DEVFLOW_AGENT_TIMEOUT": "1h30m", "DEVFLOW_LEASE_SECONDS": "10",
           "DEVFLOW_MAX_RECOVERIES": "5", "DEVFLOW_LOG_FORMAT": "json", "DEVFLOW_ACTOR": "ana",
           "DEVFLOW_SOMETHING_ELSE": "ignored: not a setting"}
    s = Settings.load(env=env)
    assert s.database_url == "postgresql+psycopg://u@h/db"
    assert s.workspace == (tmp_path / "ws").resolve()
    assert (s.max_concurrent_runs, s.max_active_per_branch, s.artifact_max_bytes) == (7, 2, 1024)
    assert (s.agent_timeout, s.lease_seconds, s.max_recoveries) == (5400.0, 10.0, 5)
    assert (s.log_format, s.actor) == ("json", "ana")


def test_the_config_file_then_variables_then_options(tmp_path: Path) -> None:
    _config(tmp_path, "max_concurrent_runs: 20\nmax_recoveries: 4\nagent_timeout: 2h\n"
                      "actor: from-file\ngroups:\n  leads: [ana, bo]\n")
    env = {"DEVFLOW_HOME": str(tmp_path), "DEVFLOW_MAX_CONCURRENT_RUNS": "30",
           "DEVFLOW_ACTOR": "from-env"}
    s = Settings.load(env=env)
    assert (s.max_concurrent_runs, s.max_recoveries, s.agent_timeout) == (30, 4, 7200.0)
    assert s.actor == "from-env"
    assert dict(s.groups) == {"leads": ("ana", "bo")}
    s = Settings.load(env=env, actor="from-option", max_concurrent_runs=40)
    assert (s.actor, s.max_concurrent_runs) == ("from-option", 40)
    # an option left out (None) does not erase what the layers below set
    assert Settings.load(env=env, actor=None).actor == "from-env"


def test_an_unknown_setting_is_config_invalid(tmp_path: Path) -> None:
    _config(tmp_path, "max_concurrent_runs: 2\nmax_concurent_runs: 3\n")
    with pytest.raises(DevflowError) as caught:
        Settings.load(env={"DEVFLOW_HOME": str(tmp_path)})
    error = caught.value
    assert error.code is Code.CONFIG_INVALID and error.exit_code == 2
    assert "max_concurent_runs" in error.message
    assert "max_concurrent_runs" in error.hint  # the known ones, to spot the typo


@pytest.mark.parametrize("text", [
    "max_concurrent_runs: many\n",
    "max_concurrent_runs: 0\n",
    "max_recoveries: -1\n",
    "this is: [not: valid\n",
    "- a list\n- of things\n",
    "just a string\n",
])
def test_a_bad_config_file_is_config_invalid(tmp_path: Path, text: str) -> None:
    _config(tmp_path, text)
    with pytest.raises(DevflowError) as caught:
        Settings.load(env={"DEVFLOW_HOME": str(tmp_path)})
    assert caught.value.code is Code.CONFIG_INVALID
    assert caught.value.hint


def test_a_bad_duration_setting_is_bad_duration(tmp_path: Path) -> None:
    with pytest.raises(DevflowError) as caught:
        Settings.load(env={"DEVFLOW_HOME": str(tmp_path), "DEVFLOW_LEASE_SECONDS": "soon"})
    assert caught.value.code is Code.BAD_DURATION
    assert "lease_seconds" in caught.value.message


def test_directory_variables_are_path_lists(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    env = {"DEVFLOW_HOME": str(tmp_path),
           "DEVFLOW_TEMPLATES_DIR": f"{a}{os.pathsep}{os.pathsep}{b}{os.pathsep}",
           "DEVFLOW_PERSONAS_DIR": str(a), "DEVFLOW_SCHEMAS_DIR": f"{b}{os.pathsep}{a}"}
    s = Settings.load(env=env)
    assert s.templates_dirs == (a.resolve(), b.resolve())
    assert s.personas_dirs == (a.resolve(),)
    assert s.schemas_dirs == (b.resolve(), a.resolve())


def test_directory_options_replace_the_variables(tmp_path: Path) -> None:
    env = {"DEVFLOW_HOME": str(tmp_path), "DEVFLOW_TEMPLATES_DIR": str(tmp_path / "env")}
    s = Settings.load(env=env, templates_dirs=[str(tmp_path / "opt")])
    assert s.templates_dirs == ((tmp_path / "opt").resolve(),)
    s = Settings.load(env=env, templates_dirs=None)
    assert s.templates_dirs == ((tmp_path / "env").resolve(),)


def test_directory_lists_in_the_config_file(tmp_path: Path) -> None:
    _config(tmp_path, f"templates_dirs: [{tmp_path / 'x'}, {tmp_path / 'y'}]\n")
    s = Settings.load(env={"DEVFLOW_HOME": str(tmp_path)})
    assert s.templates_dirs == ((tmp_path / "x").resolve(), (tmp_path / "y").resolve())


def test_a_single_directory_in_the_config_file(tmp_path: Path) -> None:
    _config(tmp_path, f"templates_dirs: {tmp_path / 'x'}\n")
    try:
        s = Settings.load(env={"DEVFLOW_HOME": str(tmp_path)})
    except DevflowError as exc:  # refusing it clearly would do as well
        code = exc.code
    else:
        code = None
        assert s.templates_dirs == ((tmp_path / "x").resolve(),)
    assert code in (None, Code.CONFIG_INVALID)


def test_settings_are_frozen_and_replace_makes_a_copy(tmp_path: Path) -> None:
    s = Settings.load(env={"DEVFLOW_HOME": str(tmp_path)})
    t = s.replace(max_concurrent_runs=3)
    assert (s.max_concurrent_runs, t.max_concurrent_runs) == (50, 3)
    with pytest.raises(AttributeError):
        s.max_concurrent_runs = 4  # type: ignore[misc]
    assert t.heartbeat_seconds == pytest.approx(10.0)


def test_an_unknown_log_format_is_config_invalid(tmp_path: Path) -> None:
    with pytest.raises(DevflowError) as caught:
        Settings.load(env={"DEVFLOW_HOME": str(tmp_path), "DEVFLOW_LOG_FORMAT": "xml"})
    assert caught.value.code is Code.CONFIG_INVALID


def test_the_sandbox_settings(tmp_path: Path) -> None:
    s = Settings.load(env={"DEVFLOW_HOME": str(tmp_path)})
    assert (s.allow_unsandboxed, s.bwrap) == (False, "bwrap")
    _config(tmp_path, "allow_unsandboxed: true\nbwrap: /opt/bwrap\n")
    s = Settings.load(env={"DEVFLOW_HOME": str(tmp_path)})
    assert (s.allow_unsandboxed, s.bwrap) == (True, "/opt/bwrap")
    s = Settings.load(env={"DEVFLOW_HOME": str(tmp_path), "DEVFLOW_ALLOW_UNSANDBOXED": "0",
                           "DEVFLOW_BWRAP": "/usr/bin/bwrap"})
    assert (s.allow_unsandboxed, s.bwrap) == (False, "/usr/bin/bwrap")
    for env in ({"DEVFLOW_ALLOW_UNSANDBOXED": "maybe"},):
        with pytest.raises(DevflowError) as caught:
            Settings.load(env={"DEVFLOW_HOME": str(tmp_path), **env})
        assert caught.value.code is Code.CONFIG_INVALID
    _config(tmp_path, "bwrap: ' '\n")
    with pytest.raises(DevflowError) as caught:
        Settings.load(env={"DEVFLOW_HOME": str(tmp_path)})
    assert caught.value.code is Code.CONFIG_INVALID
