"""The final report of a terminal run: JSON (``common/final-report@1``) and Markdown.

``compose`` turns what the engine gathered into the JSON report, ``markdown`` renders
it for a reviewer, ``write`` puts both in place atomically (temp file, fsync, rename),
and ``stub`` is what is written when composing failed, so no terminal run is ever
left without a report.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from devflow import access, events, faults, model
from devflow.durations import format_duration
from devflow.model import iso, utcnow
from devflow.worktree import Commit, FileStat

REPORT_SCHEMA: Final = "common/final-report@1"


@dataclass(frozen=True)
class ReportData:
    run: model.Run
    phases: Sequence[model.Phase]
    bindings: Sequence[model.Binding]
    approvals: Sequence[model.Approval]
    decisions: Sequence[model.Decision]
    invocations: Sequence[model.Invocation]
    events: Sequence[model.Event]
    commits: Sequence[Commit] = ()
    files: Sequence[FileStat] = ()
    git_error: str | None = None
    findings: Sequence[dict[str, Any]] = field(default_factory=list)


def _seconds(start: Any, end: Any) -> float | None:
    return round((end - start).total_seconds(), 3) if start and end else None


def compose(data: ReportData) -> dict[str, Any]:
    run = data.run
    by_approval: dict[int, list[model.Decision]] = {}
    for d in data.decisions:
        by_approval.setdefault(d.approval_id, []).append(d)
    return {
        "report_version": 1,
        "generated_at": iso(utcnow()),
        "run": {
            "id": run.id, "state": str(run.state), "template": run.template_ref,
            "template_hash": run.template_hash, "repo": run.repo, "base": run.base,
            "base_sha": run.base_sha, "branch": run.branch, "worktree": run.worktree,
            "objective": run.objective, "created_by": run.created_by,
            "created_at": iso(run.created_at), "ended_at": iso(run.ended_at),
            "duration_seconds": _seconds(run.created_at, run.ended_at),
            "recoveries": run.recoveries,
            "failure": ({"code": run.failure_code, "reason": run.failure_reason}
                        if run.failure_code else None),
        },
        "phases": [{
            "key": p.key, "title": p.title, "role": p.definition.role, "origin": p.origin,
            "state": str(p.state), "attempts": p.attempt, "repairs": p.repairs,
            "duration_seconds": _seconds(p.started_at, p.ended_at),
            "artifact": ({"path": p.definition.artifact.path,
                          "schema": p.definition.artifact.schema, "sha256": p.artifact_sha}
                         if p.definition.artifact else None),
            "checkpoint": p.checkpoint_sha,
            "failure": ({"code": p.failure_code, "reason": p.failure_reason}
                        if p.failure_code else None),
            "usage": {"tokens_in": p.tokens_in, "tokens_out": p.tokens_out,
                      "cost_usd": round(p.cost_usd, 6)},
        } for p in data.phases],
        "bindings": [b.to_json() for b in data.bindings],
        "approvals": [{
            "id": a.id, "phase": a.phase_key, "gate": a.gate, "round": a.round,
            "state": str(a.state), "opened_at": iso(a.opened_at),
            "resolved_at": iso(a.resolved_at), "artifact_sha256": a.evidence.artifact_sha,
            "decisions": [{"action": d.action, "actor": d.actor, "comment": d.comment,
                           "token": d.client_token, "at": iso(d.created_at),
                           "sections": dict(d.sections),
                           "authentication": (dict(d.authentication)
                                              if d.authentication is not None else None)}
                          for d in by_approval.get(a.id, [])],
        } for a in data.approvals],
        "invocations": [{
            "phase": i.phase_key, "attempt": i.attempt, "kind": i.kind, "backend": i.backend,
            "argv": list(i.argv), "exit_code": i.exit_code, "signal": i.signal,
            "duration_ms": i.duration_ms, "tokens_in": i.tokens_in, "tokens_out": i.tokens_out,
            "cost_usd": i.cost_usd, "session_id": i.session_id, "outcome": i.outcome,
            "reason": i.reason,
        } for i in data.invocations],
        "usage": {"tokens_in": run.tokens_in, "tokens_out": run.tokens_out,
                  "cost_usd": round(run.cost_usd, 6)},
        "git": {"commits": [{"sha": c.sha, "subject": c.subject} for c in data.commits],
                "files": [{"path": f.path, "added": f.added, "deleted": f.deleted}
                          for f in data.files],
                "error": data.git_error},
        "findings": list(data.findings),
        "validation_errors": [
            {"phase": e.phase or "", "attempt": int(e.payload.get("attempt", 0)),
             "code": e.payload.get("code"), "errors": list(e.payload.get("errors", [])),
             "artifact": _refused_artifact(e.payload.get("artifact"), run.workspace)}
            for e in data.events if e.type == events.PHASE_ARTIFACT_INVALID.name],
        "unresolved": _unresolved(data),
        "events_tail": [{"seq": e.seq, "type": e.type, "phase": e.phase, "ts": iso(e.ts) or ""}
                        for e in data.events[-25:]],
    }


def _refused_artifact(shown: Any, workspace: str) -> dict[str, Any] | None:
    """What a refused attempt left: where its bytes are kept (with a link relative to the
    report, which is written in the run's workspace), or why they are not."""
    if not isinstance(shown, dict):
        return None  # an event of a run that ended before refused artifacts were kept
    kept = shown.get("kept")
    if not kept:
        return {"kept": None, "why": str(shown.get("why") or "")}
    path = Path(str(kept))
    link = path.relative_to(workspace).as_posix() if path.is_relative_to(workspace) else str(path)
    return {"kept": str(path), "link": link, "sha256": shown.get("sha256"),
            "bytes": shown.get("bytes")}


def _unresolved(data: ReportData) -> list[str]:
    items = []
    run = data.run
    if run.failure_code:
        items.append(f"run {run.state}: {run.failure_code}: {run.failure_reason or ''}".strip())
    for p in data.phases:
        if p.state in ("failed", "pending", "running", "validating", "awaiting_approval"):
            items.append(f"phase {p.key} is {p.state}"
                         + (f" ({p.failure_code}: {p.failure_reason})" if p.failure_code else ""))
    for a in data.approvals:
        if a.state in ("aborted", "pending"):
            items.append(f"gate {a.gate} of phase {a.phase_key} (round {a.round}) is {a.state}")
    for f in data.findings:
        if f.get("severity") in ("major", "critical"):
            items.append(f"{f['severity']} finding {f.get('key')}: {f.get('message')}")
    if data.git_error:
        items.append(f"git summary unavailable: {data.git_error}")
    return items


def stub(run_id: str, state: str, error: str) -> dict[str, Any]:
    return {"report_version": 1, "generated_at": iso(utcnow()),
            "run": {"id": run_id, "state": state},
            "unresolved": ["final_report_compose_failed"], "error": error[:2000]}


def markdown(report: dict[str, Any]) -> str:
    run = report["run"]
    lines = [f"# devflow run {run['id']}: {run['state']}", ""]
    if "final_report_compose_failed" in report["unresolved"] and "phases" not in report:
        return "\n".join([*lines, "The full report could not be composed:", "",
                          f"    {report.get('error', '')}", "",
                          "Run `devflow sweep` to compose it again.", ""])
    duration = run.get("duration_seconds")
    lines += [
        "| | |", "|---|---|",
        f"| status | **{run['state']}** |", f"| template | {run.get('template')} |",
        f"| repository | `{run.get('repo')}` |",
        f"| base | `{run.get('base')}` ({(run.get('base_sha') or '')[:12]}) |",
        f"| branch | `{run.get('branch')}` |",
        f"| duration | {format_duration(duration) if duration is not None else '—'} |",
        f"| started by | {run.get('created_by')} |", "",
    ]
    if run.get("objective"):
        lines += ["**Objective:** " + run["objective"], ""]
    if run.get("failure"):
        lines += [f"**Failure:** `{run['failure']['code']}`: {run['failure']['reason']}", ""]
    lines += _table("Phases", ["phase", "role", "state", "attempts", "duration", "tokens in/out",
                               "cost", "artifact sha256"],
                    [[p["key"], p.get("role", ""), p["state"], str(p["attempts"]),
                      format_duration(p["duration_seconds"]) if p.get("duration_seconds") else "—",
                      f"{p['usage']['tokens_in']}/{p['usage']['tokens_out']}",
                      f"${p['usage']['cost_usd']:.4f}",
                      f"`{((p['artifact'] or {}).get('sha256') or '—')[:12]}`"]
                     for p in report["phases"]])
    lines += _table("Bindings", ["role", "persona", "backend"],
                    [[b["role"], b["persona"], f"{b['backend']} {b.get('backend_version') or ''}"]
                     for b in report["bindings"]])
    decisions = [[str(a["id"]), a["gate"], a["phase"], str(a["round"]), d["action"], d["actor"],
                  access.describe(d.get("authentication"), d["actor"]),
                  _verdicts(d.get("sections") or {}),
                  (d.get("comment") or "").replace("\n", " ")[:80]]
                 for a in report["approvals"] for d in a["decisions"]]
    lines += _table("Approvals and decisions",
                    ["approval", "gate", "phase", "round", "decision", "actor", "authenticated",
                     "sections", "comment"],
                    decisions or [[str(a["id"]), a["gate"], a["phase"], str(a["round"]),
                                   a["state"], "—", "—", "", ""] for a in report["approvals"]])
    lines += _table("Agent invocations", ["phase", "attempt", "backend", "exit", "duration",
                                          "tokens in/out", "cost", "note"],
                    [[i.get("phase") or "setup", str(i.get("attempt")), i["backend"], _exit(i),
                      format_duration((i["duration_ms"] or 0) / 1000),
                      f"{i.get('tokens_in') or 0}/{i.get('tokens_out') or 0}",
                      f"${i['cost_usd']:.4f}" if i.get("cost_usd") is not None else "—",
                      (i.get("reason") or "")[:160]]
                     for i in report["invocations"]])
    usage = report["usage"]
    lines += [f"Usage: {usage['tokens_in']} tokens in, {usage['tokens_out']} out, "
              f"${usage['cost_usd']:.4f}.", ""]
    git = report["git"]
    lines += ["## Git", "", f"{len(git['commits'])} commit(s) on `{run.get('branch')}`:", ""]
    lines += [f"- `{c['sha'][:12]}` {c['subject']}" for c in git["commits"]] + [""]
    lines += _table("", ["file", "+", "-"], [[f"`{f['path']}`", str(f["added"]), str(f["deleted"])]
                                              for f in git["files"]])
    if report["findings"]:
        lines += _table("Review findings", ["key", "severity", "where", "message"],
                        [[f.get("key", ""), f.get("severity", ""),
                          f"{f.get('file', '')}:{f.get('line', '')}".rstrip(":"),
                          f.get("message", "")] for f in report["findings"]])
    if report["validation_errors"]:
        lines += ["## Validation errors", ""]
        for v in report["validation_errors"]:
            lines.append(f"- {v['phase']} attempt {v['attempt']}: "
                         + "; ".join(f"{e['pointer']}: {e.get('message')}" if e.get("pointer")
                                     else str(e.get("message")) for e in v["errors"][:5]))
            lines += _refused_line(v.get("artifact"))
        lines.append("")
    lines += ["## Unresolved", ""] + ([f"- {u}" for u in report["unresolved"]] or ["Nothing."])
    lines += ["", "## Last events", ""]
    lines += [f"- {e['seq']} `{e['type']}` {e.get('phase') or ''} {e.get('ts', '')}"
              for e in report["events_tail"]]
    return "\n".join(lines) + "\n"


def _refused_line(artifact: dict[str, Any] | None) -> list[str]:
    if artifact is None:
        return []
    if artifact.get("kept"):
        link = artifact["link"]
        return [f"  - what the agent wrote: [{link}](<{link}>) ({artifact.get('bytes')} bytes, "
                f"sha256 `{str(artifact.get('sha256') or '')[:12]}`)"]
    return [f"  - not kept: {artifact.get('why') or 'no artifact'}"]


def _verdicts(sections: dict[str, Any]) -> str:
    """Per-section verdicts of a decision, rejected first: ``F2 reject, F1 approve``."""
    ordered = sorted(sections.items(), key=lambda kv: (kv[1] != "reject", kv[0]))
    return ", ".join(f"{key} {verdict}" for key, verdict in ordered)


def _exit(invocation: dict[str, Any]) -> str:
    """How an agent ended: its exit code, or timeout / interrupted / the signal that ended it."""
    outcome = invocation.get("outcome")
    if outcome == "timeout":
        return "timeout"
    if invocation.get("exit_code") is not None:
        return str(invocation["exit_code"])
    if outcome and outcome not in ("ok", "failed"):
        return str(outcome).replace("_", " ")
    return f"signal {invocation['signal']}" if invocation.get("signal") else "—"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(title: str, header: list[str], rows: list[list[str]]) -> list[str]:
    out = [f"## {title}", ""] if title else []
    if not rows:
        return [*out, "None.", ""]
    out.append("| " + " | ".join(header) + " |")
    out.append("|" + "---|" * len(header))
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return [*out, ""]


def write(directory: Path, report: dict[str, Any]) -> Path:
    """Write report.json and report.md atomically; the JSON's path."""
    directory.mkdir(parents=True, exist_ok=True)
    _atomic(directory / "report.md", markdown(report))
    faults.point("report_composed")
    target = directory / "report.json"
    _atomic(target, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return target


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
