"""Shared fixtures: both databases, real git repositories, the app, the CLI as a subprocess.

``db_url`` runs a test once on SQLite (a copy of a migrated file) and once on
PostgreSQL (``CREATE DATABASE … TEMPLATE`` a migrated database). When the server
cannot be reached the PostgreSQL half is skipped locally, and fails under ``CI=true``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devflow import git
from devflow.app import App
from devflow.settings import Settings
from tests.scheduling import longest_first, worker_summary

PG_URL = os.environ.get("DEVFLOW_TEST_POSTGRES_URL",
                        "postgresql+psycopg://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() == "true"
ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS = ROOT / "devflow" / "store" / "migrations" / "versions"


def _migrations_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted(MIGRATIONS.glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


# -- PostgreSQL ---------------------------------------------------------------------------
def _pg_admin() -> Any:
    import psycopg
    plain = PG_URL.replace("postgresql+psycopg://", "postgresql://")
    return psycopg.connect(plain, autocommit=True, connect_timeout=5)


def pg_url_for(database: str) -> str:
    base, _, _ = PG_URL.rpartition("/")
    return f"{base}/{database}"


@pytest.fixture(scope="session")
def pg_template() -> str:
    """A migrated PostgreSQL database to clone tests' databases from."""
    try:
        conn = _pg_admin()
    except Exception as exc:  # noqa: BLE001 - any failure to reach the server
        message = f"PostgreSQL unreachable at {PG_URL}: {exc}"
        if IN_CI:
            pytest.fail(f"{message} (CI never skips PostgreSQL tests)")
        pytest.skip(message)
    name = f"devflow_tmpl_{_migrations_digest()}"
    with conn:
        conn.execute("SELECT pg_advisory_lock(424242)")
        try:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                  (name,)).fetchone()
            if not exists:
                # Built under another name and renamed once migrated: a run killed half-way
                # leaves no template that looks ready (later runs would clone it empty).
                building = f"{name}_building"
                conn.execute(f'DROP DATABASE IF EXISTS "{building}" WITH (FORCE)')
                conn.execute(f'CREATE DATABASE "{building}"')
                from devflow.store import Database, migrate
                db = Database(pg_url_for(building))
                try:
                    migrate.upgrade(db)
                finally:
                    db.dispose()
                conn.execute(f'ALTER DATABASE "{building}" RENAME TO "{name}"')
        finally:
            conn.execute("SELECT pg_advisory_unlock(424242)")
    return name


#: what a migrated database's schema is, as _schema_of reads it
_SCHEMA = """
SELECT md5(coalesce(string_agg(item, E'\\n' ORDER BY item), '')) FROM (
  SELECT table_name || '.' || column_name || ' ' || data_type || ' ' || is_nullable || ' '
         || coalesce(column_default, '') AS item
    FROM information_schema.columns WHERE table_schema = 'public'
  UNION ALL SELECT indexdef FROM pg_indexes WHERE schemaname = 'public'
  UNION ALL SELECT 'constraint ' || conname || ' ' || pg_get_constraintdef(oid)
    FROM pg_constraint WHERE connamespace = 'public'::regnamespace
  UNION ALL SELECT 'sequence ' || sequence_name FROM information_schema.sequences
    WHERE sequence_schema = 'public'
  UNION ALL SELECT 'routine ' || routine_name FROM information_schema.routines
    WHERE routine_schema = 'public'
  UNION ALL SELECT 'trigger ' || trigger_name FROM information_schema.triggers
  UNION ALL SELECT 'revision ' || version_num FROM alembic_version) AS found
"""


def _pg_connect(name: str) -> Any:
    import psycopg
    return psycopg.connect(pg_url_for(name).replace("postgresql+psycopg://", "postgresql://"),
                           autocommit=True, connect_timeout=5)


def _schema_of(name: str) -> str:
    with _pg_connect(name) as conn:
        return str(conn.execute(_SCHEMA).fetchone()[0])


class _PgPool:
    """Migrated databases of this test process, emptied between tests.

    Creating a database from the template and dropping it took 0.1 to 0.9 s and 1.5 to
    3 s on this 2-core machine (DROP DATABASE waits for a checkpoint), more than most
    tests' own time. A test's database is handed back emptied instead: its other
    connections are terminated (as DROP … WITH (FORCE) did), its schema is checked
    against the template's (a test that changed it gets a database of its own next
    time: this one is dropped), then every row of every table but ``alembic_version``
    is deleted and every sequence restarted. What a test sees is what a fresh copy of the template
    holds: the migrated schema, no rows, ids from 1.
    """

    def __init__(self, template: str) -> None:
        self.template = template
        self.schema = _schema_of(template)
        self.free: list[str] = []
        self.made: list[str] = []

    def take(self) -> str:
        if self.free:
            return self.free.pop()
        name = f"devflow_t_{uuid.uuid4().hex[:12]}"
        with _pg_admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        self.made.append(name)
        return name

    def give_back(self, name: str) -> None:
        import psycopg
        try:
            with _pg_connect(name) as conn:
                conn.execute("SET lock_timeout = '60s'")
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                             "WHERE datname = current_database() AND pid <> pg_backend_pid()")
                if str(conn.execute(_SCHEMA).fetchone()[0]) != self.schema:
                    raise LookupError("the test changed the schema")
                tables = [row[0] for row in conn.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                    "AND tablename <> 'alembic_version'")]
                sequences = [row[0] for row in conn.execute(
                    "SELECT sequence_name FROM information_schema.sequences "
                    "WHERE sequence_schema = 'public'")]
                # DELETE, not TRUNCATE: a test leaves a few rows, and TRUNCATE makes (and
                # syncs) new files for every table and index, several times the cost
                with conn.transaction():
                    conn.execute("SET LOCAL session_replication_role = replica")  # no FKs
                    for table in tables:
                        conn.execute(f'DELETE FROM "{table}"')
                    for sequence in sequences:
                        conn.execute(f"ALTER SEQUENCE \"{sequence}\" RESTART")
        except (psycopg.Error, LookupError):
            self._drop(name)
            return
        self.free.append(name)

    def _drop(self, name: str) -> None:
        with _pg_admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.made.remove(name)

    def close(self) -> None:
        for name in list(self.made):
            self._drop(name)


@pytest.fixture(scope="session")
def pg_pool(pg_template: str) -> Iterator[_PgPool]:
    pool = _PgPool(pg_template)
    yield pool
    pool.close()


@pytest.fixture
def pg_url(pg_pool: _PgPool) -> Iterator[str]:
    """A migrated PostgreSQL database with no rows, for this test alone (see _PgPool)."""
    name = pg_pool.take()
    yield pg_url_for(name)
    pg_pool.give_back(name)


# -- SQLite -------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from devflow.store import Database, migrate
    path = tmp_path_factory.mktemp("sqlite-template") / "devflow.db"
    db = Database(f"sqlite:///{path}")
    try:
        migrate.upgrade(db)
    finally:
        db.dispose()
    return path


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    target = tmp_path / "devflow.db"
    shutil.copyfile(sqlite_template, target)
    return f"sqlite:///{target}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def db_url(request: pytest.FixtureRequest) -> str:
    """Each test that uses it runs on SQLite and on PostgreSQL."""
    name = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return str(request.getfixturevalue(name))


#: For a test whose subject cannot differ between the databases (what a command prints,
#: a pipe closed under it, a definition shown, an agent CLI's output read) although it
#: needs one to run: it runs on SQLite, the embedded default, only. Anything that reads
#: or writes the store in a way of its own (locks, leases, errors, transactions) runs on
#: both.
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


# -- devflow ------------------------------------------------------------------------------
@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def settings(home: Path, db_url: str, tmp_path: Path) -> Settings:
    return Settings.load(env={}, home=str(home), database_url=db_url,
                         workspace=str(tmp_path / "ws"), actor="tester")


@pytest.fixture
def app(settings: Settings) -> Iterator[App]:
    application = App(settings)
    yield application
    application.close()


def make_repo(path: Path, files: dict[str, str] | None = None, branch: str = "main") -> Path:
    """A real git repository with one commit on ``branch``."""
    path.mkdir(parents=True, exist_ok=True)
    files = files or {
        "README.md": "# sample\n\nA sample project.\n",
        "src/sample/__init__.py": "def greet(name):\n    return f'hello {name}'\n",
        "tests/test_sample.py": "from sample import greet\n\n\ndef test_greet():\n"
                                "    assert greet('x') == 'hello x'\n",
    }
    for name, body in files.items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(body), encoding="utf-8")
    git.run(["init", "--quiet", f"--initial-branch={branch}"], path)
    git.run(["add", "--all"], path)
    git.run(["commit", "--quiet", "--no-verify", "-m", "initial"], path, env=git.AUTHOR)
    return path


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


SCRIPTED = {"planner": "scripted-planner", "implementer": "scripted-implementer",
            "reviewer": "scripted-reviewer"}


@pytest.fixture(scope="session")
def cli_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A process that imported devflow's CLI once and forks a child per command (see
    tests/acceptance/cli_fork.py); None under ``DEVFLOW_TEST_CLI=spawn``."""
    if os.environ.get("DEVFLOW_TEST_CLI") == "spawn":
        yield None
        return
    from tests.acceptance.cli_fork import ForkedCli
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEVFLOW_")}
    with ForkedCli(env, tmp_path_factory.mktemp("cli-server")) as server:
        yield server


@pytest.fixture
def cli(settings: Settings, home: Path,
        cli_server: Any) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the real ``devflow`` command against this test's database, each in a process of
    its own: a child forked from ``cli_server`` that runs the command's entry point with
    the command's environment, directory, standard input and output files (0.3 s of CPU
    less a command than a new interpreter importing devflow), or, with
    ``DEVFLOW_TEST_CLI=spawn``, ``python -m devflow.cli.main`` as a new process."""
    def run(*args: str, input_text: str | None = None, env: dict[str, str] | None = None,
            timeout: float = 120, check: int | None = None) -> subprocess.CompletedProcess[str]:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("DEVFLOW_")}
        full_env.update({"DEVFLOW_HOME": str(home), "DEVFLOW_DATABASE_URL": settings.database_url,
                         "DEVFLOW_WORKSPACE": str(settings.workspace), "DEVFLOW_ACTOR": "tester",
                         "DEVFLOW_LOG_FORMAT": "json"})
        full_env.update(env or {})
        argv = [sys.executable, "-m", "devflow.cli.main", *args]
        if cli_server is not None:
            done = cli_server.run(*args, env=full_env, cwd=Path.cwd(), input_text=input_text,
                                  timeout=timeout, replace_env=True)
            result = subprocess.CompletedProcess(argv, done.returncode, done.stdout,
                                                 done.stderr)
        else:
            result = subprocess.run(argv, capture_output=True, text=True, input=input_text,
                                    env=full_env, timeout=timeout, check=False)
        if check is not None:
            assert result.returncode == check, (
                f"devflow {' '.join(args)} exited {result.returncode}, wanted {check}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
        return result
    return run


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(result.stdout)


# -- the order tests run in (tests/scheduling.py) -----------------------------------------
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    longest_first(items)


# -- the crash suite's figures, shown in the summary (also under xdist, where -s shows nothing)
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when != "call":
        return
    if database := _database_of(item):
        report.user_properties.append(("database", database))
    tmp = getattr(item, "funcargs", {}).get("tmp_path")
    if tmp is not None and (tmp / "figures.json").is_file():
        report.user_properties.append(("crash_figures", (tmp / "figures.json").read_text()))
    if tmp is not None and (tmp / "hostile.json").is_file():
        report.user_properties.append(("hostile", (tmp / "hostile.json").read_text()))


def _database_of(item: pytest.Item) -> str | None:
    """Which database a test ran on (for the summary), from its parameters and fixtures."""
    names = set(getattr(item, "fixturenames", ()))
    if item.get_closest_marker("postgresql") or names & {"pg_url", "pg_template"}:
        return "postgresql"
    if "[sqlite" in item.nodeid or names & {"sqlite_url", "sqlite_template"}:
        return "sqlite"
    return None


def pytest_terminal_summary(terminalreporter: Any) -> None:
    ran: dict[str, dict[str, int]] = {}  # database -> outcome -> tests
    for outcome, reports in terminalreporter.stats.items():
        for r in reports:
            for name, value in getattr(r, "user_properties", ()):
                if name == "database":
                    counts = ran.setdefault(value, {})
                    counts[outcome] = counts.get(outcome, 0) + 1
    if ran:
        terminalreporter.section("tests by database")
        for database, counts in sorted(ran.items()):
            terminalreporter.write_line(f"{database}: " + ", ".join(
                f"{n} {outcome}" for outcome, n in sorted(counts.items())))
    shown = [value.strip() for reports in terminalreporter.stats.values() for r in reports
             for name, value in getattr(r, "user_properties", ()) if name == "crash_figures"]
    if shown:
        terminalreporter.section("crash suite figures")
        for line in sorted(shown):
            terminalreporter.write_line(line)
    _hostile_table(terminalreporter)
    worker_summary(terminalreporter)


def _hostile_table(terminalreporter: Any) -> None:
    """The hostile suite's table: each escape an agent tried, what became of it, the
    database, and whether its test passed (every row must say passed)."""
    rows = []
    for outcome, reports in terminalreporter.stats.items():
        for r in reports:
            for name, value in getattr(r, "user_properties", ()):
                if name == "hostile":
                    row = json.loads(value)
                    rows.append((str(row.get("escape", "?")), str(row.get("outcome", "?")),
                                 str(row.get("database", "?")), outcome))
    if not rows:
        return
    terminalreporter.section("hostile agents: escape, outcome")
    widths = [max(len(r[i]) for r in [*rows, ("escape", "outcome", "database", "test")])
              for i in range(4)]
    for row in [("escape", "outcome", "database", "test"), *sorted(rows)]:
        terminalreporter.write_line("  ".join(c.ljust(w) for c, w in zip(row, widths,
                                                                           strict=True)).rstrip())
