"""The registry of JSON Schemas by id, with one compiled validator per schema.

Schemas are Draft 2020-12 files (``schemas/**.json``) whose ``$id`` is a short id
such as ``dev/spec@1``. A ``$ref`` names another schema by its id
(``"$ref": "common/finding@1"``), from any directory. ``format`` is checked.

A validator is built once per schema and reused: building one costs several times
what checking an artifact with it does. It is built on the schema with its ``$ref``s
inlined where that is safe (``devflow.schemarefs``): the same errors, 2 to 20 times
faster for the built-in schemas.

jsonschema and referencing are imported when something is validated (or a schema file
checked), not with this module: listing schemas, or reading a definition whose check
is remembered (``devflow.memo``), needs neither.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urljoin

from jsonpointer import JsonPointer

from devflow import jsontext, schemarefs
from devflow import memo as memos
from devflow.errors import Code, DevflowError

if TYPE_CHECKING:
    import jsonschema
    import referencing

SCHEMA_ID: Final = re.compile(r"^[a-z0-9][a-z0-9_-]*(/[a-z0-9][a-z0-9_.-]*)*@[0-9]+$")


@dataclass(frozen=True, slots=True)
class Issue:
    """One validation problem: where in the document (a JSON pointer) and what."""

    pointer: str
    message: str

    def __str__(self) -> str:
        return f"{self.pointer or '/'}: {self.message}"


def pointer(path: Iterable[str | int]) -> str:
    """The JSON pointer (RFC 6901) of a place given as its keys and indexes."""
    return JsonPointer.from_parts(path).path


def parts(ptr: str) -> tuple[str | int, ...]:
    """The keys and indexes of a JSON pointer (digits read as an index)."""
    return tuple(int(p) if p.isdigit() else p for p in JsonPointer(ptr).parts)


@dataclass(frozen=True, slots=True, order=True)
class Dangling:
    """A ``$ref`` that resolves to nothing: the schema it is written in, the ref, why."""

    schema: str
    ref: str
    why: str

    def __str__(self) -> str:
        return f"$ref {self.ref!r} in schema {self.schema} cannot be resolved ({self.why})"


def _why(exc: Exception) -> str:
    import referencing.exceptions  # noqa: PLC0415 - only to check references (module doc)
    if isinstance(exc, referencing.exceptions.PointerToNowhere):
        return "the pointer leads nowhere in the schema"
    if isinstance(exc, referencing.exceptions.NoSuchAnchor):
        return "no such anchor in the schema"
    if isinstance(exc, referencing.exceptions.Unresolvable):
        return "no schema has that id"
    return str(exc)


@dataclass(frozen=True, slots=True)
class SchemaFile:
    id: str
    path: Path
    contents: dict[str, Any]

    @property
    def title(self) -> str:
        return str(self.contents.get("title", ""))


class SchemaRegistry:
    """Schemas by id; ``validate`` uses a validator compiled once per id."""

    def __init__(self, files: Sequence[SchemaFile],
                 broken: Sequence[tuple[Path, DevflowError]] = ()) -> None:
        self._files = {f.id: f for f in files}
        self.broken = list(broken)
        #: ids defined twice with different contents: using one is an error, as for templates
        self.conflicts: dict[str, DevflowError] = {}
        self._validators: dict[str, jsonschema.protocols.Validator] = {}
        self._dangling: dict[str, list[Dangling]] = {}
        #: where answers about these schemas are remembered between processes
        self.memo: memos.Memo | None = None

    @functools.cached_property
    def _registry(self) -> referencing.Registry[Any]:
        import referencing  # noqa: PLC0415 - only to validate (module doc)
        from referencing.jsonschema import DRAFT202012  # noqa: PLC0415 - as above
        resources = [(f.id, DRAFT202012.create_resource(f.contents))
                     for f in self._files.values()]
        # attrs field aliases (retrieve=, ref=) are not seen by mypy's attrs plugin
        return referencing.Registry(  # type: ignore[call-arg]
            retrieve=self._retrieve).with_resources(resources)

    @functools.cached_property
    def digest(self) -> str:
        """A digest of every schema here: what a check against one of them depends on."""
        body = json.dumps(sorted((f.id, f.contents) for f in self._files.values()),
                          sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(body.encode()).hexdigest()

    @classmethod
    def from_dirs(cls, dirs: Sequence[Path], memo: memos.Memo | None = None) -> SchemaRegistry:
        """Every ``*.json`` below ``dirs``; a broken file is kept aside, not fatal to the rest.
        A file whose check ``memo`` remembers is not checked again."""
        files: dict[str, SchemaFile] = {}
        broken: list[tuple[Path, DevflowError]] = []
        conflicts: dict[str, DevflowError] = {}
        for directory in dirs:
            for path in sorted(directory.rglob("*.json")):
                try:
                    schema = load_schema_file(path, memo)
                except DevflowError as exc:
                    broken.append((path, exc))
                    continue
                earlier = files.get(schema.id)
                if earlier is not None and earlier.contents != schema.contents:
                    conflicts[schema.id] = DevflowError(
                        Code.SCHEMA_VERSION_CONFLICT,
                        f"schema {schema.id} is defined twice with different contents: "
                        f"{earlier.path} and {path}",
                        hint="give the changed schema a new version (…@2) instead of redefining it",
                        schema=schema.id)
                    broken.append((path, conflicts[schema.id]))
                    continue
                files.setdefault(schema.id, schema)
        registry = cls(list(files.values()), broken)
        registry.conflicts = conflicts
        registry.memo = memo
        return registry

    def _retrieve(self, uri: str) -> referencing.Resource[Any]:
        import referencing.exceptions  # noqa: PLC0415 - only to validate (module doc)
        from referencing.jsonschema import DRAFT202012  # noqa: PLC0415 - as above
        contents = self._contents_at(uri)
        if contents is None:
            raise referencing.exceptions.NoSuchResource(ref=uri)  # type: ignore[call-arg]
        return DRAFT202012.create_resource(contents)

    def _contents_at(self, uri: str) -> dict[str, Any] | None:
        """The schema a reference resolved to ``uri`` names.

        ``"$ref": "common/finding@1"`` inside ``dev/spec@1`` resolves, by URI rules, to
        ``dev/common/finding@1``; ids form one flat namespace, so each suffix is tried.
        """
        parts = uri.split("/")
        for i in range(len(parts)):
            found = self._files.get("/".join(parts[i:]))
            if found is not None:
                return found.contents
        return None

    def _id_at(self, uri: str) -> str:
        """The id of the schema ``uri`` (without its fragment) names, or ``uri``."""
        parts = uri.partition("#")[0].split("/")
        for i in range(len(parts)):
            if "/".join(parts[i:]) in self._files:
                return "/".join(parts[i:])
        return uri

    def dangling(self, schema_id: str) -> list[Dangling]:
        """Every ``$ref`` that cannot be resolved in ``schema_id`` and in the schemas it
        refers to, transitively: what jsonschema would only find once an instance reaches
        the reference (after an agent ran)."""
        found = self._dangling.get(schema_id)
        if found is None:
            found = self._dangling[schema_id] = self._remembered_dangling(schema_id)
        return found

    def _remembered_dangling(self, schema_id: str) -> list[Dangling]:
        """``_find_dangling``, remembered for this set of schemas (its ``digest``): what
        resolves depends on every schema here, nothing else."""
        if self.memo is None:
            return self._find_dangling(schema_id)
        checked = memos.key("schema-dangling", self.digest, schema_id)
        remembered = self.memo.get(checked)
        if isinstance(remembered, list):
            return [Dangling(*entry) for entry in remembered]
        found = self._find_dangling(schema_id)
        self.memo.put(checked, [[d.schema, d.ref, d.why] for d in found])
        return found

    def _find_dangling(self, schema_id: str) -> list[Dangling]:
        import referencing.exceptions  # noqa: PLC0415 - only to check references (module doc)
        from referencing.jsonschema import DRAFT202012  # noqa: PLC0415 - as above
        found: set[Dangling] = set()
        seen: set[int] = set()
        start = self.get(schema_id).contents
        # (a schema, the resolver and the base URI its references resolve from; the
        # resolver's class is not exported by referencing, hence Any)
        pending: list[tuple[Any, Any, str]] = [
            (start, self._registry.resolver(base_uri=schema_id), schema_id)]
        while pending:
            node, resolver, base = pending.pop()
            if not isinstance(node, dict) or id(node) in seen:
                continue
            seen.add(id(node))
            if isinstance(node.get("$id"), str) and node is not start:
                resolver = resolver.in_subresource(DRAFT202012.create_resource(node))
                base = urljoin(base, node["$id"])
            ref = node.get("$ref")
            if isinstance(ref, str):
                try:
                    resolved = resolver.lookup(ref)
                    target = urljoin(base, ref).partition("#")[0] or base
                except (referencing.exceptions.Unresolvable, ValueError) as exc:
                    found.add(Dangling(self._id_at(base), ref, _why(exc)))
                else:
                    pending.append((resolved.contents, resolved.resolver, target))
            pending.extend((child, resolver, base) for child in schemarefs.subschemas(node))
        return sorted(found)

    def ids(self) -> list[str]:
        return sorted(self._files)

    def __contains__(self, schema_id: object) -> bool:
        return schema_id in self._files and schema_id not in self.conflicts

    def broken_error(self, schema_id: str) -> DevflowError | None:
        """Why the file that defines ``schema_id`` was left out, if one was."""
        return next((error for _, error in self.broken
                     if error.details.get("schema") == schema_id), None)

    def get(self, schema_id: str) -> SchemaFile:
        if schema_id in self.conflicts:
            raise self.conflicts[schema_id]
        try:
            return self._files[schema_id]
        except KeyError:
            if broken := self.broken_error(schema_id):
                raise broken from None
            raise DevflowError(
                Code.SCHEMA_NOT_FOUND, f"no schema with id {schema_id}",
                hint="`devflow schemas list` shows the known ids; extra directories come "
                     "from --schemas-dir or DEVFLOW_SCHEMAS_DIR"
                     + (f" ({len(self.broken)} file(s) were left out as broken: `devflow "
                        "schemas validate` says why)" if self.broken else ""),
            ) from None

    def get_file(self, schema_id: str) -> SchemaFile:
        """The file kept for ``schema_id``, even when another file conflicts with it."""
        return self._files[schema_id]

    def check_refs(self, schema_id: str) -> None:
        """Every ``$ref`` of the schema (and of those it refers to) resolves;
        ``schema_invalid`` names the first that does not."""
        schema = self.get(schema_id)
        for dangling in self.dangling(schema_id)[:1]:
            raise DevflowError(
                Code.SCHEMA_INVALID, f"{schema.path}: {dangling}",
                hint="a $ref names another schema by its id (common/finding@1) or a place "
                     "in this one (#/$defs/item)", schema=schema_id)

    def check_file(self, path: Path) -> SchemaFile:
        """One schema file checked as ``from_dirs`` would keep it, beside the others."""
        schema = load_schema_file(path)
        earlier = self._files.get(schema.id)
        if earlier is not None and earlier.contents != schema.contents:
            raise DevflowError(
                Code.SCHEMA_VERSION_CONFLICT, f"schema {schema.id} is defined with other "
                f"contents in {earlier.path}", hint="give the changed schema a new version "
                "(…@2) instead of redefining it", schema=schema.id)
        others = [f for f in self._files.values() if f.id != schema.id]
        SchemaRegistry([*others, schema]).check_refs(schema.id)
        return schema

    def validator(self, schema_id: str) -> jsonschema.protocols.Validator:
        validator = self._validators.get(schema_id)
        if validator is None:
            import jsonschema  # noqa: PLC0415 - only to validate (module doc)
            contents = schemarefs.inlined(schema_id, self.get(schema_id).contents,
                                          self._contents_at)
            validator = jsonschema.Draft202012Validator(
                contents, registry=self._registry,
                format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
            self._validators[schema_id] = validator
        return validator

    def validate(self, schema_id: str, instance: Any) -> list[Issue]:
        """Every problem of ``instance`` against the schema, most specific first."""
        import referencing.exceptions  # noqa: PLC0415 - only to validate (module doc)
        try:
            errors = list(self.validator(schema_id).iter_errors(instance))
        except referencing.exceptions.Unresolvable as exc:
            raise DevflowError(
                Code.SCHEMA_INVALID, f"schema {schema_id} has a $ref that cannot be resolved: "
                f"{exc}", hint="a $ref names another schema by its id, e.g. common/finding@1",
            ) from exc
        issues = [Issue(pointer(e.absolute_path), e.message) for e in _leaves(errors)]
        return sorted(issues, key=lambda i: (i.pointer, i.message))


def _leaves(errors: Iterable[jsonschema.ValidationError]) -> Iterable[jsonschema.ValidationError]:
    import jsonschema.exceptions  # noqa: PLC0415 - only to validate (module doc)
    # For anyOf/oneOf the interesting errors are the contexts, not "is not valid under".
    for error in errors:
        if error.context:
            best = jsonschema.exceptions.best_match(error.context)
            yield best if best is not None else error
        else:
            yield error


def load_schema_file(path: Path, memo: memos.Memo | None = None) -> SchemaFile:
    """A schema file, checked against Draft 2020-12 unless ``memo`` remembers that these
    bytes passed."""
    try:
        raw = path.read_bytes()
        contents = jsontext.loads(raw)
    except OSError as exc:
        raise DevflowError(Code.FILE_NOT_FOUND, f"cannot read schema file {path}: "
                           f"{exc.strerror}", hint="check the path and its permissions") from exc
    except jsontext.BadJSON as exc:
        where = f"{path}:{exc.line}:{exc.column}" if exc.line else str(path)
        raise DevflowError(Code.SCHEMA_INVALID, f"{where}: {exc}",
                           hint="a schema file is one JSON object (UTF-8, at most "
                                f"{jsontext.MAX_DEPTH} levels deep)", file=str(path)) from exc
    if not isinstance(contents, dict):
        raise DevflowError(Code.SCHEMA_INVALID, f"{path}: a schema must be a JSON object")
    schema_id = contents.get("$id")
    if not isinstance(schema_id, str) or not SCHEMA_ID.match(schema_id):
        raise DevflowError(
            Code.SCHEMA_INVALID, f"{path}: $id must be a short id like dev/spec@1, "
            f"got {schema_id!r}", hint="set \"$id\" to <area>/<name>@<version>")
    if memo is None:
        _check_schema(path, contents)
    elif not memo.get(checked := memos.key("schema-checked", raw)):
        _check_schema(path, contents)
        memo.put(checked, True)
    return SchemaFile(id=schema_id, path=path, contents=contents)


def _check_schema(path: Path, contents: dict[str, Any]) -> None:
    import jsonschema  # noqa: PLC0415 - only to check (module doc)
    try:
        jsonschema.Draft202012Validator.check_schema(contents)
    except jsonschema.SchemaError as exc:
        raise DevflowError(
            Code.SCHEMA_INVALID, f"{path}: not a valid Draft 2020-12 schema at "
            f"{pointer(exc.absolute_path) or '/'}: {exc.message}",
            hint="see https://json-schema.org/draft/2020-12", schema=contents.get("$id")) from exc
