"""Trigger definitions: parsed, checked against ``devflow/trigger@1``, cross-checked, hashed.

A trigger starts runs of a template on (repo, base) without a person at a shell: on a
``schedule`` (cron in a time zone), or on a ``webhook`` that ``devflow serve`` receives
at ``POST /api/v1/hooks/{trigger}`` (devflow.hooks; a trigger without a secret refuses
to load). A webhook's source is github, gitlab or generic. ``actor_permission``
cannot be checked without calling GitHub's API, which devflow does not: a trigger that
asks for it refuses to load (list the ``senders`` allowed instead).

The cross-checks name the file, the line and the JSON pointer of each problem: the
cron expression parses, the time zone exists, ``jitter`` and ``grace`` are durations
(jitter shorter than grace), the requirements name only the fields of a tick, the
repository is an absolute path. That the template and personas exist is checked by
the catalog, which knows them.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from devflow import cron, durations
from devflow.definitions import DefinitionError, Problem, definition_hash
from devflow.errors import Code, DevflowError
from devflow.schemas import SchemaRegistry
from devflow.yamlsource import Source

TRIGGER_SCHEMA: Final = "devflow/trigger@1"
CATCHUP: Final = ("skip", "latest", "all")
OVERLAP: Final = ("skip", "buffer_one", "allow")
#: the fields of a tick a trigger's requirements may name
FIELDS: Final = ("trigger", "scheduled_at", "scheduled_at_utc", "date", "kind", "fired_by")
#: the fields of a webhook delivery a trigger's requirements may name (devflow.hooks)
HOOK_FIELDS: Final = ("trigger", "event", "delivery", "subject", "repository", "number",
                      "title", "body", "label", "sender", "url")
DEFAULT_GRACE: Final = 300.0


@dataclass(frozen=True, slots=True)
class Schedule:
    cron: str
    timezone: str = "UTC"
    catchup: str = "skip"
    overlap: str = "skip"
    jitter: float = 0.0
    grace: float = DEFAULT_GRACE


@dataclass(frozen=True, slots=True)
class Webhook:
    """Where deliveries come from and which of them start a run (devflow.hooks)."""

    source: str
    secret_env: str
    events: tuple[str, ...] = ()
    #: dotted path in the payload -> the value it must have (compared as text)
    filter: Mapping[str, str] = field(default_factory=dict)
    #: when set, only these senders start runs
    senders: tuple[str, ...] = ()
    #: senders whose deliveries never start a run: the agent's own account
    ignore_senders: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Trigger:
    name: str
    description: str
    template: str
    repo: str
    base: str
    requirements: str
    bindings: Mapping[str, str]
    schedule: Schedule | None
    webhook: Webhook | None
    definition: Mapping[str, Any] = field(repr=False)
    hash: str
    source: Path | None = None

    @property
    def ref(self) -> str:
        return self.name

    @property
    def kind(self) -> str:
        return "schedule" if self.schedule is not None else "webhook"


def parse_trigger(source: Source, schemas: SchemaRegistry) -> Trigger:
    """The trigger ``source`` defines, or a ``DefinitionError`` naming every problem."""
    data = source.data
    issues = schemas.validate(TRIGGER_SCHEMA, data)
    if issues:
        raise DefinitionError(source, [Problem(Code.DEFINITION_INVALID, _split(i.pointer),
                                               i.message) for i in issues])
    problems: list[Problem] = []
    schedule = _schedule(data.get("schedule"), problems)
    webhook = _webhook(data.get("webhook"), problems)
    problems += _requirements(data["requirements"], FIELDS if schedule or not webhook
                              else HOOK_FIELDS, "a tick" if schedule else "a delivery")
    repo = data["repo"]
    if not (repo.startswith(("/", "~/")) or repo == "~"):
        problems.append(Problem(Code.DEFINITION_INVALID, ("repo",),
                                f"{repo!r}: write an absolute path (or one starting with ~/): "
                                "workers and the sweep may run elsewhere"))
    if problems:
        raise DefinitionError(source, problems)
    return Trigger(
        name=data["name"], description=data.get("description", ""), template=data["template"],
        repo=repo, base=data["base"], requirements=data["requirements"],
        bindings=MappingProxyType(dict(data.get("bindings") or {})), schedule=schedule,
        webhook=webhook, definition=data, hash=definition_hash(data), source=source.path)


def _schedule(body: Mapping[str, Any] | None, problems: list[Problem]) -> Schedule | None:
    if body is None:
        return None
    at: tuple[str | int, ...] = ("schedule",)
    if why := cron.check(body["cron"]):
        problems.append(Problem(Code.DEFINITION_INVALID, (*at, "cron"), why))
    zone = body.get("timezone", "UTC")
    if cron.zone(zone) is None:
        problems.append(Problem(Code.DEFINITION_INVALID, (*at, "timezone"),
                                f"unknown time zone {zone!r}; write an IANA name such as "
                                "Europe/Berlin or America/New_York, or UTC"))
    jitter = _duration(body.get("jitter", 0), (*at, "jitter"), problems)
    grace = _duration(body.get("grace", DEFAULT_GRACE), (*at, "grace"), problems)
    if grace is not None and grace <= 0:
        problems.append(Problem(Code.BAD_DURATION, (*at, "grace"), "grace must be positive"))
    if jitter is not None and grace is not None and jitter >= grace:
        problems.append(Problem(Code.DEFINITION_INVALID, (*at, "jitter"),
                                "jitter must be shorter than grace (a jittered tick would "
                                "always be missed)"))
    return Schedule(cron=body["cron"], timezone=zone, catchup=body.get("catchup", "skip"),
                    overlap=body.get("overlap", "skip"), jitter=jitter or 0.0,
                    grace=grace or DEFAULT_GRACE)


def _webhook(body: Mapping[str, Any] | None, problems: list[Problem]) -> Webhook | None:
    if body is None:
        return None
    if "actor_permission" in body:
        problems.append(Problem(Code.DEFINITION_INVALID, ("webhook", "actor_permission"),
                                "a sender's permission cannot be checked without GitHub's "
                                "API, which devflow does not call: list the senders allowed "
                                "instead (senders: [LOGIN, ...])"))
    return Webhook(source=body["source"], secret_env=body["secret_env"],
                   events=tuple(body.get("events") or ()),
                   filter=MappingProxyType({str(k): _scalar(v) for k, v in
                                            (body.get("filter") or {}).items()}),
                   senders=tuple(body.get("senders") or ()),
                   ignore_senders=tuple(body.get("ignore_senders") or ()))


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _duration(value: Any, at: tuple[str | int, ...], problems: list[Problem]) -> float | None:
    if value in (0, "0"):
        return 0.0
    try:
        seconds = durations.parse_duration(value)
    except DevflowError:
        problems.append(Problem(Code.BAD_DURATION, at, f"{value!r} is not a duration"))
        return None
    if seconds < 0:
        problems.append(Problem(Code.BAD_DURATION, at, "a duration cannot be negative"))
        return None
    return seconds


def _requirements(text: str, fields: tuple[str, ...] = FIELDS,
                  what: str = "a tick") -> list[Problem]:
    """The requirements name the fields of a tick (or of a delivery) only, as plain
    ``{name}``: no attribute or index access, no conversions (the text is filled in with
    ``str.format_map``)."""
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        return [Problem(Code.DEFINITION_INVALID, ("requirements",),
                        f"{exc}; write {{{{ and }}}} for literal braces")]
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in fields or spec or conversion:
            return [Problem(Code.DEFINITION_INVALID, ("requirements",),
                            f"{{{name}{'!' + conversion if conversion else ''}"
                            f"{':' + spec if spec else ''}}} is not a field of {what}; "
                            f"the fields are {', '.join('{' + f + '}' for f in fields)} "
                            "(write {{ and }} for literal braces)")]
    return []


def requirements_for(trigger: Trigger, fields: Mapping[str, str]) -> str:
    """The trigger's requirements with the tick's (or the delivery's) fields filled in."""
    names = FIELDS if trigger.schedule is not None else HOOK_FIELDS
    return trigger.requirements.format_map({name: fields.get(name, "") for name in names})


def _split(ptr: str) -> tuple[str | int, ...]:
    parts: list[str | int] = []
    for raw in ptr.split("/")[1:]:
        part = raw.replace("~1", "/").replace("~0", "~")
        parts.append(int(part) if part.isdigit() else part)
    return tuple(parts)
