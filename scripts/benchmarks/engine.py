"""Engine cost per phase with an instant scripted agent, agent time and checkpoints excluded;
artifact validation against a cached validator."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

from anchors import SessionCommit
from common import Figure, Report, Stat, calls_timed, make_app, start_request, synthetic_repo, timed

from devflow import artifacts, worktree
from devflow.backends import samples
from devflow.engine import attempt


def per_phase(report: Report, url: str, root: Path, label: str, anchor: SessionCommit,
              runs: int, templates: Path) -> None:
    """A phase's own cost, and a run's fixed cost, from runs of 20 and of 2 phases.

    Each drive's engine time is its wall time minus its agents' process time and minus
    its checkpoint commits (timed apart). A phase costs the difference between the two
    lengths of run, per phase of difference; what is left of a 2-phase run is the run's
    own cost (taking the lease, reading the run, completing it, its report). The session
    commits it is divided by are taken between the drives, on the same database.
    """
    repo = synthetic_repo(root / f"engine-{label}", 50)
    app = make_app(url, root / label, templates_dirs=(templates,))
    def engine_ms(template: str, run_id: str) -> tuple[float, int]:
        view = app.start(start_request(repo, template, run_id=run_id, base="main"),
                         detach=True)
        spent.clear()
        started = time.perf_counter()
        done, _ = app.drive(view.run.id)
        total = (time.perf_counter() - started) * 1000
        assert done.run.state == "completed", done.run.failure_reason
        agents = sum(inv.duration_ms or 0 for inv in app.store.runs.invocations(view.run.id))
        commit_ms.append(sum(spent) / len(done.phases))
        checks_ms.append((sum(before) + sum(after)) / len(done.phases))
        before.clear()
        after.clear()
        return total - agents - sum(spent), len(done.phases)

    long_ms, short_ms, amortized, commit_ms, commits, checks_ms = [], [], [], [], [], []
    with calls_timed(worktree, "checkpoint") as spent, contextlib.closing(app), \
            calls_timed(attempt, "_ready") as before, calls_timed(attempt, "_put_back") as after:
        app.drive  # noqa: B018 - resolve before timing
        engine_ms("bench20@1", f"e{label}w")  # warm caches and connections
        for i in range(runs):  # A B A B: the two share the machine's drift
            long_, phases = engine_ms("bench20@1", f"e{label}l{i}")
            commits += anchor.sample(20)
            short, few = engine_ms("bench2@1", f"e{label}s{i}")
            commits += anchor.sample(20)
            long_ms.append(long_)
            short_ms.append(short)
            amortized.append(long_ / phases)
    short_stat = Stat.of(short_ms)
    marginal = Stat.of([(a - b) / (phases - few) for a, b in zip(long_ms, short_ms, strict=True)])
    fixed = short_stat.median - few * marginal.median
    report.add(Figure("engine", f"engine cost per phase ({label})", "ms", marginal,
                      note=f"runs of {phases} against runs of {few} phases; agent process "
                           f"and checkpoint commit excluded"))
    commit = Stat.of(commits)
    report.add(Figure("engine", f"session commit ({label})", "ms", commit,
                      note="taken between the drives above, on the same database"))
    ratio = marginal.median / commit.median
    report.add(Figure("engine", f"engine per phase / session commit ({label})", "x",
                      value=ratio, target="<= 8", ok=ratio <= 8))
    report.add(Figure("engine", f"engine cost of a run, besides its phases ({label})", "ms",
                      value=fixed, note="lease, reads, completion, final report"))
    report.add(Figure("engine", f"engine cost per phase of a {phases}-phase run, "
                                f"all included ({label})", "ms", Stat.of(amortized),
                      note=f"its {phases} phases and the run's own cost, per phase"))
    report.add(Figure("engine", f"checkpoint commit per phase ({label}, timed apart)", "ms",
                      Stat.of(commit_ms)))
    report.add(Figure("engine", f"git checks per phase ({label}, in the engine cost)", "ms",
                      Stat.of(checks_ms[1:]),
                      note=".git, HEAD and the run branch, before the phase and after "
                           "each attempt"))


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
