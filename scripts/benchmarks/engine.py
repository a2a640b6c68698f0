"""Engine cost per phase with an instant scripted agent, agent time and checkpoints excluded;
artifact validation against a cached validator."""

from __future__ import annotations

import json
import time
from pathlib import Path

from common import Figure, Report, Stat, make_app, start_request, synthetic_repo, timed

from devflow import artifacts, worktree
from devflow.backends import samples


def per_phase(report: Report, url: str, root: Path, label: str, anchor: Stat,
              runs: int, templates: Path) -> None:
    repo = synthetic_repo(root / f"engine-{label}", 50)
    app = make_app(url, root / label, templates_dirs=(templates,))
    spent: list[float] = []
    real_checkpoint = worktree.checkpoint

    def counted(path: Path, message: str) -> str | None:
        start = time.perf_counter()
        try:
            return real_checkpoint(path, message)
        finally:
            spent.append((time.perf_counter() - start) * 1000)

    worktree.checkpoint = counted  # type: ignore[assignment]
    per_phase_ms, commit_ms = [], []
    try:
        app.drive  # noqa: B018 - resolve before timing
        for i in range(runs + 1):
            view = app.start(start_request(repo, "bench20@1", run_id=f"e{label}{i}",
                                           base="main"), detach=True)
            spent.clear()
            started = time.perf_counter()
            done, _ = app.drive(view.run.id)
            total = (time.perf_counter() - started) * 1000
            assert done.run.state == "completed", done.run.failure_reason
            agents = sum(inv.duration_ms or 0 for inv in app.store.runs.invocations(view.run.id))
            phases = len(done.phases)
            if i:
                per_phase_ms.append((total - agents - sum(spent)) / phases)
                commit_ms.append(sum(spent) / phases)
    finally:
        worktree.checkpoint = real_checkpoint  # type: ignore[assignment]
        app.close()
    stat = Stat.of(per_phase_ms)
    report.add(Figure("engine", f"engine cost per phase ({label})", "ms", stat,
                      note="agent process and checkpoint commit excluded"))
    report.add(Figure("engine", f"session commit ({label})", "ms", anchor))
    ratio = stat.median / anchor.median
    report.add(Figure("engine", f"engine per phase / session commit ({label})", "x",
                      value=ratio, target="<= 8", ok=ratio <= 8))
    report.add(Figure("engine", f"checkpoint commit per phase ({label}, timed apart)", "ms",
                      Stat.of(commit_ms)))


def validation(report: Report, url: str, root: Path) -> None:
    app = make_app(url, root / "validation")
    schemas = app.catalog.schemas
    doc = samples.valid("dev/review@1", schemas)
    data = json.dumps(doc).encode()
    validator = schemas.validator("dev/review@1")
    raw, checked = [], []
    for _ in range(400):  # A B A B: the two share the machine's drift
        raw.append(timed(lambda: list(validator.iter_errors(json.loads(data)))))
        checked.append(timed(lambda: artifacts.check_bytes(data, "dev/review@1", schemas)))
    cached, ours = Stat.of(raw[20:]), Stat.of(checked[20:])  # the first pairs warm caches
    app.close()
    report.add(Figure("engine", "cached validator (parse + iter_errors)", "ms", cached))
    report.add(Figure("engine", "devflow artifact validation", "ms", ours))
    ratio = ours.median / cached.median
    report.add(Figure("engine", "artifact validation / cached validator", "x", value=ratio,
                      target="<= 1.2", ok=ratio <= 1.2))
