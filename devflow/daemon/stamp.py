"""What code a daemon imported, and whether a client would run the same.

``code()`` is a stamp of devflow's source files (path, size, mtime of each) and of the
interpreter and the directories it imports from: the server takes it at start and again
before each fork (a walk of about 150 ``stat`` calls, 1 to 2 ms), and stops when it
changed. ``interpreter()`` is what makes a client's interpreter the daemon's: the same
executable, version, flags, warning options, file system encoding and import path; a
client with another runs its command in process.
"""

from __future__ import annotations

import os
import sys

import devflow

TYPE_CHECKING = False  # typing is not imported: the console script imports this module
if TYPE_CHECKING:
    from typing import Any

PACKAGE = os.path.dirname(os.path.abspath(devflow.__file__))


def code() -> tuple[tuple[str, int, int], ...]:
    """(path, size, mtime) of devflow's Python files, of the interpreter, and of the
    directories of the import path (which change when a library is installed)."""
    found: list[tuple[str, int, int]] = []
    pending = [PACKAGE]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    if entry.name != "__pycache__":
                        pending.append(entry.path)
                elif entry.name.endswith(".py"):
                    info = entry.stat()
                    found.append((entry.path, info.st_size, info.st_mtime_ns))
    for path in (sys.executable, *sys.path):
        try:
            info = os.stat(path)
        except OSError:
            continue
        found.append((path, info.st_size, info.st_mtime_ns))
    return tuple(sorted(found))


def interpreter(path: list[str]) -> dict[str, Any]:
    """What a client's interpreter must share with the daemon's. ``path``: the import
    path without its first entry (the script's directory, or none under ``-P``)."""
    return {"executable": sys.executable, "version": sys.version,
            "flags": _flag_values(),
            "warnoptions": list(sys.warnoptions), "xoptions": sorted(map(str, sys._xoptions)),
            "fsencoding": [sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()],
            "path": path, "package": PACKAGE}


#: sys.flags that change how a command runs (not ``safe_path``: the server runs under
#: ``-P`` so that the directory it was started in is not on its import path)
_FLAGS = ("debug", "inspect", "interactive", "optimize", "dont_write_bytecode",
          "no_user_site", "no_site", "ignore_environment", "verbose", "bytes_warning",
          "quiet", "hash_randomization", "isolated", "dev_mode", "utf8_mode",
          "warn_default_encoding", "int_max_str_digits")


def _flag_values() -> list[Any]:
    return [getattr(sys.flags, name, None) for name in _FLAGS]
