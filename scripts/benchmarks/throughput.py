"""Throughput: 1, 2 and 4 worker processes on PostgreSQL driving runs of 5 phases.

Each worker drives one run at a time (``--concurrency 1``), so "4 workers" is four runs
under way at once and the scaling measures devflow, not a worker's own task pool. The
rate is taken over the event log's span, first phase started to last phase completed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa
from common import Figure, Report, make_app, pg_database, start_request, synthetic_repo

from devflow.states import RunState
from devflow.store.tables import EVENT


def run(report: Report, root: Path, runs: int, sleeping_runs: int, templates: Path,
        concurrency: int = 1) -> None:
    """``runs`` runs with the instant agent, ``sleeping_runs`` with the 200 ms one."""
    base: dict[str, float] = {}
    for agent, scenario, count in (("instant agent", "ok", runs),
                                   ("200 ms agent", "slow:0.2", sleeping_runs)):
        for workers in (1, 2, 4):
            with pg_database() as url:
                rate, cpu_ms = _once(url, root / f"tp-{scenario}-{workers}", count, workers,
                                     concurrency, scenario, templates)
            base.setdefault(agent, rate)
            figure = report.add(Figure(
                "throughput", f"{workers} worker(s), {agent}", "phases/s", value=rate,
                note=f"x{rate / base[agent]:.2f} of one worker; {count} runs x 5 phases; "
                     f"{cpu_ms:.0f} ms CPU a phase (workers, agents, git)"))
            if workers == 4 and agent.startswith("200"):
                figure.target, figure.ok = ">= 3.5x one worker", rate / base[agent] >= 3.5


def _once(url: str, root: Path, runs: int, workers: int, concurrency: int, scenario: str,
          templates: Path) -> tuple[float, float]:
    """Phases a second, and the CPU milliseconds a phase took in the worker processes
    and everything they started (agents, git), from ``wait4``."""
    repo = synthetic_repo(root / "repo", 20)
    app = make_app(url, root, templates_dirs=(templates,))
    scenarios = {f"p{i}": scenario for i in range(5)}
    ids = [app.start(start_request(repo, "bench5@1", run_id=f"t{i}", scenarios=scenarios),
                     detach=True).run.id for i in range(runs)]
    env = {"DEVFLOW_TEMPLATES_DIR": str(templates)}
    procs = [_worker(url, root, concurrency, f"w{i}", env) for i in range(workers)]
    cpu = 0.0
    for proc in procs:
        _pid, _status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(_status)
        cpu += usage.ru_utime + usage.ru_stime
    done = [app.store.runs.get(r).state for r in ids]
    assert all(s is RunState.COMPLETED for s in done), done
    # From the first phase started to the last phase completed, as the event log says:
    # the workers' own start (interpreter and imports, about 0.6 s) is not driving.
    with app.store.db.engine.connect() as conn:
        first, last = conn.execute(sa.select(
            sa.func.min(EVENT.c.ts).filter(EVENT.c.type == "phase.started"),
            sa.func.max(EVENT.c.ts).filter(EVENT.c.type == "phase.completed"))).one()
    app.close()
    return runs * 5 / (last - first).total_seconds(), cpu * 1000 / (runs * 5)


def _worker(url: str, root: Path, concurrency: int, name: str,
            env: dict[str, str]) -> subprocess.Popen[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("DEVFLOW_")}
    full.update({"DEVFLOW_HOME": str(root / "home"), "DEVFLOW_DATABASE_URL": url,
                 "DEVFLOW_WORKSPACE": str(root / "ws"), "DEVFLOW_LOG_FORMAT": "json", **env})
    return subprocess.Popen([sys.executable, "-m", "devflow.cli.main", "worker", "--once",
                             "--concurrency", str(concurrency), "--poll", "0.1", "--name", name],
                            env=full, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            text=True)
