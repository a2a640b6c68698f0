"""devflow's own share of a gated run with the real Claude Code, through the CLI.

The workload: a repository of about 2,000 files; a template of two AI steps with a gate
between them (``implement``, gated, then ``review``); ``devflow run start`` drives the
first step and stops at the gate, ``devflow approve`` records the decision and drives
the second step to the end. The agents are the real Claude Code
(``scripts/install-agent-clis``) talking to the tests' fake model server on 127.0.0.1.

Whole wall is the two commands' wall time (the person's wait between them excluded);
the agents' wall is what the run's invocations recorded (from spawn to exit);
devflow's share is the difference. The split comes from the same commands run under
``traced.py`` (alternating with the plain ones), which counts wall time by what the
command was doing. With ``devflow daemon`` running on the workload's home, the same
workload also runs through it (the console script hands both commands to it), alternating
with the others: the "with the daemon" figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cli import daemon_served, plain_env, start_daemon, stop_daemon
from common import Figure, Report, Stat, synthetic_repo

ROOT = Path(__file__).resolve().parents[2]
TARGET_MS = 850.0
TEMPLATE = """\
name: gated2
version: 1
description: Two AI steps with a person's gate between them (the gated bench).
roles:
  implementer: {description: Makes the change.}
  reviewer: {description: Reviews it.}
gates:
  looks_right: {message: "Does the change look right?"}
phases:
  - key: implement
    title: Implement the change
    roles: [implementer]
    artifact: {path: .devflow/implementation.json, schema: dev/implementation@1}
    gates: [looks_right]
    max_repairs: 0
    instructions: Make the change, then record it in .devflow/implementation.json.
  - key: review
    title: Review the change
    roles: [reviewer]
    artifact: {path: .devflow/review.json, schema: dev/review@1}
    max_repairs: 0
    instructions: Review the change, then record it in .devflow/review.json.
"""
PARTS = ("start-up", "definitions", "binding", "decision", "until the agent starts",
         "engine, after the agent", "git", "output and exit")
#: finer parts of the engine's two, shown under them
ENGINE_PARTS = ("database", "validation", "prompt", "report")
EXPLAINED = {
    "start-up": "interpreter, imports, settings, logging (both commands)",
    "definitions": "templates, personas and schemas loaded and checked",
    "binding": "roles bound to personas; the backend's availability and version",
    "decision": "approve: the decision's reads, evidence check and transaction, git aside",
    "until the agent starts": "the engine's own work in each command before its agent "
                              "starts, git and the parts above aside",
    "engine, after the agent": "the rest: the verdict, the next step, the report",
    "database": "of the engine's: transactions (SQLite commits are fsynced)",
    "validation": "of the engine's: artifacts and the report checked against their schemas",
    "prompt": "of the engine's: prompts composed",
    "report": "of the engine's: the final report composed and written",
    "git": "every git process (locate, worktree add, checkpoints, evidence, report)",
    "output and exit": "from the app's last return: printing, closing, interpreter exit",
}


def _claude() -> Path | None:
    root = os.environ.get("DEVFLOW_AGENT_CLIS") or str(
        Path.home() / ".cache" / "devflow" / "agent-clis")
    path = Path(root) / "bin" / "claude"
    return path if path.exists() and os.access(path, os.X_OK) else None


def run(report: Report, root: Path, n: int) -> None:
    binary = _claude()
    if binary is None:
        report.add(Figure("gated", "skipped: Claude Code is not installed", "",
                          note="run scripts/install-agent-clis"))
        return
    sys.path.insert(0, str(ROOT))  # the tests' fake model server and personas
    from devflow.schemas import SchemaRegistry  # noqa: PLC0415 - only this section needs it
    from tests.fakes import agents  # noqa: PLC0415 - importable once ROOT is on the path
    from tests.fakes.model_server import FakeModel  # noqa: PLC0415 - as above

    root.mkdir(parents=True)
    repo = synthetic_repo(root / "repo", 2000)
    templates = root / "templates"
    templates.mkdir()
    (templates / "gated2.yaml").write_text(TEMPLATE, encoding="utf-8")
    schemas = SchemaRegistry.from_dirs([ROOT / "schemas"])
    requirements = root / "requirements.md"
    requirements.write_text(agents.requirements(schemas), encoding="utf-8")
    with FakeModel() as fake:
        binds = agents.quick_personas(root / "personas", "claude-code", fake, binary)
        env = plain_env()
        env.update({"DEVFLOW_HOME": str(root / "home"), "DEVFLOW_WORKSPACE": str(root / "ws"),
                    "DEVFLOW_ACTOR": "bench", "DEVFLOW_TEMPLATES_DIR": str(templates),
                    "DEVFLOW_PERSONAS_DIR": str(root / "personas")})
        start_args = ["run", "start", "--repo", str(repo), "--base", "main", "--template",
                      "gated2@1", "--requirements", str(requirements), "--json",
                      *[f"--bind={role}={ref}" for role, ref in binds.items()]]
        plain: list[dict[str, float]] = []
        traced: list[dict[str, float]] = []
        served: list[dict[str, float]] = []
        off = {**env, "DEVFLOW_DAEMON": "off"}
        start_daemon(env)
        try:
            for i in range(n + 1):  # the first round warms the disk cache and devflow's caches
                for kind in ("plain", "traced", "daemon"):
                    figures = _workload(env if kind == "daemon" else off, start_args,
                                        root / "traces" / f"{i}", kind == "traced")
                    if i:
                        {"plain": plain, "traced": traced, "daemon": served}[kind].append(
                            figures)
            if daemon_served(env) != 2 * (n + 1):
                raise RuntimeError("the daemon refused commands: see run/daemon.log")
        finally:
            stop_daemon(env)
        assert fake.outside == [], fake.outside
    _report(report, plain, traced, served)


def _command(env: dict[str, str], args: list[str], trace: Path | None) -> tuple[float, Any]:
    """(wall ms, JSON output) of one devflow command; traced into ``trace`` when given."""
    py = sys.executable
    argv = ([py, str(Path(__file__).with_name("traced.py"))] if trace
            else [str(Path(py).parent / "devflow")])
    full = dict(env)
    started = time.monotonic() * 1000
    if trace is not None:
        full.update(DEVFLOW_BENCH_TRACE=str(trace), DEVFLOW_BENCH_SPAWNED=repr(started))
    done = subprocess.run([*argv, *args], capture_output=True, text=True, env=full,
                          stdin=subprocess.DEVNULL, check=False)
    ended = time.monotonic() * 1000
    if done.returncode != 0:
        raise RuntimeError(f"devflow {' '.join(args)}: exit {done.returncode}\n"
                           f"{done.stdout}\n{done.stderr}")
    return ended - started, (json.loads(done.stdout), ended)


def _workload(env: dict[str, str], start_args: list[str], traces: Path,
              tracing: bool) -> dict[str, float]:
    traces.mkdir(parents=True, exist_ok=True)
    trace_start = traces / f"start-{tracing}.json" if tracing else None
    trace_approve = traces / f"approve-{tracing}.json" if tracing else None
    wall_start, (started, start_end) = _command(env, start_args, trace_start)
    run = started["run"]
    assert run["state"] == "awaiting_approval", run
    wall_approve, (approved, approve_end) = _command(env, ["approve", run["id"], "--json"],
                                                     trace_approve)
    assert approved["run"]["state"] == "completed", approved["run"]
    body = json.loads((Path(run["workspace"]) / "report.json").read_text(encoding="utf-8"))
    agents_ms = [i["duration_ms"] for i in body["invocations"] if i["kind"] == "agent"]
    assert len(agents_ms) == 2, body["invocations"]
    figures = {"whole": wall_start + wall_approve, "agents": float(sum(agents_ms)),
               "start": wall_start, "approve": wall_approve}
    figures["devflow"] = figures["whole"] - figures["agents"]
    if tracing:
        assert trace_start is not None and trace_approve is not None
        for trace, ended, wall in ((trace_start, start_end, wall_start),
                                   (trace_approve, approve_end, wall_approve)):
            _split(json.loads(trace.read_text(encoding="utf-8")), ended, wall, figures)
    return figures


def _split(trace: dict[str, Any], ended: float, wall: float,
           figures: dict[str, float]) -> None:
    figures["cpu"] = figures.get("cpu", 0.0) + trace["cpu"]
    spent = dict(trace["spent"])
    spent["output and exit"] = ended - trace.get("app_returned", ended)
    agent = spent.pop("agent", 0.0)
    finer = {p: spent.pop(p, 0.0) for p in ENGINE_PARTS}
    engine = wall - agent - sum(spent.values())
    before = dict(trace.get("spent_before_agent") or {})
    started = trace.get("agent_started", ended)
    # the engine's own time before the agent: from the command's first line (the
    # interpreter's start counted in start-up) to the agent's spawn, what was spent in
    # the parts aside
    until = started - trace["begun"] - sum(v for k, v in before.items()
                                           if k not in ENGINE_PARTS)
    spent["until the agent starts"] = until
    spent["engine, after the agent"] = engine - until
    for part in (*PARTS, *ENGINE_PARTS):
        figures[part] = figures.get(part, 0.0) + spent.get(part, finer.get(part, 0.0))


def _report(report: Report, plain: list[dict[str, float]], traced: list[dict[str, float]],
            served: list[dict[str, float]]) -> None:
    def stat(rows: list[dict[str, float]], key: str) -> Stat:
        return Stat.of([r[key] for r in rows])

    report.add(Figure("gated", "whole wall (run start + approve)", "ms", stat(plain, "whole"),
                      note="two AI steps and a gate, real Claude Code, fake model, 2,000 "
                           "files; the person's wait excluded"))
    report.add(Figure("gated", "  run start (first step, to the gate)", "ms",
                      stat(plain, "start")))
    report.add(Figure("gated", "  approve (second step, to the end)", "ms",
                      stat(plain, "approve")))
    report.add(Figure("gated", "agents' wall (their invocations)", "ms", stat(plain, "agents")))
    share = stat(plain, "devflow")
    report.add(Figure("gated", "devflow's share (whole - agents)", "ms", share,
                      target=f"<= {TARGET_MS:.0f}", ok=share.median <= TARGET_MS))
    daemon = stat(served, "devflow")
    report.add(Figure("gated", "with devflow daemon: whole wall", "ms", stat(served, "whole"),
                      note="the same workload, both commands through a running daemon"))
    report.add(Figure("gated", "with devflow daemon: agents' wall", "ms",
                      stat(served, "agents")))
    report.add(Figure("gated", "with devflow daemon: devflow's share", "ms", daemon,
                      target=f"<= {TARGET_MS:.0f}", ok=daemon.median <= TARGET_MS,
                      note=f"{daemon.median / share.median:.2f}x without it"))
    report.add(Figure("gated", "traced: devflow's share", "ms", stat(traced, "devflow"),
                      note="the same workload under traced.py (its wrappers cost a little); "
                           "split below"))
    for part in PARTS:
        report.add(Figure("gated", f"  {part}", "ms", stat(traced, part),
                          note=EXPLAINED[part]))
        if part == "engine, after the agent":
            for finer in ENGINE_PARTS:
                report.add(Figure("gated", f"    {finer}", "ms", stat(traced, finer),
                                  note=EXPLAINED[finer]))
    report.add(Figure("gated", "traced: devflow's own CPU (both commands)", "ms",
                      stat(traced, "cpu"), note="user + system time of the two devflow "
                      "processes themselves (not git's, not the agents')"))
