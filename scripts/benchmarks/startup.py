"""Run start against ``git worktree add`` alone, on a repository of about 2,000 files."""

from __future__ import annotations

import contextlib
from pathlib import Path

import anyio
from common import Figure, Report, Stat, calls_timed, make_app, start_request, synthetic_repo, timed

from devflow import git, worktree
from devflow.engine import start
from devflow.engine.context import new_owner
from devflow.requests import StartRequest


def run(report: Report, url: str, root: Path, n: int, templates: Path) -> None:
    repo = synthetic_repo(root / "big", 2000)
    app = make_app(url, root, templates_dirs=(templates,))
    ctx = app.context()
    ctx.catalog.templates()  # load definitions once, as a long-lived process would
    raw, ours, own = [], [], []
    with calls_timed(worktree, "add") as spent, contextlib.closing(app):
        for i in range(n + 1):  # A B A B: the two share the machine's drift
            path = root / "raw" / f"w{i}"
            raw_ms = timed(lambda i=i, path=path: git.run(
                ["worktree", "add", "--quiet", "-b", f"raw-{i}", str(path), "main"], repo))
            request = start_request(repo, "bench5@1", run_id=f"bench-{i}")

            def create(request: StartRequest = request) -> None:
                anyio.run(start.start_detached, ctx, request, new_owner("bench"))  # --detach
            spent.clear()
            ours_ms = timed(create)
            if i:  # the first pair warms caches
                raw.append(raw_ms)
                ours.append(ours_ms)
                own.append(ours_ms - sum(spent))
    a, b = Stat.of(raw), Stat.of(ours)
    report.add(Figure("start", "git worktree add (2,000 files)", "ms", a))
    report.add(Figure("start", "devflow run start (worktree included)", "ms", b))
    report.add(Figure("start", "devflow's own part of a run start", "ms", Stat.of(own),
                      note="each start minus its own worktree add (lock and git): finding "
                           "the repository and base, creating the run, recording its "
                           "worktree and handing its lease back with it"))
    ratio = b.median / a.median
    report.add(Figure("start", "run start / git worktree add", "x", value=ratio,
                      target="<= 1.15", ok=ratio <= 1.15))
