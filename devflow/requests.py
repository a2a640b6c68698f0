"""What a caller asks of the app: the inputs of the verbs that start runs and work them.

The interfaces (the CLI, an HTTP layer) fill these in and hand them to ``App``; the
engine reads them. They live outside the engine so that an interface never imports it
(the import contracts in pyproject.toml, docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path


@dataclass(frozen=True, slots=True)
class TickClaim:
    """The tick of a schedule trigger a run being created starts: it must still be
    ``pending`` when the run is inserted."""

    trigger: str
    scheduled_at: datetime


@dataclass(frozen=True, slots=True)
class DeliveryClaim:
    """The webhook delivery a run being created starts: it must still be ``pending``
    when the run is inserted."""

    trigger: str
    source: str
    delivery_id: str


@dataclass(frozen=True)
class StartRequest:
    """What a run is asked to do. ``requirements`` may be the bytes of a file as read
    (``requirements_source`` names it): they are decoded and checked by the engine, not
    by the caller, so every way of starting a run refuses the same input the same way.
    ``base`` None is the repository's current branch."""

    repo: Path
    base: str | None
    template: str
    requirements: str | bytes
    actor: str
    objective: str | None = None
    binds: Mapping[str, str] = field(default_factory=dict)
    run_id: str | None = None
    scenarios: Mapping[str, str] = field(default_factory=dict)
    max_cost: float | None = None
    requirements_source: str | None = None
    #: the trigger's tick that starts this run (claimed with the run's insert)
    tick: TickClaim | None = None
    #: the webhook delivery that starts this run (claimed with the run's insert)
    delivery: DeliveryClaim | None = None


@dataclass(frozen=True)
class WorkerOptions:
    """How a worker works: its name, how many runs it drives at once, how often it looks
    for more, whether it stops once nothing is left, how long a stopping worker waits."""

    name: str = "worker"
    concurrency: int = 4
    poll: float = 1.0
    once: bool = False
    grace: float = 30.0
