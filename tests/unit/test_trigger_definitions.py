"""Trigger files: checked like templates (file, line and pointer of every problem), refused
YAML features included; a webhook trigger accepted and checked."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from devflow import backends
from devflow.catalog import Catalog, Dirs
from devflow.definitions import DefinitionError
from devflow.errors import Code, DevflowError

NIGHTLY = """\
name: nightly
template: quick@1
repo: /srv/app
base: main
requirements: |
  Tidy the code base ({date}, tick {scheduled_at} of {trigger}).
bindings:
  implementer: scripted-implementer
schedule:
  cron: "30 2 * * *"
  timezone: Europe/Berlin
  catchup: latest
  overlap: buffer_one
  jitter: 2m
"""


def _catalog(directory: Path) -> Catalog:
    return Catalog(Dirs.with_builtins(triggers=[directory]),
                   check_persona_options=backends.check_options)


def _write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_a_schedule_trigger_loads_with_its_policies(tmp_path: Path) -> None:
    _write(tmp_path, "nightly.yaml", NIGHTLY)
    trigger = _catalog(tmp_path).trigger("nightly")
    assert trigger.schedule is not None
    assert (trigger.schedule.cron, trigger.schedule.timezone, trigger.schedule.catchup,
            trigger.schedule.overlap, trigger.schedule.jitter, trigger.schedule.grace) == \
        ("30 2 * * *", "Europe/Berlin", "latest", "buffer_one", 120.0, 300.0)
    assert dict(trigger.bindings) == {"implementer": "scripted-implementer"}


def test_jitter_must_be_shorter_than_grace(tmp_path: Path) -> None:
    _write(tmp_path, "nightly.yaml", NIGHTLY.replace("jitter: 2m", "jitter: 2m\n  grace: 2m"))
    with pytest.raises(DefinitionError) as caught:
        _catalog(tmp_path).trigger("nightly")
    assert "nightly.yaml:14: at /schedule/jitter" in caught.value.message


@pytest.mark.parametrize(("change", "where", "words"), [
    (('cron: "30 2 * * *"', 'cron: "30 25 * * *"'), ":10: at /schedule/cron", "Bad hour"),
    (("Europe/Berlin", "Europe/Atlantis"), ":11: at /schedule/timezone", "unknown time zone"),
    (("catchup: latest", "catchup: sometimes"), ":12: at /schedule/catchup", "sometimes"),
    (("jitter: 2m", "jitter: soon"), ":14: at /schedule/jitter", "not a duration"),
    (("repo: /srv/app", "repo: srv/app"), ":3: at /repo", "absolute path"),
    (("({date}", "({date.year}"), ":5: at /requirements", "not a field of a tick"),
    (("template: quick@1", "template: nightly-flow"), ":2: at /template", "no template"),
    (("implementer: scripted", "planner: scripted"), ":8: at /bindings/planner",
     "no role 'planner'"),
    (("implementer: scripted-implementer", "implementer: ghost"), ":8: at /bindings/implementer",
     "no persona ghost"),
])
def test_each_problem_names_its_file_line_and_pointer(tmp_path: Path, change: tuple[str, str],
                                                      where: str, words: str) -> None:
    assert change[0] in NIGHTLY
    path = _write(tmp_path, "nightly.yaml", NIGHTLY.replace(*change))
    catalog = _catalog(tmp_path)
    with pytest.raises(DevflowError) as caught:
        catalog.check_file(path, "trigger")
    assert f"{path}{where}" in caught.value.message, caught.value.message
    assert words in caught.value.message
    assert [b.path for b in catalog.broken_of("trigger")] == [path]  # listed, not hidden


def test_yaml_aliases_are_refused_in_trigger_files(tmp_path: Path) -> None:
    path = _write(tmp_path, "nightly.yaml", NIGHTLY.replace(
        "base: main", "base: &b main\ndescription: *b"))
    with pytest.raises(DevflowError) as caught:
        _catalog(tmp_path).check_file(path, "trigger")
    assert caught.value.code is Code.YAML_INVALID and "anchor" in caught.value.message


def test_a_trigger_is_a_schedule_or_a_webhook(tmp_path: Path) -> None:
    path = _write(tmp_path, "both.yaml", NIGHTLY + "webhook: {source: github, "
                                                   "secret_env: HOOK_SECRET}\n")
    with pytest.raises(DefinitionError):
        _catalog(tmp_path).check_file(path, "trigger")


def test_a_webhook_trigger_is_checked_and_served(tmp_path: Path) -> None:
    body = NIGHTLY.split("schedule:", maxsplit=1)[0].replace("nightly", "labelled").replace(
        "Tidy the code base ({date}, tick {scheduled_at} of {trigger}).",
        "Work on {repository}#{number}: {title} ({label}, by {sender}).")
    _write(tmp_path, "labelled.yaml", body + textwrap.dedent("""\
        webhook:
          source: github
          secret_env: DEVFLOW_HOOK_SECRET
          events: [issues.labeled]
          filter: {label.name: agent}
          ignore_senders: [devflow-bot]
        """))
    trigger = _catalog(tmp_path).trigger("labelled")
    assert trigger.kind == "webhook"
    assert trigger.webhook is not None and dict(trigger.webhook.filter) == {"label.name": "agent"}
    assert trigger.webhook.ignore_senders == ("devflow-bot",)
    no_secret = _write(tmp_path / "other", "x.yaml", body + "webhook: {source: github}\n")
    with pytest.raises(DefinitionError) as caught:
        _catalog(tmp_path / "other").check_file(no_secret, "trigger")
    assert "secret_env" in caught.value.message
    # a permission cannot be checked offline; a tick's field is not a delivery's
    asks = _write(tmp_path / "perm", "p.yaml", body + "webhook: {source: github, "
                  "secret_env: S, actor_permission: write}\n")
    with pytest.raises(DefinitionError) as refused:
        _catalog(tmp_path / "perm").check_file(asks, "trigger")
    assert "senders" in str(refused.value.to_json())
    ticky = _write(tmp_path / "tick", "t.yaml", body.replace("{title}", "{scheduled_at}")
                   + "webhook: {source: github, secret_env: S}\n")
    with pytest.raises(DefinitionError) as wrong:
        _catalog(tmp_path / "tick").check_file(ticky, "trigger")
    assert "not a field of a delivery" in str(wrong.value.to_json())


def test_the_same_name_twice_with_other_contents_is_a_conflict(tmp_path: Path) -> None:
    _write(tmp_path / "a", "nightly.yaml", NIGHTLY)
    _write(tmp_path / "b", "nightly.yaml", NIGHTLY.replace("catchup: latest", "catchup: all"))
    catalog = Catalog(Dirs.with_builtins(triggers=[tmp_path / "a", tmp_path / "b"]))
    with pytest.raises(DevflowError) as caught:
        catalog.trigger("nightly")
    assert caught.value.code is Code.TRIGGER_CONFLICT
    with pytest.raises(DevflowError) as missing:
        catalog.trigger("nightlyy")
    assert missing.value.code is Code.TRIGGER_NOT_FOUND
