"""Decision latency: the library API, the CLI process (and where its time goes), and 50
approvers at once on PostgreSQL."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from pathlib import Path

from anchors import SessionCommit
from common import (
    Figure,
    Report,
    Stat,
    calls_timed,
    devflow_cmd,
    make_app,
    repeat,
    start_request,
    synthetic_repo,
    timed,
)

from devflow import approvals
from devflow.app import App


def _gated(app: App, repo: Path, count: int, prefix: str) -> list[str]:
    ids = []
    for i in range(count):
        view = app.start(start_request(repo, "benchgate@1", run_id=f"{prefix}{i}"))
        assert view.gate is not None, view.run.failure_reason
        ids.append(view.run.id)
    return ids


def _decide(app: App, run_id: str) -> None:
    app.decide(approvals.DecisionRequest(run_id=run_id, action="approve", actor="bench",
                               token=approvals.new_token()))


def library(report: Report, url: str, root: Path, label: str, anchor: SessionCommit, n: int,
            templates: Path) -> None:
    """A decision through App.decide, and the part of it that is its evidence check (git);
    session commits on the same database taken between the decisions."""
    repo = synthetic_repo(root / f"dec-{label}", 20)
    app = make_app(url, root / f"dec-{label}", templates_dirs=(templates,))
    ids = _gated(app, repo, n + 1, f"d{label}")
    with calls_timed(approvals, "current_evidence") as checks, contextlib.closing(app):
        _decide(app, ids[0])
        checks.clear()
        whole, commits = [], []
        for r in ids[1:]:
            whole.append(timed(lambda r=r: _decide(app, r)))
            commits += anchor.sample(3)
    stat, check, commit = Stat.of(whole), Stat.of(checks), Stat.of(commits)
    rest = Stat.of([w - c for w, c in zip(whole, checks, strict=True)])
    report.add(Figure("decide", f"decide via library ({label})", "ms", stat))
    report.add(Figure("decide", f"  of which: the evidence check ({label})", "ms", check,
                      note="git status of the worktree and the artifact's sha256"))
    report.add(Figure("decide", f"decide without the evidence check ({label})", "ms", rest))
    report.add(Figure("decide", f"session commit ({label})", "ms", commit,
                      note="taken between the decisions above, on the same database"))
    ratio = rest.median / commit.median
    report.add(Figure("decide", f"decide without the evidence check / session commit ({label})",
                      "x", value=ratio, target="<= 4", ok=ratio <= 4,
                      note=f"the whole decision: {stat.median / commit.median:.1f}x"))


def cli(report: Report, url: str, root: Path, n: int, templates: Path) -> None:
    repo = synthetic_repo(root / "dec-cli", 20)
    app = make_app(url, root / "dec-cli", templates_dirs=(templates,))
    ids = _gated(app, repo, n, "c")
    app.close()
    env = {"DEVFLOW_TEMPLATES_DIR": str(templates)}
    call = Stat.of([timed(lambda r=r: devflow_cmd(url, root / "dec-cli", "decide", r,
                                                  "approve", "--no-drive", "--json", env=env))
                    for r in ids])
    py = sys.executable
    python = Stat.of(repeat(lambda: os.system(f"{py} -c pass"), 10))  # noqa: S605
    imports = Stat.of(repeat(lambda: os.system(f"{py} -c 'import devflow.app'"), 5))  # noqa: S605
    cli_imports = Stat.of(repeat(lambda: os.system(  # noqa: S605
        f"{py} -c 'import devflow.cli.main'"), 5))
    help_ = Stat.of(repeat(lambda: devflow_cmd(url, root / "dec-cli", "--help"), 10))
    report.add(Figure("decide", "decide via CLI process", "ms", call))
    report.add(Figure("decide", "  of which: interpreter start", "ms", python))
    report.add(Figure("decide", "  importing devflow.app", "ms", imports,
                      note="includes interpreter start; the store, the engine and the "
                           "validators load with the verbs that use them (section cli)"))
    report.add(Figure("decide", "devflow --help", "ms", help_, target="< 300",
                      ok=help_.median < 300))
    report.add(Figure("decide", "  of which: importing devflow.cli.main", "ms", cli_imports,
                      note="includes interpreter start"))


def concurrent(report: Report, url: str, root: Path, approvers: int, templates: Path) -> None:
    repo = synthetic_repo(root / "dec-conc", 20)
    app = make_app(url, root / "dec-conc", templates_dirs=(templates,))
    ids = _gated(app, repo, approvers, "k")
    barrier = threading.Barrier(approvers)
    latencies: list[float] = []
    lock = threading.Lock()

    def approver(run_id: str) -> None:
        barrier.wait()
        ms = timed(lambda: _decide(app, run_id))
        with lock:
            latencies.append(ms)

    threads = [threading.Thread(target=approver, args=(r,)) for r in ids]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = (time.perf_counter() - started) * 1000
    recorded = sum(len(app.store.approvals.decisions(run_id=r)) for r in ids)
    app.close()
    report.add(Figure("decide", f"{approvers} concurrent approvers (postgresql), per decision",
                      "ms", Stat.of(latencies), note=f"all done in {wall:.0f} ms; "
                      f"{recorded} decisions recorded"))
