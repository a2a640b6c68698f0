"""Settings: built-in defaults, then ``$DEVFLOW_HOME/config.yaml``, then ``DEVFLOW_*`` variables,
then command-line options — each overriding the one before.

| setting | variable | default |
|---|---|---|
| home | DEVFLOW_HOME | ~/.devflow |
| database_url | DEVFLOW_DATABASE_URL | sqlite:///$DEVFLOW_HOME/devflow.db |
| workspace | DEVFLOW_WORKSPACE | $DEVFLOW_HOME/workspace |
| templates_dirs, personas_dirs, schemas_dirs | DEVFLOW_TEMPLATES_DIR, … (path lists) | none |
| triggers_dirs | DEVFLOW_TRIGGERS_DIR (a path list) | none; $DEVFLOW_HOME/triggers is read too |
| max_active_per_branch | DEVFLOW_MAX_ACTIVE_PER_BRANCH | 1 |
| max_concurrent_runs | DEVFLOW_MAX_CONCURRENT_RUNS | 50 |
| artifact_max_bytes | DEVFLOW_ARTIFACT_MAX_BYTES | 5 MiB |
| agent_timeout | DEVFLOW_AGENT_TIMEOUT | 30m (a phase's own timeout wins) |
| lease_seconds | DEVFLOW_LEASE_SECONDS | 30 |
| max_recoveries | DEVFLOW_MAX_RECOVERIES | 3 |
| log_format | DEVFLOW_LOG_FORMAT | auto (console on a terminal, JSON otherwise) |
| actor | DEVFLOW_ACTOR | the OS account running devflow (from its uid) — a name decisions |
| | | are attributed to; another's name is a label, or needs act_for_others (access.py) |
| groups | (config file only) | {} — approver groups: name -> members; ``operators`` may |
| | | pause, resume and abort runs waiting at gates that name approvers |
| act_for_others | (config file only) | () — OS accounts that may act under another's name |
| | | (``--as``, DEVFLOW_ACTOR) on gates that name approvers |
| prices | (config file only) | {} — USD per million tokens by model name (``input``, |
| | | ``output``, ``cached_input``), for CLIs that print no cost (docs/backends.md) |
| port_range, port_block | (config file only) | 20000-39999, 10 — TCP port blocks for runs |
| allow_unsandboxed | DEVFLOW_ALLOW_UNSANDBOXED | false — run agents without a sandbox where |
| | | bubblewrap is missing, instead of refusing (``sandbox_unavailable``) |
| bwrap | DEVFLOW_BWRAP | bwrap — the bubblewrap program (a name on PATH or a path) |
| webhooks | (config file only) | () — endpoints told of approvals and ended runs by |
| | | ``devflow serve`` (devflow.webhooks: url, secret or secrets, events) |
| public_url | DEVFLOW_PUBLIC_URL | http://127.0.0.1:8765 — the server as people reach it |
| | | (the deep links of webhook messages) |
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from devflow import access, durations, webhooks, yamlsource
from devflow.errors import Code, DevflowError

_INTS: Final = ("max_active_per_branch", "max_concurrent_runs", "artifact_max_bytes",
                "max_recoveries", "port_block")
_DURATIONS: Final = ("agent_timeout", "lease_seconds")
_DIRS: Final = ("templates_dirs", "personas_dirs", "schemas_dirs", "triggers_dirs")
_BOOLS: Final = ("allow_unsandboxed",)
_TRUE: Final = ("1", "true", "yes", "on")
_FALSE: Final = ("0", "false", "no", "off", "")


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str
    workspace: Path
    templates_dirs: tuple[Path, ...] = ()
    personas_dirs: tuple[Path, ...] = ()
    schemas_dirs: tuple[Path, ...] = ()
    triggers_dirs: tuple[Path, ...] = ()
    max_active_per_branch: int = 1
    max_concurrent_runs: int = 50
    artifact_max_bytes: int = 5 * 1024 * 1024
    agent_timeout: float = 1800.0
    lease_seconds: float = 30.0
    max_recoveries: int = 3
    log_format: str = "auto"
    actor: str = ""
    #: blocks of TCP ports handed to runs as DEVFLOW_PORT_BASE: "FIRST-LAST", block size
    port_range: str = "20000-39999"
    port_block: int = 10
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    act_for_others: tuple[str, ...] = ()
    prices: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    #: where bubblewrap is missing, run agents unsandboxed (loudly) instead of refusing
    allow_unsandboxed: bool = False
    bwrap: str = "bwrap"
    webhooks: tuple[webhooks.Endpoint, ...] = ()
    public_url: str = "http://127.0.0.1:8765"

    @property
    def ports(self) -> tuple[int, int]:
        first, _, last = self.port_range.partition("-")
        return int(first), int(last)

    @property
    def policy(self) -> access.Policy:
        return access.Policy(groups=self.groups, act_for_others=self.act_for_others)

    @property
    def heartbeat_seconds(self) -> float:
        return max(self.lease_seconds / 3, 0.2)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if env is None else env
        home = Path(overrides.pop("home", None) or env.get("DEVFLOW_HOME")
                    or Path.home() / ".devflow").expanduser().resolve()
        values: dict[str, Any] = _config_file(home / "config.yaml")
        for name in (*_INTS, *_DURATIONS, *_BOOLS, "log_format", "actor", "database_url",
                     "workspace", "bwrap", "public_url"):
            variable = f"DEVFLOW_{name.upper()}"
            if env.get(variable):
                values[name] = env[variable]
        for name in _DIRS:
            variable = f"DEVFLOW_{name[:-1].upper()}"
            if env.get(variable):
                values[name] = [p for p in env[variable].split(os.pathsep) if p]
        values.update({k: v for k, v in overrides.items() if v not in (None, (), [])})
        return cls._build(home, values)

    @classmethod
    def _build(cls, home: Path, values: dict[str, Any]) -> Settings:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise DevflowError(Code.CONFIG_INVALID,
                               f"unknown settings: {', '.join(sorted(unknown))}",
                               hint=f"known settings: {', '.join(sorted(known - {'home'}))}")
        try:
            for name in _INTS:
                if name in values:
                    values[name] = int(values[name])
                    if values[name] < 1:
                        raise ValueError(f"{name} must be at least 1")
        except ValueError as exc:
            raise DevflowError(Code.CONFIG_INVALID, f"invalid setting: {exc}",
                               hint="these settings are positive whole numbers") from exc
        if "port_range" in values and not re.fullmatch(r"\d{2,5}-\d{2,5}",
                                                       str(values["port_range"])):
            raise DevflowError(Code.CONFIG_INVALID, f"port_range {values['port_range']!r}",
                               hint="write FIRST-LAST, e.g. 20000-39999")
        for name in _DURATIONS:
            if name in values:
                values[name] = durations.parse_duration(values[name], field=name)
        _sandbox_settings(values)
        for name in _DIRS:
            if name in values:
                dirs = values[name]
                dirs = [dirs] if isinstance(dirs, str) else dirs
                values[name] = tuple(Path(p).expanduser().resolve() for p in dirs)
        _access(values)
        if "webhooks" in values:
            values["webhooks"] = webhooks.endpoints(values["webhooks"])
        if values.get("log_format", "auto") not in ("auto", "console", "json"):
            raise DevflowError(Code.CONFIG_INVALID, f"log_format {values['log_format']!r}",
                               hint="auto, console or json")
        workspace = Path(values.pop("workspace", None) or home / "workspace").expanduser()
        database_url = values.pop("database_url", None) or f"sqlite:///{home / 'devflow.db'}"
        values.setdefault("actor", access.os_account().name)
        return cls(home=home, database_url=database_url, workspace=workspace.resolve(), **values)


def _access(values: dict[str, Any]) -> None:
    """Groups and act_for_others as written in config.yaml: a name or a list of names."""
    if "groups" in values:
        values["groups"] = {str(k): _names(v) for k, v in (values["groups"] or {}).items()}
    if "act_for_others" in values:
        values["act_for_others"] = _names(values["act_for_others"])


def _names(value: Any) -> tuple[str, ...]:
    """A name or a list of names, as written in config.yaml."""
    if isinstance(value, str):
        return (value,)
    return tuple(map(str, value or ()))


def _config_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = yamlsource.load_yaml(path).data or {}
    except DevflowError as exc:  # aliases, nesting and non-JSON values refused as for definitions
        raise DevflowError(Code.CONFIG_INVALID, exc.message,
                           hint="fix or remove the configuration file", file=str(path),
                           line=exc.details.get("line")) from exc
    if not isinstance(data, dict):
        raise DevflowError(Code.CONFIG_INVALID, f"{path}: must be a mapping of settings",
                           hint="e.g. `max_concurrent_runs: 20`")
    return data


def _sandbox_settings(values: dict[str, Any]) -> None:
    for name in _BOOLS:
        if name in values:
            values[name] = _bool(name, values[name])
    if not str(values.get("bwrap", "bwrap")).strip():
        raise DevflowError(Code.CONFIG_INVALID, "bwrap must name a program",
                           hint="e.g. `bwrap: /usr/bin/bwrap`, or leave it out")


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise DevflowError(Code.CONFIG_INVALID, f"{name} {value!r} is not true or false",
                       hint=f"write {name}: true (or false)")

