"""What a program runs on, for the sandbox to show it (``sandbox.command``): the program
with its symbolic links resolved, and where it lives: the outermost ``node_modules`` it is
in, the Python virtual environment it is in (with the Python it was made from), or, for a
program in a ``bin`` directory beside a ``lib``, that ``lib``; and, for a script, its
interpreter the same way. Remembered per process while the programs' files are the same.
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

#: the system's directories, shown to every agent read-only (what is in them needs no root)
SYSTEM_DIRS: Final = ("/usr", "/etc", "/opt")
_MAX_HOPS: Final = 40


def inside(path: Path, parent: Path) -> bool:
    """Whether ``path`` is ``parent`` or below it."""
    top = str(parent).rstrip("/") + "/"  # by text: Path.parents is slow, and paths are absolute
    return path == parent or str(path).startswith(top)


def covered(path: Path, bound: Iterable[Path]) -> bool:
    """Whether ``path`` is inside one of ``bound``."""
    return any(inside(path, b) for b in bound)


@dataclass(frozen=True, slots=True)
class Exposure:
    """What shows a set of programs: paths bound read-only at their real place, and the
    symbolic links met on the way to them, recreated as links."""

    roots: tuple[Path, ...]
    links: tuple[tuple[Path, str], ...]


def expose(paths: Sequence[Path], path_env: str = os.defpath) -> Exposure:
    """``_expose``, remembered in this process while each path is the same file (its
    inode and modification time): an attempt's sandbox is planned at every attempt, and
    walking the tools' files was a third of the engine's own cost of a phase."""
    stamps = []
    for path in paths:
        try:
            found = os.stat(path)
        except OSError:
            stamps.append((str(path), 0, 0))
        else:
            stamps.append((str(path), found.st_ino, found.st_mtime_ns))
    return _expose(tuple(Path(p) for p in paths), path_env, tuple(stamps))


@functools.lru_cache(maxsize=64)
def _expose(paths: tuple[Path, ...], path_env: str,
            _stamps: tuple[tuple[str, int, int], ...]) -> Exposure:
    """Each path with its links resolved, and where it lives: the outermost
    ``node_modules`` it is in, the Python virtual environment it is in (with the Python it
    was made from), or, for a program in a ``bin`` directory beside a ``lib``, that
    ``lib``; and, for a script, its interpreter the same way (``#!/usr/bin/env NAME``
    looks NAME up on ``path_env``)."""
    roots: list[Path] = []
    links: list[tuple[Path, str]] = []
    seen: set[Path] = set()

    def walk(path: Path, depth: int) -> None:
        if not path.is_absolute() or path in seen or depth > 4:
            return
        seen.add(path)
        real, met = resolve(path)
        if not real.exists():
            return
        links.extend(met)
        for place in (path, *(link for link, _ in met), real):
            roots.extend(_venv(place))
        roots.extend(_home_of(real))
        interpreter = _interpreter(real, path_env)
        if interpreter is not None:
            walk(interpreter, depth + 1)

    for path in paths:
        walk(Path(path), 0)
    kept: list[Path] = []
    for root in sorted(set(roots), key=lambda p: len(p.parts)):
        if not covered(root, kept) and not covered(root, map(Path, SYSTEM_DIRS)):
            kept.append(root)
    return Exposure(tuple(kept), tuple(dict.fromkeys(links)))


def resolve(path: Path) -> tuple[Path, list[tuple[Path, str]]]:
    """``path`` with every symbolic link resolved, and each link met: (where, target)."""
    parts = list(path.parts[1:])
    current = Path("/")
    met: list[tuple[Path, str]] = []
    while parts:
        name = parts.pop(0)
        if name in ("", "."):
            continue
        if name == "..":
            current = current.parent
            continue
        step = current / name
        if not step.is_symlink():
            current = step
            continue
        if len(met) >= _MAX_HOPS:
            break
        target = os.readlink(step)
        met.append((step, target))
        given = Path(target)
        parts = [*(given.parts[1:] if given.is_absolute() else given.parts), *parts]
        current = Path("/") if given.is_absolute() else current
    return current, met


def _venv(place: Path) -> list[Path]:
    for parent in place.parents:
        if (parent / "pyvenv.cfg").is_file():
            return [parent, *_base_python(parent / "pyvenv.cfg")]
    return []


def _base_python(config: Path) -> list[Path]:
    """The ``lib`` of the Python a virtual environment was made from (``home = …/bin``)."""
    try:
        lines = config.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    for line in lines:
        key, _, value = line.partition("=")
        if key.strip() == "home" and value.strip():
            prefix = resolve(Path(value.strip()))[0].parent
            return [p for p in (prefix / "lib", prefix / "lib64") if p.is_dir()]
    return []


def _home_of(real: Path) -> list[Path]:
    outermost = None
    for parent in real.parents:
        if parent.name == "node_modules":
            outermost = parent
    if outermost is not None:
        return [outermost]
    if real.parent.name in ("bin", "sbin") and len(real.parents) > 2:
        prefix = real.parent.parent
        libs = [p for p in (prefix / "lib", prefix / "lib64") if p.is_dir()]
        return [real, *libs]
    return [real]


def _interpreter(real: Path, path_env: str) -> Path | None:
    """The program a ``#!`` script runs on, or None for anything else."""
    try:
        with open(real, "rb") as handle:
            head = handle.read(256)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    words = head[2:].split(b"\n", 1)[0].decode("utf-8", errors="replace").split()
    if not words:
        return None
    if os.path.basename(words[0]) != "env":
        return Path(words[0])
    names = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
    found = shutil.which(names[0], path=path_env) if names else None
    return Path(found) if found else None
