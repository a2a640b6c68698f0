"""Writing a file whole or not at all: what devflow writes (reports, kept artifacts,
prompts, the files of a worktree's git it puts back) goes through here.

The bytes go to a temporary file beside the target (same directory, so the rename
cannot cross file systems), are flushed and fsynced, and the temporary file is renamed
over the target: a reader sees the old file or the new one, never a part. When the
write fails (a full disk, a quota, a file size limit, a kill between the steps aside)
the temporary file is removed before the error goes up, so nothing is left behind.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from devflow import faults


def write_bytes(path: Path, data: bytes, *, mode: int = 0o666, sync: bool = True) -> None:
    """Replace ``path`` (a symbolic link itself, not its target) with ``data``.

    ``mode`` is the new file's permissions before the umask, as ``open`` would give them.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(3)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
    try:
        try:
            faults.disk_full("write", tmp)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_text(path: Path, text: str, *, mode: int = 0o666, sync: bool = True) -> None:
    """``text`` as UTF-8; a lone surrogate (bytes a file name or git's output had that were
    not UTF-8) is written as ``?`` rather than fail the write (a report must be written)."""
    write_bytes(path, text.encode("utf-8", errors="replace"), mode=mode, sync=sync)
