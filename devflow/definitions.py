"""Templates and personas: parsed, checked against their meta-schemas, cross-checked, hashed.

A definition is first validated against ``devflow/template@1`` or ``devflow/persona@1``
(shipped in ``schemas/devflow/``), then cross-checked: unique phase keys, roles the
template defines, schemas that exist, artifact paths that stay in the worktree,
gates that are defined, durations that parse. Every problem names the file, the line
and the JSON pointer. The hash is the sha256 of the canonical JSON (sorted keys, no
whitespace) of the definition as written.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any, Final

from devflow import durations
from devflow.errors import Code, DevflowError
from devflow.schemas import SchemaRegistry, parts, pointer
from devflow.yamlsource import Source

TEMPLATE_SCHEMA: Final = "devflow/template@1"
PERSONA_SCHEMA: Final = "devflow/persona@1"
PHASE_PLAN_SCHEMA: Final = "dev/phase-plan@1"
ACTIONS: Final = ("approve", "request_changes", "reject", "abort")
DEFAULT_MAX_REPAIRS: Final = 2
_REF: Final = re.compile(r"^(?P<name>[a-z][a-z0-9_-]*)(?:@(?P<version>[0-9A-Za-z._-]+))?$")


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def definition_hash(definition: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON; ``version: 1`` and ``version: "1"`` hash alike."""
    body = dict(definition)
    if "version" in body:
        body["version"] = str(body["version"])
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


def parse_ref(ref: str, what: str = "template") -> tuple[str, str | None]:
    """``name`` or ``name@version`` -> (name, version or None)."""
    match = _REF.match(ref.strip())
    if not match:
        raise DevflowError(Code.INVALID_INPUT, f"{ref!r} is not a {what} reference",
                           hint="write NAME or NAME@VERSION, e.g. development@1")
    return match["name"], match["version"]


@dataclass(frozen=True, slots=True)
class Problem:
    code: Code
    path: tuple[str | int, ...]
    message: str


@dataclass(frozen=True, slots=True)
class ArtifactSpec:
    path: str
    schema: str


@dataclass(frozen=True, slots=True)
class EscalationStep:
    after: float
    audit_reason: str
    to: tuple[str, ...] = ()
    keep_previous: bool = True
    action: str | None = None


@dataclass(frozen=True, slots=True)
class GateDef:
    key: str
    message: str
    options: tuple[str, ...] = ACTIONS
    approvers: tuple[str, ...] = ()
    timeout: float | None = None
    warn_before: float | None = None
    escalation: tuple[EscalationStep, ...] = ()
    sections: str | None = None


@dataclass(frozen=True, slots=True)
class PhaseDef:
    key: str
    title: str
    roles: tuple[str, ...]
    instructions: str
    artifact: ArtifactSpec | None = None
    gates: tuple[str, ...] = ()
    timeout: float | None = None
    max_repairs: int = DEFAULT_MAX_REPAIRS

    @property
    def role(self) -> str:
        """The role whose agent does the phase: the first one named."""
        return self.roles[0]

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"key": self.key, "title": self.title, "roles": list(self.roles),
                                "instructions": self.instructions, "gates": list(self.gates),
                                "max_repairs": self.max_repairs, "timeout": self.timeout}
        if self.artifact:
            body["artifact"] = {"path": self.artifact.path, "schema": self.artifact.schema}
        return body

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> PhaseDef:
        artifact = body.get("artifact")
        return cls(key=body["key"], title=body["title"], roles=tuple(body["roles"]),
                   instructions=body.get("instructions", ""),
                   artifact=(ArtifactSpec(artifact["path"], artifact["schema"])
                             if artifact else None),
                   gates=tuple(body.get("gates", ())), timeout=body.get("timeout"),
                   max_repairs=int(body.get("max_repairs", DEFAULT_MAX_REPAIRS)))


@dataclass(frozen=True, slots=True)
class Template:
    name: str
    version: str
    description: str
    roles: Mapping[str, str]
    phases: tuple[PhaseDef, ...]
    gates: Mapping[str, GateDef]
    setup: tuple[tuple[str, ...], ...]
    definition: Mapping[str, Any] = field(repr=False)
    hash: str
    source: Path | None = None

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True, slots=True)
class SandboxDef:
    """A persona's ``sandbox``: off (``sandbox: none``), or its network and the paths it adds
    to what its agent sees (``~`` is the home of the account running devflow)."""

    enabled: bool = True
    network: str = "host"
    read_only: tuple[str, ...] = ()
    writable: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any] | str:
        if not self.enabled:
            return "none"
        return {"network": self.network, "read_only": list(self.read_only),
                "writable": list(self.writable)}


@dataclass(frozen=True, slots=True)
class Persona:
    name: str
    version: str
    description: str
    roles: tuple[str, ...]
    backend: str
    model: str | None
    prompt: str
    options: Mapping[str, Any]
    env_allow: tuple[str, ...]
    env_set: Mapping[str, str]
    definition: Mapping[str, Any] = field(repr=False)
    hash: str
    source: Path | None = None
    sandbox: SandboxDef = SandboxDef()

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


class DefinitionError(DevflowError):
    """A definition with one or more problems; each names its file, line and pointer."""

    def __init__(self, source: Source, problems: list[Problem]) -> None:
        self.problems = problems
        self.places = [(source.where(p.path), pointer(p.path) or "/", p) for p in problems]
        lines = [f"{where}: at {ptr}: {p.message}" for where, ptr, p in self.places]
        first = problems[0]
        super().__init__(
            first.code, lines[0] if len(lines) == 1 else
            f"{len(lines)} problems:\n  " + "\n  ".join(lines),
            hint=_HINTS.get(first.code, "fix the definition at the place named"),
            file=str(source.path) if source.path else None,
            problems=[{"code": str(p.code), "where": where, "pointer": ptr, "message": p.message}
                      for where, ptr, p in self.places],
        )


_HINTS: Final[Mapping[Code, str]] = MappingProxyType({
    Code.DEFINITION_INVALID: "compare the definition with schemas/devflow/ (the meta-schemas)",
    Code.BACKEND_OPTION_INVALID: "docs/backends.md lists each backend's options "
                                 "(`devflow backends show NAME` prints their schema)",
    Code.UNKNOWN_ROLE: "a phase may only name roles listed under the template's `roles`",
    Code.UNKNOWN_SCHEMA: "`devflow schemas list` shows the schema ids; add yours with "
                         "--schemas-dir",
    Code.UNKNOWN_GATE: "a phase may only name gates defined under the template's `gates`",
    Code.DUPLICATE_PHASE: "give every phase its own key",
    Code.PATH_ESCAPE: "artifact paths are relative to the worktree, without `..`, e.g. "
                      ".devflow/spec.json",
    Code.BAD_DURATION: "write a number with a unit: 90s, 30m, 24h, 1h30m",
    Code.SCHEMA_INVALID: "a $ref names another schema by its id (common/finding@1) or a "
                         "place in the same schema (#/$defs/item); `devflow schemas list` "
                         "shows the ids",
})


def _meta_problems(schemas: SchemaRegistry, schema_id: str, data: Any) -> list[Problem]:
    issues = schemas.validate(schema_id, data)
    return [Problem(Code.DEFINITION_INVALID, parts(i.pointer), i.message) for i in issues]


def check_artifact_path(path: str) -> str | None:
    """Why ``path`` could leave the worktree, or None when it is a safe relative path."""
    if not path or path.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", path):
        return f"artifact path {path!r} must be relative to the worktree"
    parts = PurePosixPath(path.replace("\\", "/")).parts
    if ".." in parts:
        return f"artifact path {path!r} must not contain `..`"
    if parts and parts[0] == ".git":
        return f"artifact path {path!r} must not point into .git"
    return None


def _duration(value: Any, path: tuple[str | int, ...], problems: list[Problem]) -> float | None:
    if value is None:
        return None
    try:
        return durations.parse_duration(value)
    except DevflowError:
        problems.append(Problem(Code.BAD_DURATION, path, f"{value!r} is not a duration"))
        return None


def parse_template(source: Source, schemas: SchemaRegistry, *, checked: bool = False) -> Template:
    """The template ``source`` defines; ``checked``: its data is known to pass the
    meta-schema (``devflow.catalog`` remembers that), so only the cross-checks run."""
    data = source.data
    if not checked and (problems := _meta_problems(schemas, TEMPLATE_SCHEMA, data)):
        raise DefinitionError(source, problems)
    problems = []
    roles = {str(k): str((v or {}).get("description", "")) for k, v in data["roles"].items()}
    gates = {key: _gate(key, body, problems) for key, body in (data.get("gates") or {}).items()}
    phases, seen = [], set()
    for i, body in enumerate(data["phases"]):
        at: tuple[str | int, ...] = ("phases", i)
        phase = _phase(body, at, problems)
        if phase.key in seen:
            problems.append(Problem(Code.DUPLICATE_PHASE, (*at, "key"),
                                    f"phase key {phase.key!r} is used twice"))
        seen.add(phase.key)
        problems.extend(check_phase(phase, at, roles, gates, schemas))
        phases.append(phase)
    setup = tuple(tuple(str(a) for a in argv) for argv in data.get("setup") or ())
    if problems:
        raise DefinitionError(source, problems)
    return Template(
        name=data["name"], version=str(data["version"]),
        description=data.get("description", ""), roles=MappingProxyType(roles),
        phases=tuple(phases), gates=MappingProxyType(gates), setup=setup,
        definition=data, hash=definition_hash(data), source=source.path,
    )


def _sandbox(value: Any) -> SandboxDef | Problem:
    """The persona's ``sandbox`` (its shape is the meta-schema's): paths must be absolute
    (or start with ``~``), so that what an agent sees never depends on where devflow runs."""
    if value is None:
        return SandboxDef()
    if value == "none":
        return SandboxDef(enabled=False)
    for key in ("read_only", "writable"):
        for index, path in enumerate(value.get(key) or ()):
            if not (path.startswith(("/", "~/")) or path == "~"):
                return Problem(Code.DEFINITION_INVALID, ("sandbox", key, index),
                               f"{path!r}: write an absolute path (or one starting with ~/)")
    return SandboxDef(network=value.get("network", "host"),
                      read_only=tuple(value.get("read_only") or ()),
                      writable=tuple(value.get("writable") or ()))


def _phase(body: Mapping[str, Any], at: tuple[str | int, ...], problems: list[Problem]) -> PhaseDef:
    artifact = body.get("artifact")
    return PhaseDef(
        key=body["key"], title=body.get("title") or body["key"], roles=tuple(body["roles"]),
        instructions=body.get("instructions", ""),
        artifact=ArtifactSpec(artifact["path"], artifact["schema"]) if artifact else None,
        gates=tuple(body.get("gates") or ()),
        timeout=_duration(body.get("timeout"), (*at, "timeout"), problems),
        max_repairs=int(body.get("max_repairs", DEFAULT_MAX_REPAIRS)),
    )


def check_phase(phase: PhaseDef, at: tuple[str | int, ...], roles: Mapping[str, str],
                gates: Mapping[str, GateDef], schemas: SchemaRegistry) -> list[Problem]:
    """Cross-checks of one phase against its template; also used for planned phases."""
    problems = []
    for j, role in enumerate(phase.roles):
        if role not in roles:
            problems.append(Problem(Code.UNKNOWN_ROLE, (*at, "roles", j),
                                    f"role {role!r} is not a role of the template "
                                    f"(roles: {', '.join(sorted(roles))})"))
    if phase.artifact is not None:
        if phase.artifact.schema not in schemas:
            broken = schemas.broken_error(phase.artifact.schema)
            problems.append(Problem(Code.UNKNOWN_SCHEMA, (*at, "artifact", "schema"),
                                    f"schema {phase.artifact.schema!r} is broken: "
                                    f"{broken.message}" if broken else
                                    f"no schema with id {phase.artifact.schema!r}"))
        else:
            problems += [Problem(Code.SCHEMA_INVALID, (*at, "artifact", "schema"),
                                 f"phase {phase.key!r} uses schema {phase.artifact.schema}, "
                                 f"where {dangling}")
                         for dangling in schemas.dangling(phase.artifact.schema)]
        if why := check_artifact_path(phase.artifact.path):
            problems.append(Problem(Code.PATH_ESCAPE, (*at, "artifact", "path"), why))
    for j, gate in enumerate(phase.gates):
        if gate not in gates:
            problems.append(Problem(Code.UNKNOWN_GATE, (*at, "gates", j),
                                    f"gate {gate!r} is not defined under `gates`"))
        elif gate in phase.gates[:j]:
            problems.append(Problem(Code.DEFINITION_INVALID, (*at, "gates", j),
                                    f"gate {gate!r} is named twice"))
    if phase.gates and phase.artifact is None:
        problems.append(Problem(Code.DEFINITION_INVALID, (*at, "gates"),
                                "a gated phase needs an artifact: it is what the approver "
                                "is shown"))
    if phase.timeout is not None and phase.timeout <= 0:
        problems.append(Problem(Code.BAD_DURATION, (*at, "timeout"), "a timeout must be positive"))
    return problems


def _gate(key: str, body: Mapping[str, Any], problems: list[Problem]) -> GateDef:
    at: tuple[str | int, ...] = ("gates", key)
    steps = []
    for i, step in enumerate(body.get("escalation") or ()):
        after = _duration(step["after"], (*at, "escalation", i, "after"), problems)
        steps.append(EscalationStep(
            after=after or 0.0, audit_reason=step["audit_reason"],
            to=tuple(step.get("to") or ()), keep_previous=bool(step.get("keep_previous", True)),
            action=step.get("action")))
    if any(b.after < a.after for a, b in itertools.pairwise(steps)):
        problems.append(Problem(Code.DEFINITION_INVALID, (*at, "escalation"),
                                "escalation steps must be in the order of their `after`"))
    options = tuple(body.get("options") or ACTIONS)
    gate = GateDef(
        key=key, message=body.get("message", ""), options=options,
        approvers=tuple(body.get("approvers") or ()),
        timeout=_duration(body.get("timeout"), (*at, "timeout"), problems),
        warn_before=_duration(body.get("warn_before"), (*at, "warn_before"), problems),
        escalation=tuple(steps), sections=body.get("sections"),
    )
    if gate.timeout is not None and gate.timeout <= 0:
        problems.append(Problem(Code.BAD_DURATION, (*at, "timeout"), "a timeout must be positive"))
    if gate.warn_before is not None and body.get("timeout") is None:
        problems.append(Problem(Code.DEFINITION_INVALID, (*at, "warn_before"),
                                "warn_before needs a timeout to count back from"))
    elif gate.warn_before is not None and gate.timeout and gate.warn_before >= gate.timeout:
        problems.append(Problem(Code.DEFINITION_INVALID, (*at, "warn_before"),
                                "warn_before must be shorter than the timeout"))
    return gate


def gate_of(template_def: Mapping[str, Any], key: str) -> GateDef:
    """The gate ``key`` of a template definition a run stored (already validated)."""
    problems: list[Problem] = []
    return _gate(key, dict(template_def.get("gates") or {})[key], problems)


def parse_persona(source: Source, schemas: SchemaRegistry,
                  check_options: Callable[[str, Mapping[str, Any]], list[Problem]] | None = None,
                  *, checked: bool = False) -> Persona:
    """The persona ``source`` defines; ``checked``: its data is known to pass the
    meta-schema and ``check_options`` (``devflow.catalog`` remembers that).

    ``check_options``: the problems of a persona's ``options`` for its backend (its
    options schema, ``devflow.backends.options``), each at its place in the persona."""
    data = source.data
    if not checked and (problems := _meta_problems(schemas, PERSONA_SCHEMA, data)):
        raise DefinitionError(source, problems)
    options = data.get("options") or {}
    if check_options is not None and not checked and (
            found := check_options(data["backend"], options)):
        raise DefinitionError(source, found)
    env = data.get("env") or {}
    sandbox = _sandbox(data.get("sandbox"))
    if isinstance(sandbox, Problem):
        raise DefinitionError(source, [sandbox])
    return Persona(
        name=data["name"], version=str(data["version"]),
        description=data.get("description", ""), roles=tuple(data["roles"]),
        backend=data["backend"], model=data.get("model"), prompt=data.get("prompt", ""),
        options=MappingProxyType(dict(options)), env_allow=tuple(env.get("allow") or ()),
        env_set=MappingProxyType({k: str(v) for k, v in (env.get("set") or {}).items()}),
        definition=data, hash=definition_hash(data), source=source.path, sandbox=sandbox,
    )
