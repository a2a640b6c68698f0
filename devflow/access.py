"""Who acts, and what they may do: principals, the configured roles, and the one check.

A *principal* is who is authenticated, and how: on the CLI the OS account running it
(read from the process's uid, never from the environment), ``system`` for devflow's
own escalations and timeouts, and on the HTTP API (``devflow serve``) its token. The
*actor* is whom an action is attributed to: the principal's own name, or a name given
with ``--as`` or ``DEVFLOW_ACTOR`` (a label).

``authorize`` is the one check that every decision, and every pause, resume and abort,
goes through, whatever the interface (the CLI's OS accounts, the HTTP API's token
actors), under the run's lock where it counts:

- Where no gate in question names approvers, anyone may act, and a name given is a
  label, recorded as given by the principal.
- On a gate that names approvers, acting under another's name needs the principal to
  be listed in ``act_for_others`` (naming yourself is not acting for another); then the
  actor (the principal, or the one acted for) must be one of the gate's approvers or a
  member of a group they name; to pause, resume or abort the run, a member of the
  ``operators`` group also may.

A refusal is ``not_authorized``: its message names who was refused, its hint who may.
"""

from __future__ import annotations

import functools
import os
import pwd
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from devflow.errors import Code, DevflowError

#: how a principal was authenticated
OS_ACCOUNT: Final = "os_account"
SYSTEM: Final = "system"
TOKEN: Final = "token"  # noqa: S105 - a method's name (the HTTP API's), no secret

#: how an action's actor relates to its principal
SELF: Final = "self"  # the actor is the principal
LABEL: Final = "label"  # a name the principal gave, where nothing is restricted; unchecked
DELEGATED: Final = "delegated"  # a principal listed in act_for_others acting for the actor

#: the group whose members may pause, resume and abort runs waiting at restricted gates
OPERATORS: Final = "operators"


@dataclass(frozen=True)
class Principal:
    """Who is authenticated: ``method`` says how, ``name`` who, ``id`` the uid or token id."""

    method: str
    name: str
    id: str | None = None

    def describe(self) -> str:
        if self.method == OS_ACCOUNT:
            return f"OS account {self.name}"
        if self.method == TOKEN:
            return f"API token {self.id} ({self.name})"
        return self.name

    def record(self, attribution: str) -> dict[str, Any]:
        """How an action was authenticated, as decisions and events keep it."""
        return {"method": self.method, "principal": self.name, "id": self.id,
                "attribution": attribution}


def system(actor: str) -> Principal:
    """devflow itself, deciding as ``system:escalation`` or ``system:timeout``."""
    return Principal(SYSTEM, actor)


def os_account() -> Principal:
    """The OS account this process runs as, from its real uid."""
    return _account(os.getuid())


@functools.cache
def _account(uid: int) -> Principal:
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:  # a uid without a passwd entry (containers)
        name = f"uid:{uid}"
    return Principal(OS_ACCOUNT, name, str(uid))


@dataclass(frozen=True)
class Policy:
    """The roles the configuration grants: groups (``operators`` among them) and delegates."""

    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    act_for_others: tuple[str, ...] = ()

    def approves(self, name: str, approvers: Iterable[str]) -> bool:
        return any(name == a or name in self.groups.get(a, ()) for a in approvers)

    def operator(self, name: str) -> bool:
        return name in self.groups.get(OPERATORS, ())

    def who(self, approvers: Iterable[str]) -> str:
        """The approvers, groups with their members: ``alice, leads (bob, carol)``."""
        return ", ".join(f"{a} ({', '.join(self.groups[a]) or 'no members'})"
                         if a in self.groups else a for a in approvers)


#: a policy that grants nothing beyond the approvers a gate names
NO_GRANTS: Final = Policy()


@dataclass(frozen=True)
class Gate:
    """A gate an action is about: its name and the approvers it names (none: anyone)."""

    name: str
    approvers: tuple[str, ...]


def authorize(policy: Policy, principal: Principal, actor: str, what: str,
              gates: Iterable[Gate], *, operators: bool = False) -> str:
    """May ``principal``, acting as ``actor``, do ``what`` (e.g. "approve gate g of run r")?

    ``gates`` are the gates the action touches: the one decided, or those a run waits
    at; ``operators`` lets the operators group act too (pause, resume, abort). Returns
    the attribution to record (SELF, LABEL or DELEGATED); raises ``not_authorized``.
    """
    restricted = [g for g in gates if g.approvers]
    if actor == principal.name or principal.method == SYSTEM:
        attribution = SELF
    elif not restricted:
        return LABEL
    else:
        attribution = DELEGATED
    if not restricted or principal.method == SYSTEM:
        return attribution
    who = _who_may(policy, restricted, operators)
    if attribution == DELEGATED and principal.name not in policy.act_for_others:
        raise DevflowError(
            Code.NOT_AUTHORIZED,
            f"{principal.describe()} may not {what} as {actor}: gate "
            f"{', '.join(g.name for g in restricted)} names its approvers, and acting for "
            f"another needs an account listed in act_for_others",
            hint=f"{who}; act as yourself (without --as or DEVFLOW_ACTOR)"
                 + (f"; acting for others: {', '.join(policy.act_for_others)}"
                    if policy.act_for_others else ""))
    if operators and policy.operator(actor):
        return attribution
    for gate in restricted:
        if not policy.approves(actor, gate.approvers):
            refused = principal.describe() + (f" (as {actor})" if actor != principal.name
                                              else "")
            if not operators and policy.operator(actor):
                who += ("; operators do not decide gates: they may pause, resume or abort "
                        "the run (devflow run abort)")
            raise DevflowError(Code.NOT_AUTHORIZED,
                               f"{refused} may not {what}: gate {gate.name} is restricted "
                               f"to {policy.who(gate.approvers)}", hint=who)
    return attribution


def _who_may(policy: Policy, restricted: list[Gate], operators: bool) -> str:
    approvers = "; ".join(f"gate {g.name}: {policy.who(g.approvers)}" for g in restricted)
    text = f"who may: the approvers of {approvers}"
    if operators:
        members = policy.groups.get(OPERATORS)
        text += (f"; the operators group: {', '.join(members)}" if members
                 else "; the operators group (none configured: groups: {operators: [...]} "
                      "in config.yaml)")
    return text


def describe(record: Mapping[str, Any] | None, actor: str) -> str:
    """How an action was authenticated, for people: ``OS account root, label``."""
    if not record:
        return "not recorded"
    principal = Principal(str(record.get("method")), str(record.get("principal")),
                          record.get("id"))
    text = principal.describe()
    attribution = record.get("attribution")
    if attribution == LABEL:
        return f"label given by {text}"
    if attribution == DELEGATED:
        return f"{text}, acting for {actor}"
    return text
