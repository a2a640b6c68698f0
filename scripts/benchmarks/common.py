"""What every benchmark uses: timing, figures, databases, apps, synthetic repositories."""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from devflow import git
from devflow.app import App
from devflow.requests import StartRequest
from devflow.settings import Settings
from devflow.store import Database, migrate

PG_URL = os.environ.get("DEVFLOW_BENCH_POSTGRES_URL",
                        "postgresql+psycopg://postgres@127.0.0.1:5432/test")
BINDS = {"planner": "scripted-planner", "implementer": "scripted-implementer",
         "reviewer": "scripted-reviewer"}


@dataclass
class Stat:
    median: float
    low: float
    high: float
    p99: float
    n: int

    @classmethod
    def of(cls, samples: list[float]) -> Stat:
        ordered = sorted(samples)
        p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
        return cls(statistics.median(ordered), ordered[0], ordered[-1], p99, len(ordered))

    def to_json(self) -> dict[str, Any]:
        return {"median": round(self.median, 3), "min": round(self.low, 3),
                "max": round(self.high, 3), "p99": round(self.p99, 3), "n": self.n}


@dataclass
class Figure:
    section: str
    name: str
    unit: str
    stat: Stat | None = None
    value: float | None = None
    target: str = ""
    ok: bool | None = None
    note: str = ""

    @property
    def shown(self) -> float:
        return self.stat.median if self.stat else (self.value or 0.0)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"section": self.section, "name": self.name, "unit": self.unit,
                                "target": self.target or None, "ok": self.ok,
                                "note": self.note or None}
        if self.stat:
            body.update(self.stat.to_json())
        else:
            body["value"] = None if self.value is None else round(self.value, 3)
        return body


@dataclass
class Report:
    figures: list[Figure] = field(default_factory=list)

    def add(self, figure: Figure) -> Figure:
        self.figures.append(figure)
        return figure


def timed(fn: Callable[[], Any]) -> float:
    """Milliseconds ``fn`` takes."""
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


@contextlib.contextmanager
def calls_timed(module: Any, name: str) -> Iterator[list[float]]:
    """While inside, ``module.name`` records each call's milliseconds in the list yielded
    (a section takes what it does not measure, git or an agent, out of its figure)."""
    real = getattr(module, name)
    spent: list[float] = []

    def timed_call(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            spent.append((time.perf_counter() - started) * 1000)

    setattr(module, name, timed_call)
    try:
        yield spent
    finally:
        setattr(module, name, real)


def repeat(fn: Callable[[], Any], n: int) -> list[float]:
    return [timed(fn) for _ in range(n)]


@contextlib.contextmanager
def pg_database() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database, dropped afterwards."""
    plain = PG_URL.replace("postgresql+psycopg://", "postgresql://")
    name = f"devflow_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_URL.rsplit("/", 1)[0] + "/" + name
    try:
        db = Database(url)
        migrate.upgrade(db)
        db.dispose()
        yield url
    finally:
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def make_app(url: str, root: Path, **overrides: Any) -> App:
    settings = Settings.load(env={}, home=str(root / "home"), database_url=url,
                             workspace=str(root / "ws"), actor="bench",
                             max_active_per_branch=100_000, max_concurrent_runs=100_000,
                             **overrides)
    return App(settings)


def synthetic_repo(path: Path, files: int, branches: int = 0) -> Path:
    """A repository of ``files`` small files in 40 directories, and ``branches`` branches."""
    path.mkdir(parents=True)
    for i in range(files):
        target = path / f"pkg{i % 40}" / f"module_{i}.py"
        target.parent.mkdir(exist_ok=True)
        target.write_text(f'"""Module {i}."""\n\n\ndef f{i}(x):\n    return x + {i}\n' * 3)
    (path / "README.md").write_text("# synthetic\n")
    git.run(["init", "--quiet", "--initial-branch=main"], path)
    git.run(["add", "--all"], path)
    git.run(["commit", "--quiet", "--no-verify", "-m", "synthetic"], path, env=git.AUTHOR)
    for b in range(branches):
        git.run(["branch", f"base-{b}", "main"], path)
    return path


def start_request(repo: Path, template: str, base: str = "main", run_id: str | None = None,
                  **kw: Any) -> StartRequest:
    return StartRequest(repo=repo, base=base, template=template, requirements="bench",
                        actor="bench", binds={k: v for k, v in BINDS.items()}, run_id=run_id,
                        **kw)


def write_templates(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, phases, gated in (("bench20", 20, False), ("bench5", 5, False),
                                ("bench2", 2, False), ("benchgate", 1, True)):
        lines = [f"name: {name}", "version: 1",
                 "roles: {planner: {}, implementer: {}, reviewer: {}}"]
        if gated:
            lines += ["gates:", "  ok: {message: Approve.}"]
        lines.append("phases:")
        for i in range(phases):
            lines += [f"  - key: p{i}", "    roles: [implementer]",
                      f"    artifact: {{path: .devflow/p{i}.json, schema: dev/implementation@1}}"]
            if gated:
                lines.append("    gates: [ok]")
        (directory / f"{name}.yaml").write_text("\n".join(lines) + "\n")
    return directory


def devflow_cmd(url: str, root: Path, *args: str, env: dict[str, str] | None = None,
                check: bool = True) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("DEVFLOW_")}
    full.update({"DEVFLOW_HOME": str(root / "home"), "DEVFLOW_DATABASE_URL": url,
                 "DEVFLOW_WORKSPACE": str(root / "ws"), "DEVFLOW_ACTOR": "bench",
                 "DEVFLOW_LOG_FORMAT": "json", "DEVFLOW_MAX_ACTIVE_PER_BRANCH": "100000",
                 "DEVFLOW_MAX_CONCURRENT_RUNS": "100000"})
    full.update(env or {})
    return subprocess.run([str(Path(os.sys.executable)), "-m", "devflow.cli.main", *args],
                          capture_output=True, text=True, env=full, check=check)


def default_scratch() -> Path:
    """The system's temporary directory ($TMPDIR, else /tmp)."""
    return Path(tempfile.gettempdir())


def scratch(parent: Path) -> tempfile.TemporaryDirectory[str]:
    parent.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(prefix="bench-", dir=parent)
