"""The prompt of one attempt: who the agent is, what the run wants, what this phase asks,
the schema its artifact must meet, what earlier phases produced, and what must change."""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from devflow import artifacts, model
from devflow.definitions import Persona
from devflow.schemas import SchemaRegistry

_MAX_EMBED: Final = 24_000


def compose(run: model.Run, phase: model.Phase, attempt: int, persona: Persona,
            earlier: Sequence[model.Phase], schemas: SchemaRegistry) -> str:
    d = phase.definition
    parts = [
        f"# devflow run {run.id}: phase `{phase.key}` ({d.title}), attempt {attempt}",
        f"You are the **{d.role}** of this run (template {run.template_ref}). You work in "
        f"the current directory, a git worktree of the project on branch `{run.branch}`. "
        "devflow commits your changes when the phase ends; do not commit or switch branches.",
    ]
    if persona.prompt.strip():
        parts.append(persona.prompt.strip())
    if run.objective:
        parts.append(f"## Objective\n\n{run.objective.strip()}")
    parts.append(f"## Requirements\n\n{run.requirements.strip() or '(none given)'}")
    parts.append(f"## This phase: {d.title}\n\n{d.instructions.strip() or '(no instructions)'}")
    if d.artifact is not None:
        parts.append(
            f"## Your artifact\n\nWrite one JSON document at `{d.artifact.path}` (relative to "
            f"the current directory) that validates against the JSON Schema "
            f"`{d.artifact.schema}` below. The file holds only that JSON.\n\n"
            f"```json\n{_schema_text(schemas, d.artifact.schema)}\n```")
    feedback = _feedback(phase.control)
    if feedback:
        parts.append(feedback)
    shown = _earlier(earlier)
    if shown:
        parts.append("## What earlier phases produced\n\n" + "\n\n".join(shown))
    return "\n\n".join(parts) + "\n"


def _dump(value: Any) -> str:
    text = json.dumps(value, indent=2, ensure_ascii=False)
    return text if len(text) <= _MAX_EMBED else text[:_MAX_EMBED] + "\n… (cut)"


@functools.lru_cache(maxsize=64)
def _schema_text(schemas: SchemaRegistry, schema_id: str) -> str:
    return _dump(schemas.get(schema_id).contents)


#: (kept path, sha256) -> the artifact as a prompt shows it, at most _KEPT_MAX of them
_KEPT: dict[tuple[str, str], str] = {}
_KEPT_MAX: Final = 1024
_kept_lock = threading.Lock()


def kept(path: str, sha256: str, value: Any) -> None:
    """An artifact just validated and kept at ``path``: the next phases' prompts show it
    from the value validated, without reading the copy back (it was a tenth of a
    phase's own cost)."""
    _remember((path, sha256), _dump(value))


def _kept_text(path: str, sha256: str) -> str:
    """A kept artifact as the prompt shows it: read (and its hash checked) once per process
    unless ``kept`` gave it."""
    text = _KEPT.get((path, sha256))
    if text is None:
        text = _dump(artifacts.load_stored(Path(path), sha256))
        _remember((path, sha256), text)
    return text


def _remember(key: tuple[str, str], text: str) -> None:
    with _kept_lock:
        _KEPT[key] = text
        while len(_KEPT) > _KEPT_MAX:
            del _KEPT[next(iter(_KEPT))]


def _earlier(phases: Sequence[model.Phase]) -> list[str]:
    shown = []
    for p in phases:
        if p.artifact_stored and p.artifact_sha and p.definition.artifact:
            shown.append(f"### `{p.key}` ({p.definition.title}), "
                         f"`{p.definition.artifact.path}`\n\n"
                         f"```json\n{_kept_text(p.artifact_stored, p.artifact_sha)}\n```")
    return shown


def _feedback(control: model.PhaseControl) -> str:
    parts = []
    if control.interrupted:
        parts.append("## Note\n\nAn earlier attempt of this phase was interrupted (devflow's "
                     "process stopped); the worktree was reset to the last checkpoint. Start "
                     "afresh.")
    changes = control.changes
    if changes:
        lines = [f"## Changes requested by {changes.actor or 'the approver'}"]
        if changes.comment:
            lines.append(changes.comment.strip())
        for item in changes.rejected_sections:
            lines.append(f"- section `{item.key}` was rejected"
                         + (f": {item.comment}" if item.comment else ""))
        lines.append("Address every point, then write the artifact again.")
        parts.append("\n\n".join(lines))
    repair = control.repair
    if repair:
        errors = "\n".join(f"- `{e.pointer or '/'}`: {e.message}" for e in repair.errors)
        why = ("It changed the worktree's git metadata" if repair.code == "agent_tampered"
               else "It did not leave a valid artifact")
        parts.append(f"## Your previous attempt was refused\n\n{why} ({repair.code}). "
                     f"Fix every point and write the whole file again:\n\n{errors}")
    return "\n\n".join(parts)
