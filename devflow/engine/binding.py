"""Binding a template's roles to personas, once, when a run starts.

``--bind ROLE=PERSONA[@VERSION]`` names the persona; otherwise the first persona by
name (its latest version) that fills the role and whose backend is available here.
An explicit binding to an unavailable backend is ``backend_unavailable``; no
candidate at all is ``no_persona_for_role``, naming what was passed over and why.

Then each bound persona's sandbox (``sandboxes``): where bubblewrap cannot run, a persona
that does not say ``sandbox: none`` is ``sandbox_unavailable`` unless the configuration
allows unsandboxed agents.
A persona is never passed over for its sandbox: that would be a silent fallback to one
that runs unsandboxed. ``run start`` prints ``unsandboxed_warning`` for such a role.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from devflow import backends, logs, model
from devflow.backends import sandbox
from devflow.catalog import Catalog
from devflow.definitions import Persona, Template
from devflow.errors import Code, DevflowError
from devflow.settings import Settings

log = logs.get_logger("devflow.engine")


def bind(template: Template, catalog: Catalog,
         explicit: Mapping[str, str]) -> tuple[list[model.Binding], list[Persona]]:
    """The bindings for every role of ``template``, and the personas they use."""
    unknown = sorted(set(explicit) - set(template.roles))
    if unknown:
        raise DevflowError(Code.BINDING_INVALID,
                           f"--bind names roles that {template.ref} does not have: "
                           f"{', '.join(unknown)}",
                           hint=f"its roles: {', '.join(template.roles)}")
    bindings, personas = [], []
    for role in template.roles:
        persona, version = (_explicit(role, explicit[role], catalog) if role in explicit
                            else _first_available(role, catalog))
        personas.append(persona)
        bindings.append(model.Binding(
            role=role, persona_name=persona.name, persona_version=persona.version,
            persona_hash=persona.hash, backend=persona.backend, backend_version=version,
            persona_def=dict(persona.definition)))
    return bindings, personas


def _explicit(role: str, ref: str, catalog: Catalog) -> tuple[Persona, str | None]:
    persona = catalog.persona(ref)
    if role not in persona.roles:
        raise DevflowError(Code.BINDING_INVALID,
                           f"persona {persona.ref} cannot fill role {role!r} "
                           f"(it fills: {', '.join(persona.roles)})",
                           hint="bind the role to a persona that lists it under `roles`")
    availability = backends.get(persona.backend).availability(persona)
    if not availability.available:
        raise DevflowError(Code.BACKEND_UNAVAILABLE,
                           f"persona {persona.ref} needs backend {persona.backend}, which is not "
                           f"available here: {availability.reason}",
                           hint="install it, or bind the role to another persona "
                                "(`devflow backends list` shows what is available)",
                           persona=persona.ref, backend=persona.backend)
    return persona, availability.version


def _first_available(role: str, catalog: Catalog) -> tuple[Persona, str | None]:
    latest: dict[str, Persona] = {}
    for persona in catalog.personas():  # sorted by name, then version
        if role in persona.roles:
            latest[persona.name] = persona
    passed_over = []
    for name in sorted(latest):
        persona = latest[name]
        availability = backends.get(persona.backend).availability(persona)
        if availability.available:
            return persona, availability.version
        passed_over.append(f"{persona.ref} ({availability.reason})")
    raise DevflowError(
        Code.NO_PERSONA_FOR_ROLE,
        f"no available persona can fill role {role!r}"
        + (f"; passed over: {'; '.join(passed_over)}" if passed_over
           else "; no persona lists that role"),
        hint=f"add a persona for {role!r} (--personas-dir) or install a backend it needs",
        role=role, passed_over=passed_over)


def sandboxes(bindings: Sequence[model.Binding], personas: Sequence[Persona],
              settings: Settings) -> dict[str, sandbox.Plan]:
    """role -> how its agent will run here; ``sandbox_unavailable`` when one cannot."""
    found = {}
    for bound, persona in zip(bindings, personas, strict=True):
        plan = found[bound.role] = sandbox.plan(persona, settings)
        if not plan.sandboxed:
            log.info("agent_unsandboxed", role=bound.role, persona=persona.ref,
                     why=plan.label)
    return found


def unsandboxed_warning(role: str, persona: str, plan: sandbox.Plan) -> str:
    return (f"role {role}: the agent of {persona} will run UNSANDBOXED, with all your "
            f"account can read and write ({plan.label.removeprefix('none: ')})")
