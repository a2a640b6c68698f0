"""Personas and requirements that run the real agent CLIs against the fake model server.

The CLIs come from ``scripts/install-agent-clis`` (``$DEVFLOW_AGENT_CLIS/bin``);
``real_cli_bin`` fails under ``CI=true`` when they are missing and skips locally.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from devflow.backends import samples
from devflow.schemas import SchemaRegistry
from tests.fakes.dialogue import marker
from tests.fakes.model_server import FakeModel

IN_CI = os.environ.get("CI", "").lower() == "true"
PROGRAMS = {"claude-code": "claude", "codex": "codex", "aider": "aider"}
MODELS = {"claude-code": "claude-sonnet-4-5", "codex": "gpt-5-codex", "aider": "openai/gpt-4.1"}
#: the fake's key: long enough to count as a secret, so it must be redacted everywhere
API_KEY = "sk-devflow-fake-key-0123456789"
CODEX_PRICES = {"input": 1.25, "output": 10.0, "cached_input": 0.125}
AIDER_PRICES = {"input": 2.0, "output": 8.0}
QUICK_ARTIFACTS = {".devflow/implementation.json": "dev/implementation@1",
                   ".devflow/review.json": "dev/review@1"}


def clis_dir() -> Path:
    root = os.environ.get("DEVFLOW_AGENT_CLIS") or str(
        Path.home() / ".cache" / "devflow" / "agent-clis")
    return Path(root) / "bin"


def real_cli_bin(backend: str) -> Path:
    """The installed CLI for ``backend``: a failure in CI when missing, else a skip."""
    path = clis_dir() / PROGRAMS[backend]
    if not (path.exists() and os.access(path, os.X_OK)):
        message = (f"{PROGRAMS[backend]} is not installed in {path.parent}: run "
                   f"scripts/install-agent-clis (scripts/test does)")
        if IN_CI:
            pytest.fail(f"{message} (CI never skips the real-CLI tests)")
        pytest.skip(message)
    return path


def requirements(schemas: SchemaRegistry, artifacts: dict[str, str] | None = None,
                 extra: str = "") -> str:
    """Requirements that carry each artifact's content for the fake model, in markers."""
    blocks = [marker(path, json.dumps(samples.valid(schema, schemas), indent=2))
              for path, schema in (artifacts or QUICK_ARTIFACTS).items()]
    return ("Add a farewell function next to greet.\n\n" + extra
            + "(For the fake model server of devflow's tests:)\n\n" + "\n\n".join(blocks) + "\n")


def env_set(backend: str, fake: FakeModel, **more: str) -> dict[str, str]:
    """What the agent needs to reach the fake and nothing else."""
    env = fake.proxy_env()
    if backend == "claude-code":
        env.update(ANTHROPIC_BASE_URL=fake.url, ANTHROPIC_API_KEY=API_KEY,
                   CLAUDE_CODE_MAX_RETRIES="0")
    elif backend == "codex":
        env["DEVFLOW_FAKE_OPENAI_KEY"] = API_KEY
    else:
        env["OPENAI_API_KEY"] = API_KEY
    env.update(more)
    return env


def options(backend: str, fake: FakeModel, binary: Path, **more: Any) -> dict[str, Any]:
    found: dict[str, Any] = {"bin": str(binary)}
    if backend == "claude-code":
        found["permission_mode"] = "acceptEdits"
    elif backend == "codex":
        found.update(base_url=f"{fake.url}/v1", env_key="DEVFLOW_FAKE_OPENAI_KEY",
                     request_max_retries=0, stream_max_retries=0, prices=CODEX_PRICES)
    else:
        found.update(api_base=f"{fake.url}/v1", edit_format="whole", prices=AIDER_PRICES)
    found.update(more)
    return {k: v for k, v in found.items() if v is not None}  # bin=None: found on PATH


def write_persona(directory: Path, name: str, role: str, backend: str, fake: FakeModel,
                  binary: Path, *, env: dict[str, str] | None = None,
                  allow: list[str] | None = None, **more: Any) -> str:
    """A persona file for ``backend`` talking to ``fake``; returns ``name@1``."""
    directory.mkdir(parents=True, exist_ok=True)
    body = {"name": name, "version": 1, "roles": [role], "backend": backend,
            "model": MODELS[backend], "prompt": f"You are the {role} (a devflow test).",
            "options": options(backend, fake, binary, **more),
            "env": {"set": env_set(backend, fake, **(env or {})), "allow": allow or []}}
    (directory / f"{name}.yaml").write_text(yaml.safe_dump(body, sort_keys=False),
                                             encoding="utf-8")
    return f"{name}@1"


def quick_personas(directory: Path, backend: str, fake: FakeModel, binary: Path,
                   **more: Any) -> dict[str, str]:
    """Bindings of quick@1's two roles to personas of ``backend``."""
    prefix = f"fake-{backend}"
    return {role: write_persona(directory, f"{prefix}-{role}", role, backend, fake, binary,
                                **more)
            for role in ("implementer", "reviewer")}
