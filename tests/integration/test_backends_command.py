"""The command backend with a stub agent, on SQLite and PostgreSQL: placeholders as whole
arguments whatever their text, stdin, the agent's environment (nothing leaks in, a secret
given to it leaks nowhere out), availability and binding, and what each preset builds."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devflow import backends
from devflow.app import App
from devflow.backends import claude_code, codex
from devflow.backends.base import BASE_ENV, Task
from devflow.catalog import Catalog, Dirs
from devflow.definitions import Persona
from devflow.engine.start import StartRequest
from devflow.errors import Code, DevflowError
from devflow.settings import Settings
from tests.fakes.stubs import STUB, live_stubs, stub_artifacts, stub_calls, stub_persona
from tests.integration.helpers import requirements_file, write_template

#: text a shell would act on, a parser would split, or an option parser would take
HOSTILE = "-rf ; $(touch PWNED) `touch PWNED` 'q\" && echo x | tee PWNED"
IMPLEMENTATION = ".devflow/implementation.json"


@pytest.fixture
def stub_dir(tmp_path: Path) -> Path:
    return tmp_path / "stub"


@pytest.fixture
def personas_dir(tmp_path: Path) -> Path:
    path = tmp_path / "personas"
    path.mkdir()
    return path


def _app(settings: Settings, personas_dir: Path, templates: Path | None = None,
         **changes: Any) -> App:
    return App(settings.replace(personas_dirs=(personas_dir,),
                                templates_dirs=(templates,) if templates else (), **changes))


def _quick(repo: Path, binds: dict[str, str], **more: Any) -> StartRequest:
    return StartRequest(repo=repo, base="main", template="quick@1", actor="tester",
                        requirements="Add a farewell.", binds=binds, **more)


# -- options --------------------------------------------------------------------------------
@pytest.mark.parametrize(("backend", "options", "at", "problem"), [
    ("command", {}, (), "'argv' is a required property"),
    ("command", {"argv": "my-agent --prompt {prompt_file}"}, ("argv",), "is not of type 'array'"),
    ("command", {"argv": []}, ("argv",), "should be non-empty"),
    ("command", {"argv": [""]}, ("argv", 0), "should be non-empty"),
    ("command", {"argv": ["a", "--prompt={prompt_file}"]}, ("argv", 1),
     "must be a whole argument"),
    ("command", {"argv": ["a", "{prompt}"]}, ("argv", 1), "unknown placeholder '{prompt}'"),
    ("command", {"argv": ["a"], "stdin": "file"}, ("stdin",), "'file' is not one of"),
    ("command", {"argv": ["a"], "timeout": "soon"}, ("timeout",), "'soon' is not a duration"),
    ("command", {"argv": ["a"], "timeout": float("nan")}, ("timeout",), "timeout"),
    ("aider", {"timeout": 0}, ("timeout",), "positive, finite"),
    ("command", {"argv": ["a"], "shell": True}, ("shell",),
     "unknown option 'shell' (known: argv, stdin, timeout, version_argv)"),
    ("command", {"argv": ["a"], "version-argv": ["a"]}, ("version-argv",),
     "did you mean 'version_argv'?"),
    ("claude-code", {"permission_mode": "yolo"}, ("permission_mode",), "'yolo' is not one of"),
    ("claude-code", {"allowed_tools": "Write"}, ("allowed_tools",), "is not of type 'array'"),
    ("claude-code", {"args": ["--x={model}"]}, ("args", 0), "must be a whole argument"),
    ("claude-code", {"bin": 7}, ("bin",), "is not of type 'string'"),
    ("codex", {"sandbox": "none"}, ("sandbox",), "'none' is not one of"),
    ("codex", {"env_key": "not a name"}, ("env_key",), "write the name of an environment"),
    ("codex", {"provider": "my provider"}, ("provider",), "letters, digits"),
    ("codex", {"prices": {"input": -1}}, ("prices", "input"), "less than the minimum of 0"),
    ("codex", {"prices": {"inptu": 1}}, ("prices", "inptu"),
     "unknown option 'inptu' in prices: did you mean 'input'?"),
    ("codex", {"request_max_retries": True}, ("request_max_retries",), "not of type 'integer'"),
    ("aider", {"edit_format": "poem"}, ("edit_format",), "'poem' is not one of"),
    ("aider", {"map_tokens": -5}, ("map_tokens",), "less than the minimum of 0"),
    ("aider", {"model_metadata": []}, ("model_metadata",), "is not of type 'object'"),
    ("scripted", {"scenario": "bogus"}, ("scenario",), "'bogus': write a scenario: ok,"),
    ("scripted", {"scenarios": {"spec": "nope"}}, ("scenarios", "spec"), "write a scenario"),
    ("scripted", {"scenarios": ["ok"]}, ("scenarios",), "is not of type 'object'"),
])
def test_options_are_checked_against_the_backends_schema(
        backend: str, options: dict[str, Any], at: tuple[str | int, ...], problem: str) -> None:
    """Each problem is at its place in the persona (so its file names the line), with the
    code of a refused option."""
    problems = backends.check_options(backend, options)
    assert [(p.code, p.path) for p in problems] == [
        (Code.BACKEND_OPTION_INVALID, ("options", *at))], problems
    assert problem in problems[0].message


def test_the_problems_of_several_options_are_all_named() -> None:
    problems = backends.check_options("claude-code", {
        "permision_mode": "plan", "allowed_tools": "Read", "args": ["{prompt}"]})
    assert [p.path for p in problems] == [("options", "permision_mode"),
                                         ("options", "allowed_tools"), ("options", "args", 0)]


@pytest.mark.parametrize(("backend", "options"), [
    ("command", {"argv": ["agent", "{prompt_file}", "--out", "{artifact_path}"],
                 "stdin": "prompt", "timeout": "90s", "version_argv": ["agent", "-V"]}),
    ("claude-code", {"permission_mode": "acceptEdits", "allowed_tools": ["Write", "Bash(ls:*)"],
                     "args": ["--max-turns", "30"], "timeout": "20m", "bin": "/opt/claude"}),
    ("codex", {"base_url": "http://127.0.0.1:1/v1", "env_key": "MY_KEY", "sandbox": "read-only",
               "prices": {"input": 1.25, "output": 10}, "request_max_retries": 2}),
    ("aider", {"edit_format": "diff", "api_base": "http://127.0.0.1:1/v1", "map_tokens": 1024,
               "prices": {"input": 2, "output": 8}, "read": ["README.md"]}),
])
def test_good_options_pass(backend: str, options: dict[str, Any]) -> None:
    assert backends.check_options(backend, options) == []


def test_shipped_personas_are_valid(app: App) -> None:
    shipped = [p for p in app.catalog.personas() if p.backend != "scripted"]
    assert {p.backend for p in shipped} == {"claude-code", "codex", "aider"}
    for persona in shipped:
        assert backends.check_options(persona.backend, persona.options) == [], persona.ref


# -- argv ---------------------------------------------------------------------------------
def test_hostile_placeholder_values_arrive_as_single_arguments(
        settings: Settings, repo: Path, tmp_path: Path, stub_dir: Path,
        personas_dir: Path) -> None:
    artifact = f".devflow/{HOSTILE}.json"
    templates = tmp_path / "templates"
    write_template(templates, "hostile", f"""
        name: hostile
        version: 1
        description: An artifact path a shell would act on.
        roles:
          implementer: {{description: Makes the change.}}
        phases:
          - key: implement
            title: Implement
            roles: [implementer]
            artifact: {{path: {json.dumps(artifact)}, schema: dev/implementation@1}}
            max_repairs: 0
            instructions: Do it.
        """)
    ref = stub_persona(personas_dir, "stub-hostile", "implementer", stub_dir, model=HOSTILE,
                        argv=[sys.executable, "-I", STUB, "{prompt_file}", "{artifact_path}",
                              "{worktree}", "{phase}", "{run_id}", "{attempt}", "{model}",
                              "plain words stay as written", "$(touch PWNED)"])
    workspace = tmp_path / f"ws {HOSTILE}"
    app = _app(settings, personas_dir, templates, workspace=workspace)
    try:
        (stub_dir / "artifacts").mkdir(parents=True)
        stub_artifacts(app, stub_dir, **{f"{HOSTILE}.json": "dev/implementation@1"})
        view = app.start(StartRequest(
            repo=repo, base="main", template="hostile@1", actor="tester",
            requirements=f"Requirements that try: {HOSTILE}\n", binds={"implementer": ref}))
        assert view.run.state == "completed", view.run.failure_reason
        (call,) = stub_calls(stub_dir).values()
        worktree = view.run.worktree
        assert call["argv"] == [
            str(Path(view.run.workspace) / "prompts" / "implement.attempt-1.md"),
            artifact, worktree, "implement", view.run.id, "1", HOSTILE,
            "plain words stay as written", "$(touch PWNED)"]
        assert Path(call["argv"][0]).read_text(encoding="utf-8").count(HOSTILE) >= 1
        assert call["cwd"] == worktree
        assert not list(tmp_path.rglob("PWNED")) and not Path("PWNED").exists()
        assert (Path(worktree) / artifact).is_file()
    finally:
        app.close()


def test_stdin_prompt_feeds_the_prompt_file(settings: Settings, repo: Path, stub_dir: Path,
                                            personas_dir: Path) -> None:
    binds = {"implementer": stub_persona(personas_dir, "stub-stdin", "implementer", stub_dir,
                                          options={"stdin": "prompt"}),
             "reviewer": stub_persona(personas_dir, "stub-nostdin", "reviewer", stub_dir)}
    app = _app(settings, personas_dir)
    try:
        stub_artifacts(app, stub_dir)
        view = app.start(_quick(repo, binds))
        assert view.run.state == "completed", view.run.failure_reason
        calls = stub_calls(stub_dir)
        assert "Add a farewell." in calls["implement-1"]["stdin"]
        assert calls["implement-1"]["stdin"].startswith("# devflow run")
        assert calls["review-1"]["stdin"] == ""
    finally:
        app.close()


# -- environment --------------------------------------------------------------------------
def test_agent_environment_is_the_allowlist_and_nothing_else(
        settings: Settings, repo: Path, stub_dir: Path, personas_dir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVFLOW_TEST_API_TOKEN", "devflow-own-secret-value")
    monkeypatch.setenv("UNRELATED_SETTING", "not-for-agents")
    monkeypatch.setenv("STUBALLOW_ONE", "one")
    monkeypatch.setenv("STUBALLOW_TWO", "two")
    monkeypatch.setenv("STUB_EXACT", "exact")
    binds = {role: stub_persona(personas_dir, f"stub-env-{role}", role, stub_dir,
                                 allow=["STUBALLOW_*", "STUB_EXACT", "NOT_SET_ANYWHERE"],
                                 env_set={"GIVEN": "given-value"})
             for role in ("implementer", "reviewer")}
    app = _app(settings, personas_dir)
    try:
        stub_artifacts(app, stub_dir)
        view = app.start(_quick(repo, binds))
        assert view.run.state == "completed", view.run.failure_reason
        env = stub_calls(stub_dir)["implement-1"]["env"]
        assert "DEVFLOW_TEST_API_TOKEN" not in env
        assert "devflow-own-secret-value" not in json.dumps(env)
        assert "UNRELATED_SETTING" not in env
        assert (env["STUBALLOW_ONE"], env["STUBALLOW_TWO"], env["STUB_EXACT"]) == (
            "one", "two", "exact")
        assert env["GIVEN"] == "given-value"
        assert env["DEVFLOW_RUN_ID"] == view.run.id
        assert env["DEVFLOW_ARTIFACT"] == IMPLEMENTATION
        allowed = {*BASE_ENV, "STUBALLOW_ONE", "STUBALLOW_TWO", "STUB_EXACT", "GIVEN",
                   "STUB_DIR", "DEVFLOW_RUN_ID", "DEVFLOW_PHASE", "DEVFLOW_ATTEMPT",
                   "DEVFLOW_WORKTREE", "DEVFLOW_PROMPT_FILE", "DEVFLOW_ARTIFACT",
                   "DEVFLOW_PORT_BASE"}
        # what Python adds to its own environment on start is not devflow's doing
        assert set(env) - allowed - {"LC_CTYPE", "PWD", "OLDPWD", "SHLVL", "_"} == set()
    finally:
        app.close()


@pytest.mark.slow
def test_a_secret_given_to_the_agent_leaks_nowhere(
        cli: Callable[..., Any], settings: Settings, repo: Path, tmp_path: Path,
        stub_dir: Path, personas_dir: Path) -> None:
    canary = "canary-7f3a9e1d-do-not-print"
    binds = [f"--bind={role}=" + stub_persona(
        personas_dir, f"stub-canary-{role}", role, stub_dir,
        argv=[sys.executable, "-I", STUB, "--api-token", canary],
        env_set={"STUB_SAY": f"the agent says {canary}", "MY_SERVICE_HANDLE": canary})
        for role in ("implementer", "reviewer")]
    app = _app(settings, personas_dir)
    try:
        stub_artifacts(app, stub_dir)
    finally:
        app.close()
    started = cli("-v", "--personas-dir", str(personas_dir), "run", "start", "--repo",
                  str(repo), "--base", "main", "--template", "quick@1", "--requirements",
                  str(requirements_file(tmp_path)), *binds, "--json", check=0)
    run = json.loads(started.stdout)["run"]
    assert run["state"] == "completed"
    assert stub_calls(stub_dir)["implement-1"]["env"]["MY_SERVICE_HANDLE"] == canary
    assert canary in stub_calls(stub_dir)["implement-1"]["argv"]
    events = cli("events", run["id"], "--json", check=0)
    outputs = {"run start --json": started.stdout,
               "run start stderr (-v, JSON logs)": started.stderr,
               "events --json": events.stdout, "events stderr": events.stderr}
    workspace = Path(run["workspace"])
    for name in ("report.json", "report.md"):
        outputs[name] = (workspace / name).read_text(encoding="utf-8")
    leaks = [name for name, text in outputs.items() if canary in text]
    assert leaks == [], f"the canary leaked into: {leaks}"
    assert started.stderr.strip(), "-v should have logged something to check"
    stored_argv = json.loads(outputs["report.json"])["invocations"][0]["argv"]
    assert "[redacted]" in stored_argv
    # the agent's own logs keep what it printed, readable by the owner only
    for log in (workspace / "logs").glob("implement.attempt-1.std*.log"):
        assert canary in log.read_text(encoding="utf-8")
        assert stat.S_IMODE(log.stat().st_mode) == 0o600


def test_a_bound_personas_secret_is_redacted_by_the_process_that_drives_on(
        settings: Settings, repo: Path, tmp_path: Path, stub_dir: Path,
        personas_dir: Path) -> None:
    """The secrets to redact are those of the run's bindings, as stored when it started:
    a later process (here: the one approving and driving the second phase) redacts them
    though it loaded no persona, and though the persona's file has changed since."""
    canary = "canary-41c9b2aa-bound-persona"
    templates = tmp_path / "templates"
    write_template(templates, "gated", """
        name: gated
        version: 1
        roles: {implementer: {}, reviewer: {}}
        gates: {ok: {message: "Fine?"}}
        phases:
          - key: implement
            roles: [implementer]
            artifact: {path: .devflow/implementation.json, schema: dev/implementation@1}
            gates: [ok]
          - key: review
            roles: [reviewer]
            artifact: {path: .devflow/review.json, schema: dev/review@1}
        """)
    binds = {role: stub_persona(personas_dir, f"stub-secret-{role}", role, stub_dir,
                                argv=[sys.executable, "-I", STUB, "--token", canary],
                                env_set={"MY_SERVICE_HANDLE": canary})
             for role in ("implementer", "reviewer")}
    app = _app(settings, personas_dir, templates)
    try:
        stub_artifacts(app, stub_dir)
        view = app.start(StartRequest(repo=repo, base="main", template="gated@1",
                                      actor="tester", requirements="x", binds=binds))
        assert view.gate is not None, view.run.failure_reason
    finally:
        app.close()
    for path in personas_dir.glob("*.yaml"):  # the files change: the canary is gone
        path.write_text(path.read_text(encoding="utf-8").replace(canary, "changed-since"),
                        encoding="utf-8")
    later = _app(settings, personas_dir, templates)
    try:
        from devflow.approvals import DecisionRequest, new_token
        later.decide(DecisionRequest(run_id=view.run.id, action="approve", actor="tester",
                                     token=new_token()))
        done, _ = later.drive(view.run.id)
        assert done.run.state == "completed", done.run.failure_reason
        argv = [list(i.argv) for i in later.store.runs.invocations(view.run.id)]
    finally:
        later.close()
    assert len(argv) == 2 and all("[redacted]" in a for a in argv), argv
    assert canary not in json.dumps(argv)
    report = (Path(done.run.workspace) / "report.json").read_text(encoding="utf-8")
    assert canary not in report


# -- timeouts -----------------------------------------------------------------------------
def test_persona_timeout_wins_over_the_phase_timeout(tmp_path: Path) -> None:
    persona = _persona("command", {"argv": ["agent"], "timeout": "90s"})
    command = backends.get("command").command(_task(tmp_path, persona), None)  # type: ignore[arg-type]
    assert command.timeout == 90.0
    persona = _persona("claude-code", {"timeout": "2m", "bin": sys.executable})
    command = backends.get("claude-code").command(_task(tmp_path, persona), None)  # type: ignore[arg-type]
    assert command.timeout == 120.0


def test_persona_timeout_stops_the_agent_and_its_child(
        settings: Settings, repo: Path, tmp_path: Path, stub_dir: Path,
        personas_dir: Path) -> None:
    templates = tmp_path / "templates"
    write_template(templates, "long", """
        name: long
        version: 1
        description: A phase with a long time limit of its own.
        roles:
          implementer: {description: Makes the change.}
        phases:
          - key: implement
            title: Implement
            roles: [implementer]
            artifact: {path: .devflow/implementation.json, schema: dev/implementation@1}
            timeout: 10m
            max_repairs: 0
            instructions: Do it.
        """)
    ref = stub_persona(personas_dir, "stub-slow", "implementer", stub_dir,
                       options={"timeout": "2s"}, env_set={"STUB_SLEEP": "8"})
    app = _app(settings, personas_dir, templates)
    try:
        stub_artifacts(app, stub_dir)
        view = app.start(StartRequest(repo=repo, base="main", template="long@1",
                                      actor="tester", requirements="Wait.",
                                      binds={"implementer": ref}))
        assert view.run.state == "failed"
        assert view.run.failure_code == "agent_timeout"
        assert "time limit (2.0s)" in (view.run.failure_reason or "")
        assert (stub_dir / "calls" / "implement-1.child").exists()  # it had a child
        assert live_stubs(stub_dir) == []  # the child ended with its sandbox
    finally:
        app.close()


# -- availability and binding -------------------------------------------------------------
def test_missing_program_is_backend_unavailable_at_binding(
        settings: Settings, repo: Path, stub_dir: Path, personas_dir: Path) -> None:
    ref = stub_persona(personas_dir, "stub-missing", "implementer", stub_dir,
                        argv=["devflow-no-such-agent-program", "{prompt_file}"])
    app = _app(settings, personas_dir)
    try:
        with pytest.raises(DevflowError) as caught:
            app.start(_quick(repo, {"implementer": ref, "reviewer": "scripted-reviewer@1"}))
        assert caught.value.code is Code.BACKEND_UNAVAILABLE
        assert "devflow-no-such-agent-program" in caught.value.message
        assert "stub-missing@1" in caught.value.message
        assert app.runs() == []  # refused before anything was created
        assert not settings.workspace.exists() or not any(settings.workspace.iterdir())
    finally:
        app.close()


def test_backends_list_shows_versions(settings: Settings, stub_dir: Path,
                                      personas_dir: Path) -> None:
    stub_persona(personas_dir, "stub-versioned", "implementer", stub_dir,
                  options={"version_argv": [sys.executable, "--version"]})
    app = _app(settings, personas_dir)
    try:
        rows = {r["backend"]: r for r in app.backends()}
        assert set(rows) >= {"scripted", "command", "claude-code", "codex", "aider"}
        assert rows["command"]["available"] is True
        assert rows["command"]["version"] == f"Python {sys.version.split()[0]}"
    finally:
        app.close()


# -- what the presets build ---------------------------------------------------------------
def _persona(backend: str, options: dict[str, Any], model: str | None = "m-1",
             env_set: dict[str, str] | None = None) -> Persona:
    return Persona(name="p", version="1", description="", roles=("implementer",),
                   backend=backend, model=model, prompt="", options=options, env_allow=(),
                   env_set=env_set or {}, definition={}, hash="h")


def _task(tmp_path: Path, persona: Persona, resume: str | None = None) -> Task:
    worktree = tmp_path / "wt"
    worktree.mkdir(exist_ok=True)
    prompt = tmp_path / "prompt.md"
    prompt.write_text("# prompt\n", encoding="utf-8")
    return Task(run_id="r1", phase="implement", attempt=2, role="implementer",
                worktree=worktree, prompt="# prompt", prompt_file=prompt,
                log_dir=tmp_path / "logs", timeout=60.0, persona=persona,
                artifact_path=IMPLEMENTATION, artifact_schema="dev/implementation@1",
                resume_session=resume, port_base=21000, home=tmp_path / "home")


def test_claude_code_argv_and_environment(tmp_path: Path) -> None:
    persona = _persona("claude-code", {"bin": sys.executable, "allowed_tools": ["Write"],
                                       "permission_mode": "plan",
                                       "args": ["--max-turns", "9", "{phase}"]},
                       env_set={"DISABLE_TELEMETRY": "0"})
    command = backends.get("claude-code").command(_task(tmp_path, persona, "sess-1"), None)  # type: ignore[arg-type]
    assert command.argv == [sys.executable, "-p", "--allowedTools", "Write", "--output-format",
                            "stream-json", "--verbose", "--permission-mode", "plan", "--model",
                            "m-1", "--resume", "sess-1", "--max-turns", "9", "implement"]
    assert command.stdin_file == tmp_path / "prompt.md"
    home = tmp_path / "home" / "claude-code"
    assert command.env["HOME"] == str(home)
    assert command.env["CLAUDE_CONFIG_DIR"] == str(home / ".claude")
    assert command.env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    assert command.env["DISABLE_TELEMETRY"] == "0"  # the persona's value wins
    assert command.env["DEVFLOW_PORT_BASE"] == "21000"
    assert set(claude_code.QUIET) <= set(command.env)
    assert "IS_SANDBOX" not in command.env
    assert command.reads == (Path(sys.executable),)  # what the sandbox must show
    boxed = dataclasses.replace(_task(tmp_path, persona), sandboxed=True)
    assert backends.get("claude-code").command(boxed, None).env["IS_SANDBOX"] == "1"  # type: ignore[arg-type]


def test_codex_config_and_argv(tmp_path: Path) -> None:
    persona = _persona("codex", {"bin": sys.executable, "base_url": "http://127.0.0.1:9/v1",
                                 "env_key": "MY_KEY", "request_max_retries": 1})
    backend = backends.get("codex")
    command = backend.command(_task(tmp_path, persona), None)  # type: ignore[arg-type]
    assert command.argv[1:] == ["exec", "--json", "-"]
    resumed = backend.command(_task(tmp_path, persona, "thr-9"), None)  # type: ignore[arg-type]
    assert resumed.argv[1:] == ["exec", "resume", "--json", "thr-9", "-"]
    codex_home = Path(command.env["CODEX_HOME"])
    assert codex_home == tmp_path / "home" / "codex" / ".codex"
    config = (codex_home / "config.toml").read_text(encoding="utf-8")
    import tomllib
    parsed = tomllib.loads(config)
    assert parsed["model"] == "m-1" and parsed["model_provider"] == "devflow"
    assert parsed["approval_policy"] == "never"
    assert parsed["sandbox_mode"] == "workspace-write"
    assert parsed["check_for_update_on_startup"] is False
    assert parsed["analytics"] == {"enabled": False}
    assert parsed["features"] == {"plugins": False, "remote_plugin": False, "apps": False}
    assert parsed["model_providers"]["devflow"] == {
        "name": "devflow", "base_url": "http://127.0.0.1:9/v1", "env_key": "MY_KEY",
        "wire_api": "responses", "request_max_retries": 1}
    assert codex.config_toml(_task(tmp_path, _persona("codex", {}, model=None))).count(
        "model") == 0
    # in devflow's sandbox, Codex's own sandbox is off (it cannot nest); the persona wins
    boxed = dataclasses.replace(_task(tmp_path, persona), sandboxed=True)
    assert tomllib.loads(codex.config_toml(boxed))["sandbox_mode"] == "danger-full-access"
    strict = dataclasses.replace(boxed, persona=_persona("codex", {"sandbox": "read-only"}))
    assert tomllib.loads(codex.config_toml(strict))["sandbox_mode"] == "read-only"


def test_codex_takes_its_base_url_from_the_variable_the_persona_names(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tomllib
    shipped = Catalog(Dirs.with_builtins()).persona("codex-implementer")
    assert shipped.options["base_url_env"] == "OPENAI_BASE_URL"

    def provider() -> dict[str, Any]:
        config = tomllib.loads(codex.config_toml(_task(tmp_path, shipped)))
        return dict(config["model_providers"][config["model_provider"]])

    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    assert provider()["base_url"] == "https://api.openai.com/v1"
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:8111/v1")
    assert provider()["base_url"] == "http://127.0.0.1:8111/v1"
    assert provider()["env_key"] == "OPENAI_API_KEY"
    monkeypatch.setenv("OPENAI_BASE_URL", " ")  # set but empty: the persona's own
    assert provider()["base_url"] == "https://api.openai.com/v1"
    assert backends.check_options("codex", {"base_url_env": "not a name"}) != []


def test_aider_argv_keeps_its_files_out_of_the_worktree(tmp_path: Path) -> None:
    persona = _persona("aider", {"bin": sys.executable, "api_base": "http://127.0.0.1:9/v1",
                                 "prices": {"input": 2, "output": 8}, "read": ["README.md"]},
                       model="openai/gpt-4.1")
    command = backends.get("aider").command(_task(tmp_path, persona), None)  # type: ignore[arg-type]
    argv = command.argv
    home = tmp_path / "home" / "aider"
    assert argv[argv.index("--message-file") + 1] == str(tmp_path / "prompt.md")
    for flag in ("--yes-always", "--no-auto-commits", "--no-gitignore", "--no-detect-urls"):
        assert flag in argv
    assert argv[argv.index("--chat-history-file") + 1] == str(home / "chat.history.md")
    assert argv[argv.index("--map-tokens") + 1] == "0"
    assert argv[-2:] == ["--", IMPLEMENTATION]
    assert command.stdin_file is None
    assert command.env["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
    assert int(command.env["COLUMNS"]) >= 1000  # "Applied edit to PATH" stays one line
    metadata = json.loads(Path(argv[argv.index("--model-metadata-file") + 1]).read_text())
    assert metadata["openai/gpt-4.1"]["input_cost_per_token"] == pytest.approx(2e-6)
    assert (tmp_path / "wt" / ".devflow").is_dir()
    # a git user of its own, so Aider writes none into the repository's config
    assert "name = " in (home / ".gitconfig").read_text(encoding="utf-8")


def test_outcomes_are_read_from_the_clis_output(tmp_path: Path) -> None:
    from devflow.backends.process import Exit
    done = Exit(pid=1, pgid=1, exit_code=0, signal=None, duration_ms=5, timed_out=False,
                truncated=False)
    log = tmp_path / "out.log"
    empty = tmp_path / "err.log"
    empty.write_text("")
    log.write_text("\n".join([
        "Tokens: 2.7k sent, 600 received. Cost: $0.01 message, $0.01 session.",
        "Tokens: 1,200 sent, 15k received. Cost: $0.02 message, $0.03 session."]))
    seen = backends.get("aider").outcome(_task(tmp_path, _persona("aider", {})), done, log,
                                         empty)
    assert (seen.tokens_in, seen.tokens_out, seen.cost_usd, seen.failure) == (
        3900, 15600, 0.03, None)
    log.write_text("litellm.BadRequestError: OpenAIException - it broke\n(badly)\n\n")
    seen = backends.get("aider").outcome(_task(tmp_path, _persona("aider", {})), done, log,
                                         empty)
    assert seen.failure == ("Aider's model call failed: litellm.BadRequestError: "
                            "OpenAIException - it broke (badly)")
    log.write_text("\n".join(json.dumps(e) for e in [
        {"type": "thread.started", "thread_id": "t-1"},
        {"type": "turn.completed", "usage": {"input_tokens": 1000, "cached_input_tokens": 400,
                                             "output_tokens": 100}}]))
    persona = _persona("codex", {"prices": {"input": 1.0, "output": 10.0,
                                            "cached_input": 0.1}})
    seen = backends.get("codex").outcome(_task(tmp_path, persona), done, log, empty)
    assert (seen.session_id, seen.tokens_in, seen.tokens_out) == ("t-1", 1000, 100)
    assert seen.cost_usd == pytest.approx((600 * 1.0 + 400 * 0.1 + 100 * 10.0) / 1e6)
    unpriced = _persona("codex", {})
    assert backends.get("codex").outcome(_task(tmp_path, unpriced), done, log,
                                         empty).cost_usd is None
    backends.configure(prices={"m-1": {"input": 2.0, "output": 20.0}})  # config.yaml's table
    try:
        seen = backends.get("codex").outcome(_task(tmp_path, unpriced), done, log, empty)
        assert seen.cost_usd == pytest.approx((1000 * 2.0 + 100 * 20.0) / 1e6)
    finally:
        backends.configure(prices=None)
    log.write_text(json.dumps({"type": "result", "subtype": "success", "is_error": False,
                               "session_id": "s-1", "total_cost_usd": 0.5,
                               "usage": {"input_tokens": 10, "output_tokens": 2},
                               "permission_denials": [{"tool_name": "Write", "tool_input": {
                                   "file_path": "/w/.devflow/x.json"}}]}))
    seen = backends.get("claude-code").outcome(_task(tmp_path, _persona("claude-code", {})),
                                               done, log, empty)
    assert (seen.session_id, seen.tokens_in, seen.tokens_out, seen.cost_usd) == (
        "s-1", 10, 2, 0.5)
    assert seen.failure is not None and "denied 1 tool call(s)" in seen.failure
    assert "Write /w/.devflow/x.json" in seen.failure


def test_progress_notes_name_tools_and_files() -> None:
    claude = backends.get("claude-code")
    assert claude.progress(json.dumps({"type": "assistant", "message": {"content": [
        {"type": "tool_use", "name": "Write", "input": {"file_path": "/w/a.py"}},
        {"type": "text", "text": "hi"}]}})) == "Write /w/a.py"
    assert claude.progress("not json") is None
    assert backends.get("codex").progress(json.dumps({"type": "item.completed", "item": {
        "type": "file_change", "changes": [{"path": "/w/b.py", "kind": "add"}]}})) == \
        "add /w/b.py"
    assert backends.get("aider").progress("Applied edit to x.py") == "Applied edit to x.py"
    assert backends.get("command").progress("anything") is None


def test_versions_are_read_once_with_a_throwaway_home(tmp_path: Path) -> None:
    from devflow.backends import command
    program = tmp_path / "fake-cli"
    marker = tmp_path / "called"
    program.write_text(f"#!/bin/sh\necho x >> {marker}\necho \"fake-cli 1.2.3 $HOME\"\n")
    program.chmod(0o755)
    first = command.version([str(program), "--version"])
    again = command.version([str(program), "--version"])
    assert first == again and first is not None and first.startswith("fake-cli 1.2.3 ")
    assert str(Path.home()) not in first.split()[-1]  # HOME was a temporary directory
    assert marker.read_text().count("x") == 1
    stamp = program.stat().st_mtime_ns + 1_000_000_000
    os.utime(program, ns=(stamp, stamp))  # a new binary (a new mtime) is asked again
    assert (command.version([str(program), "--version"]) or "").startswith("fake-cli 1.2.3")
    assert marker.read_text().count("x") == 2
