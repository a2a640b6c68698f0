"""Answers that hold for one version of a file, remembered on disk between processes.

Loading a definition parses its YAML and checks it against its meta-schema (and a
persona's options against its backend); a schema file is checked against Draft
2020-12; an agent CLI is asked its version. Each answer depends only on the bytes it
was computed from and on the code that computed it, so it is kept under a key made of
both: a digest of the content (or of the executable's path, size, modification time
and inode) and ``code_stamp()``, which changes with any of devflow's source files and
the libraries that parse and check (PyYAML, jsonschema, referencing). A command that
finds its answers here imports none of those libraries (docs/performance.md).

The file (``$DEVFLOW_HOME/cache/memo.json``) is an optimisation only: missing,
unreadable or from another version, it is rebuilt as answers are computed again. Two
processes saving at once lose entries at worst: each writes a whole file and renames
it into place. It is not what creates devflow's home: while the home does not exist
(a fresh one, before the first run), nothing is saved.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Final

#: entries kept when the file grows past this: those this process used
_MAX_ENTRIES: Final = 2000
_FORMAT: Final = 1
#: the libraries whose behaviour the remembered answers depend on
_LIBRARIES: Final = ("yaml", "jsonschema", "jsonschema_specifications", "referencing")
#: Answers about content alone (a definition's text parsed, a schema or a definition
#: found valid): the same whichever home asks, so every ``Memo`` of a process shares
#: them, kept as JSON text (no caller can change another's copy). A process that opens
#: several homes (a test run, a server) checks the built-in definitions once.
_CONTENT_KINDS: Final = frozenset({"yaml", "schema-checked", "schema-dangling",
                                   "template-checked", "persona-checked",
                                   "persona+options-checked"})
_SHARED_MAX: Final = 5000
_shared: dict[str, str] = {}


class Memo:
    """A dictionary of JSON values by key, read from ``path`` once and saved on demand."""

    def __init__(self, path: Path | None, *, within: Path | None = None) -> None:
        """``path``: the file (None: this process only); saved only while ``within``
        (devflow's home) exists, when given."""
        self.path = path
        self.within = within
        self._entries: dict[str, Any] | None = None
        self._used: set[str] = set()
        self._dirty = False
        #: worker threads remember and save at once (git's answers, a probe's)
        self._lock = threading.RLock()

    def _all(self) -> dict[str, Any]:
        if self._entries is None:
            self._entries = {}
            if self.path is not None:
                with contextlib.suppress(OSError, ValueError):
                    body = json.loads(self.path.read_bytes())
                    if isinstance(body, dict) and body.get("format") == _FORMAT:
                        self._entries = dict(body.get("entries") or {})
        return self._entries

    def get(self, key: str) -> Any:
        """The value remembered under ``key``, or None."""
        with self._lock:
            value = self._all().get(key)
            if value is None and (shared := _shared.get(key)) is not None:
                value = json.loads(shared)
                self._all()[key] = value  # and into this home's file, at its next save
                self._dirty = True
            if value is not None:
                self._used.add(key)
            return value

    def put(self, key: str, value: Any) -> None:
        with self._lock:
            entries = self._all()
            if entries.get(key) != value:
                entries[key] = value
                self._dirty = True
            self._used.add(key)
            if key.partition(":")[0] in _CONTENT_KINDS:
                if len(_shared) >= _SHARED_MAX:
                    _shared.clear()
                _shared[key] = json.dumps(value, separators=(",", ":"))

    def save(self) -> None:
        """Write the file if something new was remembered (never fails the caller)."""
        if not self._dirty or self.path is None:
            return
        if self.within is not None and not self.within.is_dir():
            return
        with self._lock:  # a copy: other threads go on remembering while it is written
            entries = dict(self._all())
            if len(entries) > _MAX_ENTRIES:
                entries = {k: v for k, v in entries.items() if k in self._used}
            self._dirty = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=self.path.parent, prefix=".memo-")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as out:
                    json.dump({"format": _FORMAT, "entries": entries}, out,
                              separators=(",", ":"))
                os.replace(temp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp)
                raise
        except (OSError, TypeError, ValueError):  # the disk, or a value JSON cannot hold
            with self._lock:
                self._dirty = True


def key(kind: str, *parts: str | bytes) -> str:
    """A key for ``kind`` of answer about ``parts``, valid for this code only."""
    digest = hashlib.sha256(code_stamp().encode())
    for part in (kind, *parts):
        digest.update(b"\0")
        digest.update(part.encode() if isinstance(part, str) else part)
    return f"{kind}:{digest.hexdigest()}"


def file_stamp(path: str | Path) -> str | None:
    """What tells one version of a file from another without reading it: its real path,
    size, modification time and inode (None when it cannot be looked at)."""
    try:
        real = os.path.realpath(path)
        st = os.stat(real)
    except OSError:
        return None
    return f"{real}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}"


@functools.cache
def code_stamp() -> str:
    """A digest of the code the remembered answers come from: devflow's own source files
    and the libraries in ``_LIBRARIES`` (names, sizes, modification times)."""
    parts = []
    for root, dirs, files in os.walk(Path(__file__).resolve().parent):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py"):
                parts.append(file_stamp(os.path.join(root, name)) or name)
    for library in _LIBRARIES:
        spec = importlib.util.find_spec(library)
        parts.append((file_stamp(spec.origin) if spec and spec.origin else None) or library)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()
