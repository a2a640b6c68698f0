"""The vocabulary of events: every type devflow appends to a run's log, with its payload.

Each event type is declared here once, with its payload's fields (JSON type, whether
always present, meaning), and every emission goes through it: ``RUN_PAUSED.new(...)``
builds the ``model.NewEvent`` and refuses a payload that does not match the declaration
(a field missing or not declared, a value of another JSON type, a phase key given to a
run event or missing from a phase event). That refusal is a programming error
(``EventError``), found by the tests that drive each path; the check costs a few
dictionary lookups per event.

A reader's answer to "which events are there": this module, or ``docs/events.md``,
which is generated from it (``python -m devflow.events > docs/events.md``; a test fails
when the two differ). Another test fails when code in ``devflow/`` builds an event
without this module or spells an event's name as a string.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from devflow import model
from devflow.states import RunState

#: the JSON types a field may declare, and the Python values that are each
_JSON: Final[Mapping[str, tuple[type, ...]]] = MappingProxyType({
    "string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,),
    "array": (list, tuple), "object": (Mapping,), "null": (type(None),),
})


class EventError(ValueError):
    """An event that its declaration does not allow: a bug in the code that emits it."""


@dataclass(frozen=True, slots=True)
class Field:
    """One field of an event's payload: its JSON type(s), ``a|b``, and what it means."""

    name: str
    type: str
    meaning: str
    #: False: present only in some events of the type (the meaning says when)
    always: bool = True

    def accepts(self, value: Any) -> bool:
        for kind in self.type.split("|"):
            if kind == "any":
                return True
            if isinstance(value, bool) and kind in ("integer", "number"):
                continue  # JSON tells true from 1
            if isinstance(value, _JSON[kind]):
                return True
        return False


@dataclass(frozen=True, slots=True)
class EventType:
    name: str
    description: str
    #: whether the event is about one phase (then it carries the phase's key)
    phase: bool
    fields: tuple[Field, ...]

    def new(self, phase: str | None = None, payload: Mapping[str, Any] | None = None,
            key: str | None = None) -> model.NewEvent:
        """The event to append; ``key`` makes the append idempotent (``RunTx.event``)."""
        body = dict(payload or {})
        if problems := self.problems(phase, body):
            raise EventError(f"event {self.name}: " + "; ".join(problems))
        return model.NewEvent(self.name, phase, body, key)

    def problems(self, phase: str | None, payload: Mapping[str, Any]) -> list[str]:
        """How an event with this phase key and payload differs from the declaration."""
        found = []
        if self.phase and phase is None:
            found.append("a phase event needs the phase's key")
        elif not self.phase and phase is not None:
            found.append(f"not a phase event, but given phase {phase!r}")
        declared = {f.name: f for f in self.fields}
        for name in sorted(set(payload) - set(declared)):
            found.append(f"field {name!r} is not declared")
        for f in self.fields:
            if f.name not in payload:
                if f.always:
                    found.append(f"field {f.name!r} is missing")
            elif not f.accepts(payload[f.name]):
                found.append(f"field {f.name!r} is {type(payload[f.name]).__name__}, "
                             f"declared {f.type}")
        return found


_DECLARED: dict[str, EventType] = {}


def _declare(name: str, description: str, *fields: Field, phase: bool = False) -> EventType:
    if name in _DECLARED:
        raise EventError(f"event {name} is declared twice")
    for f in fields:
        if not set(f.type.split("|")) <= {*_JSON, "any"}:
            raise EventError(f"event {name}: field {f.name} has an unknown type {f.type!r}")
    _DECLARED[name] = EventType(name, description, phase, fields)
    return _DECLARED[name]


def declared() -> list[EventType]:
    """Every event type, in the order of this module (run, phase, agent, ...)."""
    return list(_DECLARED.values())


def get(name: str) -> EventType:
    """The declaration of the event type ``name`` (``EventError`` if there is none)."""
    try:
        return _DECLARED[name]
    except KeyError:
        raise EventError(f"no event type {name!r} is declared (devflow/events.py)") from None


# fields several events share
_ATTEMPT: Final = Field("attempt", "integer", "the phase's attempt number (1 for the first)")
_BY: Final = Field("by", "string", "who did it: a person's name, or `devflow`, `sweep`, "
                   "`system:...`")
_AUTH: Final = Field("authentication", "object|null",
                     "how the person who did it was authenticated (its method and subject)")
_APPROVAL: Final = Field("approval_id", "integer", "the approval request")
_GATE: Final = Field("gate", "string", "the gate's key in the template")

# -- the run ------------------------------------------------------------------------------
RUN_CREATED: Final = _declare(
    "run.created", "A run was started: its template, repository and branch.",
    Field("template", "string", "the template, `name@version`"),
    Field("template_hash", "string", "sha256 of the template's canonical JSON"),
    Field("repo", "string", "the repository's path"),
    Field("base", "string", "the base the run branches from, as given"),
    Field("branch", "string", "the run's branch"),
    Field("by", "string", "who started it"))
RUN_BOUND: Final = _declare(
    "run.bound", "Each role of the template has its persona; the run can be driven.",
    Field("bindings", "object", "persona (`name@version`) by role"),
    Field("sandbox", "object", "how each role's agent is contained, by role; only when a "
          "binding's persona says", always=False))
RUN_PAUSED: Final = _declare(
    "run.paused", "The run was paused: no new attempt starts until it is resumed.",
    _BY, Field("reason", "string|null", "why, as given"),
    Field("from", "string", "the state it was paused in (where resume goes back to)"), _AUTH,
    Field("blocked", "object", "what blocks the run: `{kind, path, message, fix}`; only when "
          "devflow paused it for a fault of the machine (a full disk, a git lock held)",
          always=False))
RUN_RESUMED: Final = _declare(
    "run.resumed", "A paused run was resumed.",
    _BY, Field("reason", "string|null", "why, as given"),
    Field("to", "string", "the state it went back to"), _AUTH,
    Field("blocked", "string", "the kind of fault that had blocked the run; only when one "
          "had", always=False))
_ENDED_FIELDS: Final = (
    _BY,
    Field("code", "string", "the error code it ended with; only when it ended on an error",
          always=False),
    Field("reason", "string|null", "why; only when one was given", always=False),
    Field("authentication", "object", "how the person who ended it was authenticated; only "
          "when a person did", always=False))
RUN_COMPLETED: Final = _declare(
    "run.completed", "The run ended with every phase done (terminal).", *_ENDED_FIELDS)
RUN_FAILED: Final = _declare(
    "run.failed", "The run ended on an error or a rejection at a gate (terminal); its "
    "active phases failed with it.",
    *_ENDED_FIELDS)
RUN_ABORTED: Final = _declare(
    "run.aborted", "The run was aborted by a person (`run abort`, or abort at a gate; "
    "terminal).",
    *_ENDED_FIELDS)
RUN_RECOVERED: Final = _declare(
    "run.recovered", "The sweep took the run back from a driver that stopped (its lease "
    "expired); its running phases were interrupted.",
    Field("owner", "string", "the lease owner that stopped"),
    Field("recoveries", "integer", "how many times this run was recovered, this one included"),
    Field("phases", "array", "the keys of the phases interrupted"),
    Field("agents", "array", "the agent processes found, and what became of them"),
    Field("driver", "string", "why the driver stopped though its worker lives on (the "
          "database was away); such a recovery is not counted", always=False))

# -- phases -------------------------------------------------------------------------------
PHASE_STARTED: Final = _declare(
    "phase.started", "An attempt of the phase began: its agent is about to run.",
    _ATTEMPT, Field("role", "string", "the role doing the phase"),
    Field("persona", "string", "the persona bound to that role, `name@version`"),
    Field("repair", "boolean", "whether the attempt repairs a refused artifact"), phase=True)
PHASE_ARTIFACT_INVALID: Final = _declare(
    "phase.artifact_invalid", "The attempt's artifact was refused (missing, too large, not "
    "JSON, or not valid against its schema).",
    _ATTEMPT, Field("code", "string", "the error code"),
    Field("errors", "array", "the problems: `{pointer, message}`, at most 50"),
    Field("repair", "boolean", "whether another attempt will repair it"),
    Field("artifact", "any", "the artifact as read, when it could be", always=False),
    phase=True)
PHASE_COMPLETED: Final = _declare(
    "phase.completed", "The phase is done: its artifact was accepted (and approved, when "
    "gated).",
    _ATTEMPT, Field("artifact_sha", "string|null", "sha256 of the accepted artifact"),
    Field("checkpoint", "string|null", "the checkpoint commit; only when no gate was "
          "passed", always=False),
    Field("approved_by", "string", "who approved it; only at a gate", always=False),
    phase=True)
PHASE_FAILED: Final = _declare(
    "phase.failed", "The phase failed (its repairs ran out, or its run ended).",
    _ATTEMPT, Field("code", "string|null", "the error code"),
    Field("reason", "string", "why"), phase=True)
PHASE_SKIPPED: Final = _declare(
    "phase.skipped", "The phase will not run.", Field("reason", "string", "why"), phase=True)
PHASE_INTERRUPTED: Final = _declare(
    "phase.interrupted", "The phase's attempt was cut short (its driver stopped, or was "
    "stopped); the phase is pending again and its next attempt starts afresh.",
    _ATTEMPT,
    Field("reason", "string", "why: the driver's words, or the sweep's when it recovered the run"),
    Field("agents", "array", "the agents the sweep found; when the sweep recovered the run",
          always=False),
    Field("artifact", "string", "what the sweep found of the artifact; when it recovered "
          "the run", always=False),
    Field("worktree", "string", "the state of the worktree the sweep found; when it "
          "recovered the run", always=False),
    Field("blocked", "string", "the kind of fault of the machine that cut it short; when "
          "one did", always=False),
    phase=True)
PHASE_CHANGES_REQUESTED: Final = _declare(
    "phase.changes_requested", "An approver asked for changes: the phase runs again with "
    "the feedback.",
    _ATTEMPT, _BY,
    Field("rewind", "boolean", "whether the worktree goes back to before the phase"),
    phase=True)
PHASE_PLANNED: Final = _declare(
    "phase.planned", "An approved phase plan added phases to the run.",
    Field("phases", "array", "the keys of the phases added"),
    Field("dropped", "array", "the keys of planned phases the approver rejected"),
    phase=True)

# -- agents -------------------------------------------------------------------------------
AGENT_STARTED: Final = _declare(
    "agent.started", "The attempt's agent process started.",
    _ATTEMPT, Field("backend", "string", "the backend running it"),
    Field("pid", "integer", "its process id"), Field("host", "string", "where it runs"),
    Field("invocation", "integer", "its invocation record"),
    Field("sandbox", "string", "how it is contained (`bubblewrap ...` or `none`)"),
    phase=True)
AGENT_PROGRESS: Final = _declare(
    "agent.progress", "Notes from the agent's output while it works (about every second).",
    _ATTEMPT, Field("notes", "array", "short lines, oldest first"), phase=True)
AGENT_EXITED: Final = _declare(
    "agent.exited", "The attempt's agent process ended.",
    _ATTEMPT, Field("exit_code", "integer|null", "its exit code"),
    Field("signal", "integer|null", "the signal that ended it"),
    Field("duration_ms", "integer", "how long it ran"),
    Field("timed_out", "boolean", "whether devflow ended it at its timeout"),
    Field("tokens_in", "integer|null", "tokens read, when the output says"),
    Field("tokens_out", "integer|null", "tokens written, when the output says"),
    Field("cost_usd", "number|null", "its cost, when known"),
    Field("session_id", "string|null", "the CLI's session, when it has one"),
    Field("failure", "string|null", "why it failed, as its output says"), phase=True)

# -- approvals ----------------------------------------------------------------------------
APPROVAL_REQUESTED: Final = _declare(
    "approval.requested", "A phase waits at a gate for a person's decision.",
    _APPROVAL, _GATE, Field("phase", "string", "the phase at the gate"),
    Field("round", "integer", "how many times this gate was opened for the phase"),
    Field("message", "string", "the gate's message to the approver"),
    Field("options", "array", "the actions the approver may take"),
    Field("artifact", "object", "the artifact shown: `{path, sha256}`"),
    Field("deadline", "string|null", "when it times out (ISO 8601)"),
    Field("artifact_sha", "string|null", "sha256 of the artifact shown"),
    Field("tree", "string|null", "the worktree's tree at the gate"), phase=True)
APPROVAL_RESOLVED: Final = _declare(
    "approval.resolved", "A decision was taken at a gate.",
    _APPROVAL, _GATE, Field("round", "integer", "the gate's round"),
    Field("action", "string", "approve, request_changes, reject or abort"),
    Field("actor", "string", "who decided"), Field("decision_id", "integer", "the decision"),
    Field("reason", "string|null", "devflow's reason, when devflow decided (timeout, "
          "escalation)"),
    Field("sections", "object", "verdicts on sections of the artifact, by section"),
    _AUTH, phase=True)
APPROVAL_EXPIRING: Final = _declare(
    "approval.expiring", "A gate's deadline is near (its `warn_before`).",
    _APPROVAL, _GATE, Field("round", "integer", "the gate's round"),
    Field("deadline", "string|null", "when it times out (ISO 8601)"), phase=True)
APPROVAL_ESCALATED: Final = _declare(
    "approval.escalated", "A step of a gate's escalation was taken: more approvers, or an "
    "action devflow takes itself.",
    _APPROVAL, _GATE, Field("round", "integer", "the gate's round"),
    Field("step", "integer", "the step's number (1 for the first)"),
    Field("reason", "string", "the step's audit reason"),
    Field("to", "array", "who was added; when the step adds approvers", always=False),
    Field("approvers", "array", "who may decide now; when the step adds approvers",
          always=False),
    Field("action", "string", "the action devflow takes; when the step decides",
          always=False),
    phase=True)

# -- the workspace ------------------------------------------------------------------------
WORKTREE_CREATED: Final = _declare(
    "worktree.created", "The run's worktree was made (or made again, on another host or "
    "after it was lost).",
    Field("path", "string", "the worktree"), Field("branch", "string", "the run's branch"),
    Field("from", "string|null", "what it was checked out from: the branch, or the base "
          "commit"),
    Field("host", "string", "where it lives"),
    Field("included", "array", "files copied in from the repository (`.devflow-include`), "
          "at most 50"))
WORKTREE_RESTORED: Final = _declare(
    "worktree.restored", "Before an attempt, the worktree was put back as the run left it.",
    Field("found", "array", "what had changed"),
    Field("sha", "string|null", "the commit it was put back to"), phase=True)
WORKTREE_REMOVED: Final = _declare(
    "worktree.removed", "`devflow worktree prune` removed the ended run's worktree (once: "
    "a run with this event is not pruned again).",
    Field("path", "string", "the worktree"), Field("bytes", "integer", "its size"),
    Field("branch_deleted", "boolean", "whether the run's branch was deleted too; only in "
          "events of a prune before `branch.deleted` existed", always=False))
BRANCH_DELETED: Final = _declare(
    "branch.deleted", "`devflow worktree prune --delete-branches` deleted the ended run's "
    "branch (once).",
    Field("branch", "string", "the branch"))
SALVAGE_DELETED: Final = _declare(
    "salvage.deleted", "`devflow worktree prune --delete-branches --force RUN` deleted the "
    "run's salvage refs (the work a recovery reset dropped).",
    Field("refs", "array", "the refs deleted"))
WORKTREE_SALVAGED: Final = _declare(
    "worktree.salvaged", "Before a recovery reset the worktree, what the reset would drop was "
    "committed to a ref of its own, `refs/heads/devflow/<run>/salvage-<n>`.",
    Field("ref", "string", "the salvage ref"), Field("sha", "string", "its commit"),
    Field("head", "string|null", "where the worktree's HEAD was"),
    Field("files", "array", "the files changed or added since the checkpoint, at most 50"),
    Field("reset_to", "string|null", "the checkpoint the worktree was then reset to"),
    _ATTEMPT, phase=True)
GIT_LOCK_REMOVED: Final = _declare(
    "git.lock_removed", "A stale git lock of the run's own (in its worktree's admin "
    "directory, or under its branch's refs) was removed: no live process held it.",
    Field("path", "string", "the lock file"),
    Field("age_seconds", "number", "how old it was"), Field("why", "string", "why it could go"))
CHECKPOINT_COMMITTED: Final = _declare(
    "checkpoint.committed", "The phase's work was committed on the run's branch.",
    _ATTEMPT, Field("sha", "string", "the commit"), phase=True)
SETUP_STARTED: Final = _declare(
    "setup.started", "One of the template's setup commands started in the worktree.",
    Field("command", "integer", "its number (1 for the first)"),
    Field("pid", "integer", "its process id"))
SETUP_COMPLETED: Final = _declare(
    "setup.completed", "Every setup command succeeded.",
    Field("commands", "integer", "how many ran"))
REPORT_WRITTEN: Final = _declare(
    "report.written", "The run's final report was written.",
    Field("path", "string", "the report's JSON file (`report.md` beside it)"),
    Field("status", "string", "`written`, or `stub` when it could not be composed whole"))
REPORT_BLOCKED: Final = _declare(
    "report.blocked", "The final report could not be written for a fault of the machine (a "
    "full disk); the next `devflow sweep` writes it.",
    Field("kind", "string", "the kind of fault"), Field("path", "string", "where"),
    Field("message", "string", "what went wrong"), Field("fix", "string", "what to do"))

#: the events of what ``worktree prune`` did to an ended run
HOUSEKEEPING_NAMES: Final = (WORKTREE_REMOVED.name, BRANCH_DELETED.name)


def housekeeping(found: Sequence[model.Event]) -> model.Housekeeping:
    """When prune removed the run's worktree and deleted its branch, from its events."""
    pruned = next((e.ts for e in found if e.type == WORKTREE_REMOVED.name), None)
    deleted = next((e.ts for e in found if e.type == BRANCH_DELETED.name or (
        e.type == WORKTREE_REMOVED.name and e.payload.get("branch_deleted") is True)), None)
    return model.Housekeeping(pruned, deleted)


#: the event of a run's move to each terminal state
ENDED: Final[Mapping[RunState, EventType]] = MappingProxyType({
    RunState.COMPLETED: RUN_COMPLETED, RunState.FAILED: RUN_FAILED,
    RunState.ABORTED: RUN_ABORTED})


def markdown() -> str:
    """``docs/events.md``: every event type with its payload."""
    lines = [
        "# Events",
        "",
        "<!-- generated from devflow/events.py by `python -m devflow.events > docs/events.md`;"
        " a test fails when they differ -->",
        "",
        "Every run has an append-only, numbered log of events (`devflow events RUN`). Each "
        "event has a type, the key of the phase it is about (for phase events), a payload, "
        "and a time. These are all the types devflow appends, with their payloads; a field "
        "marked *sometimes* is present only in the events the meaning names. Secrets are "
        "redacted from payloads before they are stored.",
        "",
        "| type | phase | what happened |",
        "|---|---|---|",
    ]
    lines += [f"| [`{t.name}`](#{t.name.replace('.', '')}) | {'yes' if t.phase else ''} | "
              f"{t.description} |" for t in declared()]
    for t in declared():
        lines += ["", f"## {t.name}", "", t.description, ""]
        if t.phase:
            lines += ["About one phase (`phase` is its key).", ""]
        if not t.fields:
            lines.append("No payload.")
            continue
        lines += ["| field | type | | meaning |", "|---|---|---|---|"]
        lines += [f"| `{f.name}` | {f.type.replace('|', ' or ')} | "
                  f"{'' if f.always else '*sometimes*'} | {f.meaning} |" for f in t.fields]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover - the docs' generator
    print(markdown(), end="")
