"""Phase plans: a valid ``dev/phase-plan@1`` artifact adds phases after the template's.

A plan is checked twice: when its artifact is validated (keys unique and free, roles
bound, schemas known, paths contained — so a bad plan is repaired like any invalid
artifact), and when it is applied, once no pending phase is left (a collision found
then fails the run with a clear reason). On a gate with ``sections: /phases``, only
the phases the approver did not reject are added.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from devflow import artifacts, definitions, events, model
from devflow.definitions import PHASE_PLAN_SCHEMA, ArtifactSpec, PhaseDef
from devflow.errors import Code, DevflowError
from devflow.schemas import Issue, SchemaRegistry, pointer
from devflow.states import PhaseState
from devflow.store import RunTx

DEFAULT_SCHEMA = "dev/implementation@1"


def to_phases(plan: Mapping[str, Any]) -> list[PhaseDef]:
    return [PhaseDef(
        key=item["key"], title=item.get("title") or item["key"], roles=(item["role"],),
        instructions=item.get("instructions", ""),
        artifact=(ArtifactSpec(item["artifact"]["path"], item["artifact"]["schema"])
                  if item.get("artifact") else
                  ArtifactSpec(f".devflow/{item['key']}.json", DEFAULT_SCHEMA)),
    ) for item in plan.get("phases", [])]


def problems(plan: Mapping[str, Any], taken: Iterable[str], roles: Sequence[str],
             schemas: SchemaRegistry) -> list[Issue]:
    """What stops these planned phases from being added to a run."""
    found, seen = [], set(taken)
    bound = {r: "" for r in roles}
    for i, phase in enumerate(to_phases(plan)):
        if phase.key in seen:
            found.append(Issue(pointer(("phases", i, "key")),
                               f"phase key {phase.key!r} is already taken"))
        seen.add(phase.key)
        found += [Issue(pointer(p.path), p.message)
                  for p in definitions.check_phase(phase, ("phases", i), bound, {}, schemas)]
    return found


def pending_plans(phases: Sequence[model.Phase]) -> list[model.Phase]:
    return [p for p in phases if p.state is PhaseState.COMPLETED
            and p.definition.artifact and p.definition.artifact.schema == PHASE_PLAN_SCHEMA
            and not p.control.plan_applied]


def apply_next(tx: RunTx, schemas: SchemaRegistry) -> list[str]:
    """Add the phases of the first plan not applied yet; the keys added."""
    plans = pending_plans(tx.phases())
    if not plans:
        return []
    source = plans[0]
    assert source.artifact_stored and source.artifact_sha
    plan = artifacts.load_stored(Path(source.artifact_stored), source.artifact_sha)
    rejected = source.control.rejected
    kept = {**plan, "phases": [p for p in plan.get("phases", []) if p.get("key") not in rejected]}
    roles = list(dict(tx.run.template_def.get("roles", {})))
    if found := problems(kept, [p.key for p in tx.phases()], roles, schemas):
        raise DevflowError(Code.PHASE_PLAN_INVALID,
                           f"the phase plan of {source.key} cannot be applied: "
                           + "; ".join(str(i) for i in found[:5]),
                           hint="the run fails; start a new run once the plan is fixed")
    added = tx.add_phases(to_phases(kept), origin=f"plan:{source.key}")
    tx.set_phase(source.key, control=replace(source.control, plan_applied=True))
    tx.event(events.PHASE_PLANNED.new(source.key, {
        "phases": [p.key for p in added], "dropped": sorted(rejected)}))
    return [p.key for p in added]
