"""Artifacts: read from the worktree safely, validated, hashed, and kept (DESIGN.md §3.5).

- The path is relative and must resolve, after symlinks, inside the worktree; paths
  are compared as paths, never as string prefixes (``/ws/run1`` does not contain
  ``/ws/run10/x``).
- The file is read through one opened descriptor, checked to be the very file whose
  resolved path was approved, so a symlink swapped in after the check cannot escape.
- Size is capped; JSON and schema errors are reported with their JSON pointer.
- What was validated is copied into the run's workspace with its sha256; reading the
  copy again checks the hash, and a mismatch is ``artifact_tampered``.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from devflow import definitions, jsontext
from devflow.errors import Code, DevflowError
from devflow.schemas import Issue, SchemaRegistry

T = TypeVar("T")

#: threads that keep validated copies while their caller does something else
_KEEPERS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="devflow-keep")


@dataclass(frozen=True, slots=True)
class Checked:
    """The outcome of checking one artifact file: valid, or why not."""

    code: Code | None
    issues: list[Issue] = field(default_factory=list)
    data: bytes | None = None
    value: Any = None
    sha256: str | None = None

    @property
    def valid(self) -> bool:
        return self.code is None


def contained_path(worktree: Path, rel: str) -> Path:
    """``worktree/rel`` resolved; ``path_escape`` when it leaves the worktree."""
    if why := definitions.check_artifact_path(rel):
        raise DevflowError(Code.PATH_ESCAPE, why,
                           hint="artifact paths are relative to the worktree")
    root = worktree.resolve()
    target = (root / rel).resolve()
    if not target.is_relative_to(root):
        raise DevflowError(Code.PATH_ESCAPE, f"artifact path {rel!r} resolves to {target}, "
                           f"outside the worktree {root}",
                           hint="an artifact (or a symlink on its path) must stay in the worktree")
    return target


def read_contained(worktree: Path, rel: str, max_bytes: int) -> bytes:
    """The bytes of the artifact at ``rel``, read through one checked descriptor."""
    target = contained_path(worktree, rel)
    try:
        # O_NONBLOCK: a FIFO left at the path must not block the driver (no effect on
        # the regular file it is then checked to be)
        fd = os.open(target, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK
                     | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise DevflowError(Code.ARTIFACT_MISSING, f"no artifact at {rel}",
                           hint="the agent must write its artifact at the path the phase names"
                           ) from None
    except OSError as exc:
        raise DevflowError(Code.ARTIFACT_MISSING, f"artifact {rel} cannot be opened: "
                           f"{exc.strerror}", hint="the artifact must be a regular file") from exc
    try:
        opened = os.fstat(fd)
        try:
            now = os.stat(target, follow_symlinks=False)
        except FileNotFoundError:
            now = None
        if now is None or (opened.st_dev, opened.st_ino) != (now.st_dev, now.st_ino):
            raise DevflowError(Code.PATH_ESCAPE, f"artifact {rel} changed while being opened",
                               hint="something replaced the file or a directory on its path")
        if not stat.S_ISREG(opened.st_mode):
            raise DevflowError(Code.ARTIFACT_MISSING, f"artifact {rel} is not a regular file",
                               hint="write the artifact as a plain JSON file")
        if opened.st_size > max_bytes:
            raise _too_large(rel, opened.st_size, max_bytes)
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise _too_large(rel, len(data), max_bytes)
        return data
    finally:
        os.close(fd)


def _too_large(rel: str, size: int, max_bytes: int) -> DevflowError:
    return DevflowError(Code.ARTIFACT_TOO_LARGE, f"artifact {rel} has {size} bytes, more than "
                        f"the cap of {max_bytes}", hint="keep artifacts small, or raise "
                        "artifact_max_bytes (DEVFLOW_ARTIFACT_MAX_BYTES)")


def check(worktree: Path, rel: str, schema_id: str, schemas: SchemaRegistry,
          max_bytes: int) -> Checked:
    """Read, parse and validate the artifact; every failure comes back as a Checked."""
    try:
        data = read_contained(worktree, rel, max_bytes)
    except DevflowError as exc:
        return Checked(exc.code, [Issue("", exc.message)])
    return check_bytes(data, schema_id, schemas)


def check_bytes(data: bytes, schema_id: str, schemas: SchemaRegistry) -> Checked:
    """Parse (``devflow.jsontext``: UTF-8, at most 64 levels deep, finite numbers) and
    validate; a document that cannot be read comes back invalid, never as an exception."""
    digest = hashlib.sha256(data).hexdigest()
    try:
        value = jsontext.loads(data)
    except jsontext.BadJSON as exc:
        return Checked(Code.ARTIFACT_INVALID, [Issue("", str(exc))], data, sha256=digest)
    issues = schemas.validate(schema_id, value)
    if issues:
        return Checked(Code.ARTIFACT_INVALID, issues, data, value, digest)
    return Checked(None, [], data, value, digest)


def store(checked: Checked, destination: Path) -> str:
    """Write the bytes read (validated, or kept to show why not) atomically at
    ``destination``; their sha256."""
    assert checked.data is not None and checked.sha256 is not None
    data = checked.data
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = destination.with_name(f".{destination.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, destination)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write leaves no temporary file behind
        raise
    return checked.sha256


def store_while(checked: Checked, destination: Path, work: Callable[[], T]) -> tuple[str, T]:
    """``store`` on another thread while ``work`` runs on this one: the copy's fsync waits
    on the disk while ``work`` (the checkpoint's git processes) does. Both are done when
    this returns; an error of ``work`` wins over one of the copy."""
    kept = _KEEPERS.submit(store, checked, destination)
    try:
        result = work()
    except BaseException:
        wait([kept])
        raise
    return kept.result(), result


def load_stored(path: Path, sha256: str) -> Any:
    """The JSON value kept at ``path``; ``artifact_tampered`` when its bytes changed."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DevflowError(Code.ARTIFACT_TAMPERED, f"the kept artifact {path} cannot be read: "
                           f"{exc.strerror}",
                           hint="the run's workspace was changed by hand") from exc
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise DevflowError(Code.ARTIFACT_TAMPERED, f"the kept artifact {path} has sha256 "
                           f"{actual[:12]}, not the validated {sha256[:12]}",
                           hint="the run's workspace was changed after validation; devflow "
                                "will not use bytes it did not validate")
    return json.loads(data)


def file_sha(worktree: Path, rel: str, max_bytes: int) -> str | None:
    """The sha256 of the artifact as it is in the worktree now (None when it is gone)."""
    try:
        return hashlib.sha256(read_contained(worktree, rel, max_bytes)).hexdigest()
    except DevflowError:
        return None
