"""The catalog: every template, persona and schema devflow can see.

Built-ins come from the checkout's ``templates/``, ``personas/`` and ``schemas/``;
users add directories (``--templates-dir`` or ``DEVFLOW_TEMPLATES_DIR`` and the
like). The same ``name@version`` defined twice with different contents is a
conflict, never a silent override. A broken file does not hide the others: it is
kept with its error, and named when a lookup misses.

What is checked once per version of a file is remembered (``devflow.memo``): a YAML
file's values, a definition's pass of its meta-schema and of its backend's option
checks, a schema file's pass of Draft 2020-12. The cross-checks (roles, gates,
schema ids, durations, artifact paths) run every time: they depend on the other
files, and cost little.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

from devflow import definitions, yamlsource
from devflow import memo as memos
from devflow.definitions import Persona, Template
from devflow.errors import Code, DevflowError
from devflow.schemas import SchemaRegistry
from devflow.yamlsource import Source

if TYPE_CHECKING:
    from devflow.triggerdefs import Trigger

BUILTIN_ROOT: Final = Path(__file__).resolve().parent.parent

D = TypeVar("D", Template, Persona)


@dataclass(frozen=True, slots=True)
class Dirs:
    templates: tuple[Path, ...]
    personas: tuple[Path, ...]
    schemas: tuple[Path, ...]
    #: none are built in: a trigger names a repository of its own
    triggers: tuple[Path, ...] = ()

    @classmethod
    def with_builtins(cls, templates: Iterable[Path] = (), personas: Iterable[Path] = (),
                      schemas: Iterable[Path] = (), triggers: Iterable[Path] = ()) -> Dirs:
        return cls(templates=(BUILTIN_ROOT / "templates", *templates),
                   personas=(BUILTIN_ROOT / "personas", *personas),
                   schemas=(BUILTIN_ROOT / "schemas", *schemas), triggers=tuple(triggers))


@dataclass(frozen=True, slots=True)
class Broken:
    path: Path
    error: DevflowError
    name: str
    kind: str


class _Shelf(Generic[D]):
    """Definitions of one kind, by name and version, from several directories."""

    def __init__(self, kind: str, conflict: Code, not_found: Code) -> None:
        self.kind, self._conflict, self._not_found = kind, conflict, not_found
        self.items: dict[tuple[str, str], D] = {}
        self.broken: list[Broken] = []
        self.conflicts: dict[tuple[str, str], DevflowError] = {}

    def add(self, item: D) -> None:
        """Keep ``item``; the same name@version with another hash is recorded as a conflict."""
        key = (item.name, item.version)
        earlier = self.items.get(key)
        if earlier is not None and earlier.hash != item.hash:
            error = DevflowError(
                self._conflict,
                f"{self.kind} {item.ref} is defined twice with different contents: "
                f"{earlier.source} and {item.source}",
                hint=f"give the changed {self.kind} a new version instead of redefining "
                     f"{item.ref}", ref=item.ref)
            self.conflicts[key] = error
            raise error
        self.items.setdefault(key, item)

    def all(self) -> list[D]:
        return sorted(self.items.values(), key=lambda d: (d.name, _version_key(d.version)))

    def get(self, ref: str) -> D:
        name, version = definitions.parse_ref(ref, self.kind)
        versions = [d for d in self.all() if d.name == name]
        if version is not None:
            versions = [d for d in versions if d.version == version]
        if versions:
            chosen = versions[-1]
            conflict = self.conflicts.get((chosen.name, chosen.version))
            if conflict is not None:
                raise conflict
            return chosen
        broken = [b for b in self.broken if b.name == name]
        if broken:
            raise broken[0].error
        known = ", ".join(sorted({d.ref for d in self.items.values()})) or "none"
        close = _close(name, {d.name for d in self.items.values()})
        raise DevflowError(self._not_found, f"no {self.kind} {ref}",
                           hint=(f"did you mean {close[0]}? " if close else "")
                           + f"known {self.kind}s: {known}", ref=ref)


def _close(name: str, known: Iterable[str]) -> list[str]:
    """The known name closest to a misspelt one, if any (difflib loaded on a miss only)."""
    import difflib  # noqa: PLC0415 - see the docstring
    return difflib.get_close_matches(name, sorted(known), n=1)


class _Triggers:
    """Triggers by name: a name is one trigger (its ticks are keyed by it), so the same
    name defined twice with different contents is a conflict, never an override."""

    def __init__(self) -> None:
        self.items: dict[str, Trigger] = {}
        self.broken: list[Broken] = []
        self.conflicts: dict[str, DevflowError] = {}

    def add(self, item: Trigger) -> None:
        earlier = self.items.get(item.name)
        if earlier is not None and earlier.hash != item.hash:
            error = DevflowError(Code.TRIGGER_CONFLICT, f"trigger {item.name} is defined twice "
                                 f"with different contents: {earlier.source} and "
                                 f"{item.source}", hint="rename one of them", ref=item.name)
            self.conflicts[item.name] = error
            raise error
        self.items.setdefault(item.name, item)

    def get(self, name: str) -> Trigger:
        if name in self.conflicts:
            raise self.conflicts[name]
        if name in self.items:
            return self.items[name]
        broken = [b for b in self.broken if b.name == name]
        if broken:
            raise broken[0].error
        known = ", ".join(sorted(self.items)) or "none"
        close = _close(name, self.items)
        raise DevflowError(Code.TRIGGER_NOT_FOUND, f"no trigger {name}",
                           hint=(f"did you mean {close[0]}? " if close else "")
                           + f"known triggers: {known} (trigger files go in "
                             "$DEVFLOW_HOME/triggers or --triggers-dir)", ref=name)


def _plain_json(data: Any) -> bool:
    """Whether ``data`` comes back the same through JSON (no dates, tuples or number keys,
    which YAML can give): only then can it be remembered, or stand for its JSON text."""
    try:
        return bool(json.loads(json.dumps(data)) == data)
    except (TypeError, ValueError):
        return False


def _version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Natural order: 2 < 10, 1.2 < 1.10, numbers before words in each part."""
    parts = re.split(r"[._-]", version)
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts)


def _yaml_files(dirs: Sequence[Path]) -> list[Path]:
    files: list[Path] = []
    for directory in dirs:
        if directory.is_file():
            files.append(directory)
        elif directory.is_dir():
            files.extend(sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]))
    return files


def _shelve(shelf: _Shelf[D], path: Path, read: Callable[[Path], Source],
            load: Callable[[Source], D]) -> None:
    source: Source | None = None
    try:
        source = read(path)
        shelf.add(load(source))
    except DevflowError as exc:
        if exc.code in (Code.TEMPLATE_VERSION_CONFLICT, Code.PERSONA_VERSION_CONFLICT):
            return  # recorded on the shelf against that name@version
        data = source.data if source is not None else None
        name = data.get("name") if isinstance(data, dict) else None
        shelf.broken.append(Broken(path, exc, str(name) if name else path.stem.split(".")[0],
                                   shelf.kind))


class Catalog:
    """Templates, personas and schemas, loaded once from their directories."""

    def __init__(self, dirs: Dirs,
                 check_persona_options: Callable[[str, Mapping[str, Any]],
                                                 list[definitions.Problem]] | None = None,
                 memo: memos.Memo | None = None) -> None:
        self.dirs = dirs
        self._check_options = check_persona_options
        #: what was checked before, in this process (no file) or since the file was made
        self.memo = memo or memos.Memo(None)
        self._stored_personas: dict[str, Persona] = {}
        for directory in (*dirs.templates, *dirs.personas, *dirs.schemas, *dirs.triggers):
            if not directory.exists():
                raise DevflowError(Code.FILE_NOT_FOUND, f"definition directory {directory} "
                                   f"does not exist", hint="check --templates-dir, "
                                   "--personas-dir, --schemas-dir, --triggers-dir and "
                                   "DEVFLOW_*_DIR")

    @functools.cached_property
    def schemas(self) -> SchemaRegistry:
        registry = SchemaRegistry.from_dirs(list(self.dirs.schemas), self.memo)
        self.memo.save()
        return registry

    @functools.cached_property
    def _templates(self) -> _Shelf[Template]:
        shelf: _Shelf[Template] = _Shelf("template", Code.TEMPLATE_VERSION_CONFLICT,
                                         Code.TEMPLATE_NOT_FOUND)
        for path in _yaml_files(self.dirs.templates):
            _shelve(shelf, path, self.read, self.load_template)
        self.memo.save()
        return shelf

    @functools.cached_property
    def _personas(self) -> _Shelf[Persona]:
        shelf: _Shelf[Persona] = _Shelf("persona", Code.PERSONA_VERSION_CONFLICT,
                                        Code.PERSONA_NOT_FOUND)
        for path in _yaml_files(self.dirs.personas):
            _shelve(shelf, path, self.read, self.load_persona)
        self.memo.save()
        return shelf

    @functools.cached_property
    def _triggers(self) -> _Triggers:
        shelf = _Triggers()
        for path in _yaml_files(self.dirs.triggers):
            source: Source | None = None
            try:
                source = self.read(path)
                shelf.add(self.load_trigger(source))
            except DevflowError as exc:
                if exc.code is Code.TRIGGER_CONFLICT:
                    continue  # recorded on the shelf against that name
                data = source.data if source is not None else None
                name = data.get("name") if isinstance(data, dict) else None
                shelf.broken.append(Broken(path, exc, str(name) if name else path.stem,
                                           "trigger"))
        self.memo.save()
        return shelf

    def read(self, path: Path) -> Source:
        """A definition file as a ``Source``: its values remembered, or parsed (and then
        remembered when they are plain JSON, which any valid definition is)."""
        text = yamlsource.read(path)
        key = memos.key("yaml", text)
        data = self.memo.get(key)
        if data is not None:
            return Source(path, data["data"], None, text)
        source = yamlsource.parse_yaml(text, path)
        if _plain_json(source.data):
            self.memo.put(key, {"data": source.data})
        return source

    def load_template(self, source: Source) -> Template:
        key = self._checked("template", source.data)
        checked = key is not None and bool(self.memo.get(key))
        template = definitions.parse_template(source, self.schemas, checked=checked)
        if key is not None and not checked:
            self.memo.put(key, True)
        return template

    def load_persona(self, source: Source) -> Persona:
        kind = "persona" if self._check_options is None else "persona+options"
        key = self._checked(kind, source.data)
        checked = key is not None and bool(self.memo.get(key))
        persona = definitions.parse_persona(source, self.schemas, self._check_options,
                                            checked=checked)
        if key is not None and not checked:
            self.memo.put(key, True)
        return persona

    def load_trigger(self, source: Source) -> Trigger:
        """A trigger, cross-checked against the templates and personas it names."""
        from devflow import triggerdefs  # noqa: PLC0415 - only where triggers are read
        trigger = triggerdefs.parse_trigger(source, self.schemas)
        problems: list[definitions.Problem] = []
        try:
            template = self.template(trigger.template)
        except DevflowError as exc:
            problems.append(definitions.Problem(Code.DEFINITION_INVALID, ("template",),
                                                exc.message))
        else:
            for role, persona in trigger.bindings.items():
                if role not in template.roles:
                    problems.append(definitions.Problem(
                        Code.UNKNOWN_ROLE, ("bindings", role), f"{template.ref} has no role "
                        f"{role!r} (roles: {', '.join(sorted(template.roles))})"))
                    continue
                try:
                    self.persona(persona)
                except DevflowError as exc:
                    problems.append(definitions.Problem(Code.DEFINITION_INVALID,
                                                        ("bindings", role), exc.message))
        if problems:
            raise definitions.DefinitionError(source, problems)
        return trigger

    def _checked(self, kind: str, data: Any) -> str | None:
        """The key under which ``data`` passing its meta-schema (against these schemas)
        is remembered; None when ``data`` is not plain JSON (then it is always checked)."""
        if not _plain_json(data):
            return None
        return memos.key(f"{kind}-checked", self.schemas.digest,
                        json.dumps(data, sort_keys=True, separators=(",", ":")))

    def load_persona_definition(self, definition: Mapping[str, Any]) -> Persona:
        """A persona from the definition a binding stored when its run started (cached)."""
        digest = definitions.definition_hash(definition)
        persona = self._stored_personas.get(digest)
        if persona is None:
            persona = self.load_persona(Source(None, dict(definition), None))
            self._stored_personas[digest] = persona
            self.memo.save()
        return persona

    def templates(self) -> list[Template]:
        return self._templates.all()

    def triggers(self) -> list[Trigger]:
        return sorted(self._triggers.items.values(), key=lambda t: t.name)

    def trigger(self, name: str) -> Trigger:
        return self._triggers.get(name)

    def personas(self) -> list[Persona]:
        return self._personas.all()

    def broken(self) -> list[Broken]:
        return [*self.broken_of("template"), *self.broken_of("persona"),
                *self.broken_of("schema")]

    def broken_of(self, kind: str) -> list[Broken]:
        """The files of one kind left out, and why; loads only that kind."""
        if kind == "template":
            return list(self._templates.broken)
        if kind == "persona":
            return list(self._personas.broken)
        if kind == "trigger":
            return list(self._triggers.broken)
        return [Broken(path, error, path.stem, "schema") for path, error in self.schemas.broken]

    def conflicts(self, kind: str | None = None) -> list[DevflowError]:
        """name@version defined twice with different contents (of one kind, if given)."""
        found = [*self._templates.conflicts.values()] if kind in (None, "template") else []
        found += [*self._triggers.conflicts.values()] if kind == "trigger" else []
        return found + ([*self._personas.conflicts.values()] if kind in (None, "persona")
                        else [])

    def template(self, ref: str) -> Template:
        return self._templates.get(ref)

    def persona(self, ref: str) -> Persona:
        return self._personas.get(ref)

    def check_file(self, path: Path, kind: str) -> Template | Persona | Trigger:
        """Load one file as ``kind`` and check it against what the catalog holds."""
        source = yamlsource.load_yaml(path)
        if kind == "trigger":
            trigger = self.load_trigger(source)
            self._triggers.add(trigger)
            return trigger
        if kind == "template":
            template = self.load_template(source)
            self._templates.add(template)
            return template
        persona = self.load_persona(source)
        self._personas.add(persona)
        return persona
