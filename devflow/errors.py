"""DevflowError and the stable vocabulary of error codes.

Every failure a person can meet is a ``DevflowError(code, message, hint)``. The code
is stable (scripts match on it), the message says what happened, the hint says what
to do next. Each code belongs to a kind, and the kind fixes the CLI exit code and
the HTTP status::

    DevflowError
      kind INVALID    exit 2, HTTP 422   bad input: nothing was changed
      kind NOT_FOUND  exit 4, HTTP 404   a named thing does not exist
      kind CONFLICT   exit 3, HTTP 409   the state of things forbids it now
      kind FAILED     exit 1, HTTP 500   the operation ran and failed

A few codes of the HTTP API say more than their kind (``http_status``): a request
that cannot be read at all (``bad_request``) is 400, a missing or dead token
(``unauthenticated``) 401, a refusal of who the caller is (``not_authorized``,
``role_forbidden``, ``host_not_allowed``) 403, a method a route does not take 405.

Errors of the libraries below (git, the database, subprocesses) are translated
into these at the one place that calls them.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any, Final


class Kind(enum.Enum):
    INVALID = (2, 422)
    NOT_FOUND = (4, 404)
    CONFLICT = (3, 409)
    FAILED = (1, 500)

    @property
    def exit_code(self) -> int:
        return self.value[0]

    @property
    def http_status(self) -> int:
        return self.value[1]


class Code(enum.StrEnum):
    # definitions and input
    INVALID_INPUT = "invalid_input"
    YAML_INVALID = "yaml_invalid"
    DEFINITION_INVALID = "definition_invalid"
    #: a persona's ``options`` that its backend's options schema refuses
    BACKEND_OPTION_INVALID = "backend_option_invalid"
    UNKNOWN_ROLE = "unknown_role"
    UNKNOWN_SCHEMA = "unknown_schema"
    UNKNOWN_GATE = "unknown_gate"
    DUPLICATE_PHASE = "duplicate_phase"
    PATH_ESCAPE = "path_escape"
    BAD_DURATION = "bad_duration"
    SCHEMA_INVALID = "schema_invalid"
    DOCUMENT_INVALID = "document_invalid"
    CONFIG_INVALID = "config_invalid"
    NOT_A_GIT_REPO = "not_a_git_repo"
    NO_PERSONA_FOR_ROLE = "no_persona_for_role"
    BACKEND_UNAVAILABLE = "backend_unavailable"
    BINDING_INVALID = "binding_invalid"
    UNKNOWN_SECTION = "unknown_section"
    SANDBOX_UNAVAILABLE = "sandbox_unavailable"
    #: the HTTP API: a request that cannot be read (not JSON, a field of the wrong type)
    BAD_REQUEST = "bad_request"
    #: the HTTP API: a Host header not in the allowlist (DNS rebinding)
    HOST_NOT_ALLOWED = "host_not_allowed"
    #: `devflow serve` on an address other than loopback while no API token is live
    BIND_REFUSED = "bind_refused"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    #: the web page: a POST from another origin, or without this session's CSRF token
    CSRF_FAILED = "csrf_failed"
    #: the web page: a POST that is not a url-encoded form (text/plain included)
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    # not found
    TEMPLATE_NOT_FOUND = "template_not_found"
    PERSONA_NOT_FOUND = "persona_not_found"
    SCHEMA_NOT_FOUND = "schema_not_found"
    RUN_NOT_FOUND = "run_not_found"
    APPROVAL_NOT_FOUND = "approval_not_found"
    FILE_NOT_FOUND = "file_not_found"
    BASE_BRANCH_NOT_FOUND = "base_branch_not_found"
    TRIGGER_NOT_FOUND = "trigger_not_found"
    TOKEN_NOT_FOUND = "token_not_found"  # noqa: S105 - a code, no secret
    ROUTE_NOT_FOUND = "route_not_found"
    # conflicts
    TEMPLATE_VERSION_CONFLICT = "template_version_conflict"
    PERSONA_VERSION_CONFLICT = "persona_version_conflict"
    SCHEMA_VERSION_CONFLICT = "schema_version_conflict"
    ACTIVE_RUN_EXISTS = "active_run_exists"
    RUN_ID_EXISTS = "run_id_exists"
    ILLEGAL_TRANSITION = "illegal_transition"
    LEASE_LOST = "lease_lost"
    RUN_BUSY = "run_busy"
    APPROVAL_CONFLICT = "approval_conflict"
    APPROVAL_STALE = "approval_stale"
    NO_PENDING_APPROVAL = "no_pending_approval"
    AMBIGUOUS_APPROVAL = "ambiguous_approval"
    NOT_AUTHORIZED = "not_authorized"
    DATABASE_NOT_MIGRATED = "database_not_migrated"
    TRIGGER_CONFLICT = "trigger_conflict"
    #: the tick was started (or decided) by another worker or sweep
    TICK_TAKEN = "tick_taken"
    #: the webhook delivery was started (or released) by another
    DELIVERY_TAKEN = "delivery_taken"
    #: the HTTP API: no token, or one unknown, revoked or expired
    UNAUTHENTICATED = "unauthenticated"
    #: the HTTP API: the token's role does not reach the route
    ROLE_FORBIDDEN = "role_forbidden"
    #: an Idempotency-Key used before for another request
    IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"
    # failures
    GIT_FAILED = "git_failed"
    WORKTREE_FAILED = "worktree_failed"
    DATABASE_ERROR = "database_error"
    ARTIFACT_MISSING = "artifact_missing"
    ARTIFACT_INVALID = "artifact_invalid"
    ARTIFACT_TOO_LARGE = "artifact_too_large"
    ARTIFACT_TAMPERED = "artifact_tampered"
    AGENT_FAILED = "agent_failed"
    AGENT_TIMEOUT = "agent_timeout"
    #: an attempt changed the worktree's .git file, HEAD or the run's branch (kind FAILED:
    #: repaired like any failed attempt, after devflow put them back)
    AGENT_TAMPERED = "agent_tampered"
    PHASE_PLAN_INVALID = "phase_plan_invalid"
    REPORT_FAILED = "report_failed"
    BUDGET_EXCEEDED = "budget_exceeded"
    SETUP_FAILED = "setup_failed"
    PROCESS_RESTART_UNRECOVERED = "process_restart_unrecovered"
    APPROVAL_TIMEOUT = "approval_timeout"
    APPROVAL_REJECTED = "approval_rejected"
    #: a fault of the machine, not of the run (a full disk, a git lock a live process
    #: holds): the run is paused with a ``blocked`` reason, never failed (issue 20)
    MACHINE_FAULT = "machine_fault"
    #: ``devflow daemon start`` could not start one (docs/decisions.md, The daemon)
    DAEMON_FAILED = "daemon_failed"
    INTERNAL = "internal_error"


_KIND_OF: Final[Mapping[Code, Kind]] = {
    **{c: Kind.INVALID for c in (
        Code.INVALID_INPUT, Code.YAML_INVALID, Code.DEFINITION_INVALID,
        Code.BACKEND_OPTION_INVALID, Code.UNKNOWN_ROLE,
        Code.UNKNOWN_SCHEMA, Code.UNKNOWN_GATE, Code.DUPLICATE_PHASE, Code.PATH_ESCAPE,
        Code.BAD_DURATION, Code.SCHEMA_INVALID, Code.DOCUMENT_INVALID, Code.CONFIG_INVALID,
        Code.NOT_A_GIT_REPO, Code.BASE_BRANCH_NOT_FOUND, Code.NO_PERSONA_FOR_ROLE,
        Code.BACKEND_UNAVAILABLE, Code.BINDING_INVALID, Code.UNKNOWN_SECTION,
        Code.SANDBOX_UNAVAILABLE, Code.BAD_REQUEST, Code.HOST_NOT_ALLOWED, Code.BIND_REFUSED,
        Code.METHOD_NOT_ALLOWED, Code.CSRF_FAILED, Code.UNSUPPORTED_MEDIA_TYPE,
    )},
    **{c: Kind.NOT_FOUND for c in (
        Code.TEMPLATE_NOT_FOUND, Code.PERSONA_NOT_FOUND, Code.SCHEMA_NOT_FOUND,
        Code.RUN_NOT_FOUND, Code.APPROVAL_NOT_FOUND, Code.FILE_NOT_FOUND,
        Code.BASE_BRANCH_NOT_FOUND, Code.TRIGGER_NOT_FOUND,
        Code.BASE_BRANCH_NOT_FOUND, Code.TOKEN_NOT_FOUND, Code.ROUTE_NOT_FOUND,
    )},
    **{c: Kind.CONFLICT for c in (
        Code.TEMPLATE_VERSION_CONFLICT, Code.PERSONA_VERSION_CONFLICT,
        Code.SCHEMA_VERSION_CONFLICT, Code.ACTIVE_RUN_EXISTS, Code.RUN_ID_EXISTS,
        Code.ILLEGAL_TRANSITION, Code.LEASE_LOST, Code.RUN_BUSY, Code.APPROVAL_CONFLICT,
        Code.APPROVAL_STALE, Code.NO_PENDING_APPROVAL, Code.AMBIGUOUS_APPROVAL,
        Code.NOT_AUTHORIZED, Code.DATABASE_NOT_MIGRATED, Code.TRIGGER_CONFLICT,
        Code.TICK_TAKEN, Code.DELIVERY_TAKEN,
        Code.NOT_AUTHORIZED, Code.DATABASE_NOT_MIGRATED, Code.UNAUTHENTICATED,
        Code.ROLE_FORBIDDEN, Code.IDEMPOTENCY_KEY_REUSED,
    )},
}

#: HTTP statuses that say more than the code's kind (see the module doc)
_HTTP_OF: Final[Mapping[Code, int]] = {
    Code.BAD_REQUEST: 400, Code.UNAUTHENTICATED: 401, Code.NOT_AUTHORIZED: 403,
    Code.ROLE_FORBIDDEN: 403, Code.HOST_NOT_ALLOWED: 403, Code.METHOD_NOT_ALLOWED: 405,
    Code.CSRF_FAILED: 403, Code.UNSUPPORTED_MEDIA_TYPE: 415,
}


def kind_of(code: Code) -> Kind:
    return _KIND_OF.get(code, Kind.FAILED)


def http_status(code: Code) -> int:
    """The HTTP API's status for an error of this code."""
    return _HTTP_OF.get(code, kind_of(code).http_status)


class DevflowError(Exception):
    """A failure with a stable code, a message for a person and a hint for what next."""

    def __init__(self, code: Code, message: str, hint: str = "", **details: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint
        self.details = details

    @property
    def kind(self) -> Kind:
        return kind_of(self.code)

    @property
    def exit_code(self) -> int:
        return self.kind.exit_code

    @property
    def http_status(self) -> int:
        return http_status(self.code)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": str(self.code), "message": self.message, "hint": self.hint}
        if self.details:
            body["details"] = self.details
        return body

    def __str__(self) -> str:
        return f"{self.code}: {self.message}" + (f" ({self.hint})" if self.hint else "")

    def __repr__(self) -> str:
        return f"DevflowError({self.code!s}, {self.message!r}, hint={self.hint!r})"


class ControlFlow(BaseException):
    """An exception that steers control flow rather than reports a failure.

    Like asyncio's ``CancelledError`` it derives from ``BaseException``, so an ``except
    Exception`` meant for failures (a drive's crash handler, a backend's error path)
    cannot swallow it: only the code that must stop on it names it. The subclasses:
    ``LeaseLost``, ``Interrupted``, ``engine.agent.Stop`` and the CLI's ``PipeClosed``.
    """


class LeaseLost(ControlFlow):
    """The driver no longer holds the run's lease; it must stop without writing.

    Not a failure of the run: the driver stops and leaves it to whoever holds it now.
    Where it must be told to a person (a start whose run was taken over), ``error()``
    is the ``lease_lost`` error to report.
    """

    def __init__(self, run_id: str, message: str = "") -> None:
        self.run_id = run_id
        self.message = message or f"this driver no longer holds the lease of run {run_id}"
        super().__init__(self.message)

    def error(self) -> DevflowError:
        return DevflowError(
            Code.LEASE_LOST, self.message,
            hint="another worker or the sweep took the run over; nothing more is written here",
            run_id=self.run_id)


class Interrupted(ControlFlow):
    """A foreground driver was stopped by a signal (Ctrl-C, SIGTERM): the attempt under way
    was recorded as interrupted and the lease released; the run is runnable, not aborted."""

    def __init__(self, run_id: str, signum: int) -> None:
        super().__init__(f"run {run_id} interrupted by signal {signum}")
        self.run_id = run_id
        self.signum = signum
