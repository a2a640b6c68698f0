"""The sandbox's command line, what a program is shown with, the probe and the plan."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from devflow import memo
from devflow.backends import exposure, sandbox
from devflow.definitions import Persona, SandboxDef
from devflow.errors import Code, DevflowError
from devflow.settings import Settings

needs_bwrap = pytest.mark.skipif(not sandbox.probe().works, reason="bubblewrap cannot run here")


def _pairs(argv: list[str], flag: str) -> list[str]:
    """The destinations of each ``flag SRC DEST`` (or ``flag DEST`` for --tmpfs)."""
    found = []
    for i, arg in enumerate(argv):
        if arg == flag:
            found.append(argv[i + 1] if flag in ("--tmpfs", "--remount-ro") else argv[i + 2])
    return found


def _at(argv: list[str], flag: str, dest: str) -> int:
    """The position of the mount ``flag … dest``."""
    for i, arg in enumerate(argv):
        if arg == flag and dest in (argv[i + 1:i + 3] if flag != "--tmpfs" else argv[i + 1:i + 2]):
            return i
    raise AssertionError(f"no {flag} {dest} in {argv}")


def _spec(tmp_path: Path, **more: object) -> sandbox.Spec:
    worktree, home = tmp_path / "ws" / "run" / "main", tmp_path / "ws" / "run" / "home"
    worktree.mkdir(parents=True)
    home.mkdir()
    (worktree / ".git").write_text("gitdir: /somewhere\n")
    return sandbox.Spec(worktree=worktree, home=home, **more)  # type: ignore[arg-type]


def test_the_command_line_in_order(tmp_path: Path) -> None:
    prompts = tmp_path / "ws" / "run" / "prompts"
    prompts.mkdir(parents=True)
    extra_ro, extra_rw, common = tmp_path / "ro", tmp_path / "rw", tmp_path / "repo" / ".git"
    spec = _spec(tmp_path, read_only=(extra_ro,), writable=(extra_rw,),
                 locked=(prompts, common))
    argv = sandbox.command(spec, "/usr/bin/bwrap")
    assert argv[:6] == ["/usr/bin/bwrap", "--die-with-parent", "--unshare-pid", "--unshare-ipc",
                        "--unshare-uts", "--unshare-cgroup-try"]
    assert "--unshare-net" not in argv
    assert ("--cap-drop" in argv) == (os.geteuid() == 0)
    assert argv[-5:] == ["--remount-ro", "/", "--chdir", str(spec.worktree), "--"]
    # the system, then the sandbox's own /proc, /dev and /tmp, then what the run adds
    assert _at(argv, "--ro-bind", "/usr") < _at(argv, "--proc", "/proc") \
        < _at(argv, "--tmpfs", "/tmp") < _at(argv, "--ro-bind-try", str(extra_ro))
    assert _at(argv, "--ro-bind-try", "/proc/sys") > _at(argv, "--proc", "/proc")
    # what stays read-only comes after what the persona made writable; the run's own last
    assert _at(argv, "--bind-try", str(extra_rw)) < _at(argv, "--ro-bind", str(common))
    assert _at(argv, "--ro-bind", str(prompts)) < _at(argv, "--bind", str(spec.worktree)) \
        < _at(argv, "--ro-bind", str(spec.worktree / ".git"))
    assert _pairs(argv, "--bind") == [str(spec.worktree), str(spec.home)]



def test_the_same_spec_again_follows_what_changed_on_disk(tmp_path: Path) -> None:
    """The options are remembered per spec, never past what the machine shows: a WAL file
    that appears beside the database is masked at the next call, one that goes is not
    named any more, and a worktree whose .git is no longer a file loses that bind."""
    wide = tmp_path / "wide"
    wide.mkdir()
    wal = wide / "devflow.db-wal"
    spec = _spec(tmp_path, read_only=(wide,), hidden=(wal,))
    dot_git = str(spec.worktree / ".git")
    before = sandbox.command(spec, "bwrap")
    assert str(wal) not in before and dot_git in before
    wal.write_text("")
    shown = sandbox.command(spec, "bwrap")
    assert shown[shown.index(str(wal)) - 2:shown.index(str(wal)) + 1] == \
        ["--ro-bind", "/dev/null", str(wal)]
    wal.unlink()
    wal.mkdir()
    assert str(wal) in _pairs(sandbox.command(spec, "bwrap"), "--tmpfs")
    wal.rmdir()
    (spec.worktree / ".git").unlink()
    after = sandbox.command(spec, "bwrap")
    assert str(wal) not in after and dot_git not in after
    assert sandbox.command(spec, "bwrap") == after  # and the same facts, the same options

def test_network_none_unshares_the_network(tmp_path: Path) -> None:
    argv = sandbox.command(_spec(tmp_path, network="none"), "bwrap")
    assert "--unshare-net" in argv


def test_hidden_paths_are_masked_where_a_wider_path_shows_them(tmp_path: Path) -> None:
    """A persona shows the whole of ``wide``: devflow's home and database in it are masked,
    and a tool that lives inside the masked home comes back over the mask."""
    wide = tmp_path / "wide"
    home = wide / "devflow-home"
    tool = home / "tools" / "agent"
    tool.parent.mkdir(parents=True)
    tool.write_text("binary")
    database = wide / "db" / "devflow.db"
    database.parent.mkdir()
    database.write_text("")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    spec = _spec(tmp_path, read_only=(wide,), tools=(tool,),
                 hidden=(home, database, elsewhere, tmp_path / "missing"))
    argv = sandbox.command(spec, "bwrap")
    assert _pairs(argv, "--tmpfs")[-1:] == [str(home)]
    assert str(elsewhere) not in argv  # shown nowhere: nothing to mask
    assert str(tmp_path / "missing") not in argv
    mask = _at(argv, "--tmpfs", str(home))
    assert _at(argv, "--ro-bind-try", str(wide)) < mask
    db_mask = argv.index(str(database))
    assert argv[db_mask - 2:db_mask + 1] == ["--ro-bind", "/dev/null", str(database)]
    rebinds = [i for i, a in enumerate(argv) if a == str(tool) and argv[i - 2] == "--ro-bind"]
    assert len(rebinds) == 2 and rebinds[0] < mask < rebinds[1]


def test_expose_follows_links_venvs_node_modules_and_interpreters(tmp_path: Path) -> None:
    # a Python: prefix/bin/python3.11 with prefix/lib; a venv made from it; a script in it
    prefix = tmp_path / "python"
    (prefix / "lib" / "python3.11").mkdir(parents=True)
    (prefix / "bin").mkdir()
    (prefix / "bin" / "python3.11").write_text("ELF")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text(f"home = {prefix / 'bin'}\n")
    (venv / "bin" / "python").symlink_to(prefix / "bin" / "python3.11")
    script = venv / "bin" / "tool"
    script.write_text(f"#!{venv / 'bin' / 'python'}\nimport tool\n")
    # an npm CLI: bin/cli -> node_modules/.bin/cli -> ../pkg/cli.js, run by `env fake-node`
    npm = tmp_path / "npm"
    (npm / "node_modules" / "pkg").mkdir(parents=True)
    (npm / "node_modules" / ".bin").mkdir()
    (npm / "node_modules" / "pkg" / "cli.js").write_text("#!/usr/bin/env -S fake-node --x\n")
    (npm / "node_modules" / ".bin" / "cli").symlink_to("../pkg/cli.js")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "cli").symlink_to(npm / "node_modules" / ".bin" / "cli")
    node = tmp_path / "node" / "bin" / "fake-node"
    node.parent.mkdir(parents=True)
    node.write_text("ELF")
    node.chmod(0o755)
    found = exposure.expose([script, tmp_path / "bin" / "cli"], path_env=str(node.parent))
    assert set(found.roots) == {venv, prefix / "lib", prefix / "bin" / "python3.11",
                                npm / "node_modules", node}
    assert (tmp_path / "bin" / "cli", str(npm / "node_modules" / ".bin" / "cli")) in found.links
    assert exposure.expose([Path("/usr/bin/env")]).roots == ()  # the system is there anyway


@needs_bwrap
def test_a_program_runs_in_the_sandbox_with_what_it_was_shown(tmp_path: Path) -> None:
    spec = _spec(tmp_path, tools=(Path(sys.executable),))
    (spec.worktree / ".git").unlink()
    argv = sandbox.command(spec, sandbox.probe().path or "bwrap")
    code = ("import json, os; open('made', 'w').write('x'); print(json.dumps([os.getpid(), "
            "sorted(int(p) for p in os.listdir('/proc') if p.isdigit()), os.getcwd()]))")
    done = subprocess.run([*argv, sys.executable, "-I", "-c", code], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr
    pid, pids, cwd = json.loads(done.stdout)
    assert (pid, pids, cwd) == (2, [1, 2], str(spec.worktree))  # bwrap's init, then it
    assert (spec.worktree / "made").read_text() == "x"


def test_the_probe_says_why_not(tmp_path: Path) -> None:
    missing = sandbox.probe(str(tmp_path / "no-bwrap"))
    assert not missing.works and "is not installed" in missing.reason
    broken = tmp_path / "bwrap"
    broken.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\n"
                      "exit 1\n")
    broken.chmod(0o755)
    seen = sandbox.probe(str(broken))
    assert not seen.works and "No permissions to create new namespace" in seen.reason
    # where it was found is remembered, not past its removal, nor past a new install
    broken.unlink()
    assert "is not installed" in sandbox.probe(str(broken)).reason
    broken.write_text("#!/bin/sh\necho 'bwrap: another refusal' >&2\nexit 1\n")
    broken.chmod(0o755)
    assert "another refusal" in sandbox.probe(str(broken)).reason
    if shutil.which("bwrap"):
        assert sandbox.probe().works == sandbox.probe("bwrap").works


def test_a_bwrap_that_works_is_remembered_between_processes(tmp_path: Path) -> None:
    """Trying bubblewrap costs a sandbox: one that works is not tried again by the next
    process while it is the same file; one that does not work is tried every time."""
    calls = tmp_path / "calls"
    bwrap = tmp_path / "bwrap"

    def install(works: bool) -> None:
        bwrap.write_text(f"#!/bin/sh\necho x >> '{calls}'\n"
                         'if [ "$1" = --version ]; then echo "bubblewrap 0.9"; exit 0; fi\n'
                         + ("exit 0\n" if works else "echo 'bwrap: no namespace' >&2\nexit 1\n"))
        bwrap.chmod(0o755)

    def probe_in_a_new_process() -> tuple[sandbox.Probe, int]:
        sandbox._probe.cache_clear()  # what a new process starts with: the memo's file only
        sandbox.configure(memo=memo.Memo(tmp_path / "memo.json"))
        before = len(calls.read_text().splitlines()) if calls.exists() else 0
        found = sandbox.probe(str(bwrap))
        return found, len(calls.read_text().splitlines()) - before

    try:
        install(works=False)
        assert [(p.works, n) for p, n in (probe_in_a_new_process(),
                                          probe_in_a_new_process())] == [(False, 2), (False, 2)]
        install(works=True)  # another file now (its size and time changed): tried again
        found, ran = probe_in_a_new_process()
        assert (found.works, found.version, ran) == (True, "bubblewrap 0.9", 2)
        found, ran = probe_in_a_new_process()
        assert (found.works, found.version, ran) == (True, "bubblewrap 0.9", 0)
    finally:
        sandbox.configure()
        sandbox._probe.cache_clear()


def test_what_only_privileged_accounts_may_read_in_etc_is_hidden() -> None:
    """Every entry of /etc that others may not read, a link aside, and nothing inside one
    (it is hidden whole); looked for here the plain way, one lstat per entry."""
    expected: set[str] = set()
    for top, dirs, files in os.walk("/etc"):
        for name in [*dirs, *files]:
            path = os.path.join(top, name)
            if not os.path.islink(path) and not os.lstat(path).st_mode & 0o004:
                expected.add(path)
        dirs[:] = [d for d in dirs if os.path.join(top, d) not in expected]
    sandbox._etc_secrets.cache_clear()
    found = sandbox._etc_secrets()
    assert set(found) == expected and len(found) == len(expected)
    if os.path.exists("/etc/shadow") and not os.stat("/etc/shadow").st_mode & 0o004:
        assert "/etc/shadow" in found


def _persona(box: SandboxDef) -> Persona:
    return Persona(name="p", version="1", description="", roles=("implementer",),
                   backend="scripted", model=None, prompt="", options={}, env_allow=(),
                   env_set={}, definition={}, hash="h", sandbox=box)


def test_the_plan(tmp_path: Path) -> None:
    settings = Settings.load(env={"DEVFLOW_HOME": str(tmp_path)})
    off = sandbox.plan(_persona(SandboxDef(enabled=False)), settings)
    assert not off.sandboxed and "sandbox: none" in off.label
    missing = settings.replace(bwrap=str(tmp_path / "no-bwrap"))
    with pytest.raises(DevflowError) as caught:
        sandbox.plan(_persona(SandboxDef()), missing)
    assert caught.value.code is Code.SANDBOX_UNAVAILABLE and caught.value.exit_code == 2
    allowed = sandbox.plan(_persona(SandboxDef()), missing.replace(allow_unsandboxed=True))
    assert not allowed.sandboxed and "allowed by allow_unsandboxed" in allowed.label
    if sandbox.probe().works:
        boxed = sandbox.plan(_persona(SandboxDef(network="none")), settings)
        assert boxed.sandboxed and boxed.label.endswith("network none")


def test_a_personas_paths_never_show_devflows_files_again(tmp_path: Path) -> None:
    """A persona that names devflow's database or another run's workspace among its
    extra paths still sees them masked: only tools and the run's own pieces come back."""
    home = tmp_path / "devflow-home"
    other_run = home / "workspace" / "other-run"
    other_run.mkdir(parents=True)
    database = home / "devflow.db"
    database.write_text("")
    spec = _spec(tmp_path, read_only=(home, database), writable=(other_run,),
                 hidden=(home, database))
    argv = sandbox.command(spec, "bwrap")
    mask = _at(argv, "--tmpfs", str(home))
    assert all(i < mask for i, a in enumerate(argv) if a == str(other_run))
    db_mask = max(i for i, a in enumerate(argv) if a == str(database))
    assert argv[db_mask - 2:db_mask + 1] == ["--ro-bind", "/dev/null", str(database)]
