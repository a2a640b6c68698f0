"""Rows to the frozen values of ``devflow.model`` and back: one generic mapper.

A table's row type is its dataclass in ``devflow.model``; a field is the column of the
same name. How a value is stored follows from the field's type, the same for every
table: an enum as its string, a tuple as a JSON list, a type with ``from_json`` /
``to_json`` (a phase's definition, its control state) as its JSON, anything else as
it is. A field whose type is a dataclass and that is no column (an approval's
``evidence``) is stored as that dataclass's fields, each a column of its own name.

Each ``Mapper`` is checked when this module is imported: every field is a column (or
such a group of columns) and every column is a field or named as one the value does
not carry (an event's ``idem_key``), and every field is a column or named as one no
row holds (a delivery's ``repeat``: left to its default). A column added to a table
without its field, or the other way round, fails at import, not at the first row.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Final, Generic, TypeVar, get_args, get_origin

import sqlalchemy as sa

from devflow import model
from devflow.store.tables import (
    API_TOKEN,
    APPROVAL,
    ARTIFACT,
    BINDING,
    DECISION,
    EVENT,
    INVOCATION,
    PHASE,
    RUN,
    WEB_SESSION,
    WORKER,
)

T = TypeVar("T")
Convert = Callable[[Any], Any] | None


class Mapper(Generic[T]):
    """A table's rows as values of ``cls``: ``load`` a row, ``columns`` of field values,
    the ``changes`` between two values of the same row."""

    def __init__(self, cls: type[T], table: sa.Table, *, unread: frozenset[str] = frozenset(),
                 unstored: frozenset[str] = frozenset()) -> None:
        self.cls, self.table = cls, table
        hints = typing.get_type_hints(cls)
        columns = set(table.c.keys())
        #: (field, its columns, load: columns' values -> field value, dump: the reverse)
        self._fields: list[tuple[str, tuple[str, ...], Callable[..., Any] | None,
                                 Callable[[Any], tuple[Any, ...]] | None]] = []
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name in unstored:
                continue
            hint = hints[f.name]
            if f.name in columns:
                load, dump = _scalar(hint)
                self._fields.append((f.name, (f.name,), load,
                                     None if dump is None else _one(dump)))
                continue
            group = _group(hint)
            if group is None or not set(group) <= columns:
                raise TypeError(f"{cls.__name__}.{f.name} is no column of {table.name}")
            self._fields.append((f.name, group, hint, _spread(group)))
        mapped = {c for _, group, _, _ in self._fields for c in group}
        if missing := columns - mapped - unread:
            raise TypeError(f"{table.name} has columns {sorted(missing)} that "
                            f"{cls.__name__} does not carry")
        self._order = tuple(name for name, _, _, _ in self._fields)
        self._names = frozenset(self._order)
        self._by_name = {f[0]: f for f in self._fields}
        #: ``load`` by the prefix of the columns' names
        self._loaders: dict[str, Callable[[Mapping[Any, Any]], T]] = {}

    def load(self, row: Mapping[Any, Any], prefix: str = "") -> T:
        """The value of a row: a Core row's ``_mapping`` or a dict, its columns named
        ``prefix`` + column."""
        load = self._loaders.get(prefix)
        if load is None:
            load = self._loaders[prefix] = self._loader(prefix)
        return load(row)

    def _loader(self, prefix: str) -> Callable[[Mapping[Any, Any]], T]:
        """``load`` for one prefix, as one function that names each column (written and
        compiled once, as ``dataclasses`` writes ``__init__``: a loop over the fields for
        every row would cost several times the row's own reading)."""
        env: dict[str, Any] = {"cls": self.cls}
        args = []
        for i, (name, group, load, _) in enumerate(self._fields):
            cells = [f"row[{prefix + c!r}]" for c in group]
            if load is None:
                args.append(f"{name}={cells[0]}")
                continue
            env[f"load{i}"] = load
            if len(group) == 1:  # NULL stays None
                args.append(f"{name}=(None if (v := {cells[0]}) is None else load{i}(v))")
            else:
                args.append(f"{name}=load{i}({', '.join(cells)})")
        source = f"def load(row):\n    return cls({', '.join(args)})\n"
        exec(compile(source, f"<load {self.cls.__name__}>", "exec"), env)  # noqa: S102
        return env["load"]  # type: ignore[no-any-return]

    def columns(self, value: T | None = None, **fields: Any) -> dict[str, Any]:
        """The columns of ``value`` (every field), or of the ``fields`` named."""
        if value is not None:
            fields = {name: getattr(value, name) for name in self._order}
        out: dict[str, Any] = {}
        for name, v in fields.items():
            _, group, _, dump = self._by_name[name]
            if dump is None:
                out[group[0]] = v
            elif len(group) == 1:
                out[group[0]] = None if v is None else dump(v)[0]
            else:
                out.update(zip(group, dump(v), strict=True))
        return out

    def replace(self, value: T, **fields: Any) -> T:
        """``value`` with ``fields`` changed (names checked: a typo is an error here)."""
        if unknown := fields.keys() - self._names:
            raise ValueError(f"{self.table.name} has no field {sorted(unknown)}")
        return dataclasses.replace(value, **fields)  # type: ignore[type-var]

    def changes(self, stored: T, current: T) -> dict[str, Any]:
        """The columns that differ between two values of one row: what an UPDATE sets."""
        changed = {}
        for name in self._order:
            a, b = getattr(stored, name), getattr(current, name)
            if a is not b and a != b:
                changed[name] = b
        return self.columns(**changed) if changed else {}


def _scalar(hint: Any) -> tuple[Convert, Convert]:
    """How a field of type ``hint`` is loaded from its column and dumped into it."""
    args = get_args(hint)
    if get_origin(hint) in (types.UnionType, typing.Union) and type(None) in args:
        # X | None: None is NULL, the rest as for X
        (hint,) = (a for a in args if a is not type(None))
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint, str
    if get_origin(hint) is tuple:
        return tuple, list
    from_json = getattr(hint, "from_json", None)
    if from_json is not None:
        return from_json, lambda v: v.to_json()
    if get_origin(hint) is Mapping:
        return None, dict
    return None, None


def _one(dump: Callable[[Any], Any]) -> Callable[[Any], tuple[Any, ...]]:
    return lambda v: (dump(v),)


def _spread(group: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    return lambda v: tuple(getattr(v, c) for c in group)


def _group(hint: Any) -> tuple[str, ...] | None:
    """The columns a dataclass-typed field is stored as: its dataclass's fields."""
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return tuple(f.name for f in dataclasses.fields(hint))
    return None


RUNS: Final = Mapper(model.Run, RUN)
PHASES: Final = Mapper(model.Phase, PHASE)
#: a binding is read with its run's
BINDINGS: Final = Mapper(model.Binding, BINDING, unread=frozenset({"run_id"}))
EVENTS: Final = Mapper(model.Event, EVENT, unread=frozenset({"id", "idem_key"}))
APPROVALS: Final = Mapper(model.Approval, APPROVAL)
DECISIONS: Final = Mapper(model.Decision, DECISION)
INVOCATIONS: Final = Mapper(model.Invocation, INVOCATION)
ARTIFACTS: Final = Mapper(model.ArtifactRecord, ARTIFACT, unread=frozenset({"id"}))
WORKERS: Final = Mapper(model.Worker, WORKER)
TOKENS: Final = Mapper(model.ApiToken, API_TOKEN, unread=frozenset({"digest"}))
SESSIONS: Final = Mapper(model.WebSession, WEB_SESSION)
# the triggers' tables have theirs beside their verbs (store/triggers.py, deliveries.py):
# their row types live in the trigger modules, which a command on runs does not import

#: the mapper of each table that a transaction holds rows of, by table name
BY_TABLE: Final[Mapping[str, Mapper[Any]]] = {
    m.table.name: m for m in (RUNS, PHASES, APPROVALS, DECISIONS, INVOCATIONS)}
