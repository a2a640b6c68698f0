"""The stub agent (``stub_agent.py``) as a ``command`` persona, and what it recorded."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import psutil
import yaml

from devflow.app import App
from devflow.backends import samples
from tests.fakes import stub_agent

STUB = str(Path(stub_agent.__file__).resolve())


def stub_persona(directory: Path, name: str, role: str, stub_dir: Path, *,
                 argv: list[str] | None = None, model: str = "stub-model",
                 options: dict[str, Any] | None = None, env_set: dict[str, str] | None = None,
                 allow: list[str] | None = None, sandbox: str | None = None) -> str:
    """A ``command`` persona running the stub (or ``argv``); ``sandbox="none"`` runs it
    unsandboxed, as a persona may choose."""
    directory.mkdir(parents=True, exist_ok=True)
    stub_dir.mkdir(parents=True, exist_ok=True)
    body = {"name": name, "version": 1, "roles": [role], "backend": "command", "model": model,
            "prompt": "A stub agent of devflow's tests.",
            "options": {"argv": argv or [sys.executable, "-I", STUB], **(options or {})},
            "env": {"allow": allow or [], "set": {"STUB_DIR": str(stub_dir),
                                                  **(env_set or {})}},
            # the stub's script, read-only, and the directory it reports into, writable
            "sandbox": sandbox or {"read_only": [str(Path(STUB).parent)],
                                   "writable": [str(stub_dir)]}}
    (directory / f"{name}.yaml").write_text(yaml.safe_dump(body), encoding="utf-8")
    return f"{name}@1"


def stub_artifacts(app: App, stub_dir: Path, **paths: str) -> None:
    """Valid artifacts the stub copies into place, by file name."""
    (stub_dir / "artifacts").mkdir(parents=True, exist_ok=True)
    for name, schema in {"implementation.json": "dev/implementation@1",
                         "review.json": "dev/review@1", "spec.json": "dev/spec@1", **paths}.items():
        (stub_dir / "artifacts" / name).write_text(
            json.dumps(samples.valid(schema, app.catalog.schemas)), encoding="utf-8")


def live_stubs(stub_dir: Path) -> list[int]:
    """Host pids of the stub's processes (its environment names ``stub_dir``) still alive:
    what the stub itself records are pids of its sandbox's PID namespace."""
    wanted = f"{stub_dir}"
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("STUB_DIR") == wanted and \
                    proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def stub_calls(stub_dir: Path) -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text(encoding="utf-8"))
            for p in sorted((stub_dir / "calls").glob("*.json"))}
