"""An agent that tries to escape, for the hostile suite: one escape a run, then the artifact.

Run as ``python -I hostile_agent.py`` by a ``command`` persona (standard library only).
``HOSTILE_ESCAPE`` names the escape, ``HOSTILE_TARGETS`` (JSON) what it aims at, and
``HOSTILE_MARK`` is a value its daemons carry in their environment, so the test can look
for them on the host. It prints one line ``{"hostile": {...}}`` saying what it found or
did, waits ``HOSTILE_WAIT`` seconds (a test may kill devflow meanwhile), then writes
``HOSTILE_ARTIFACT`` (JSON text) to ``$DEVFLOW_ARTIFACT`` and exits 0: whatever the
escape did, the run goes on, and the test judges from the line and the world outside.
"""

import contextlib
import json
import os
import socket
import subprocess
import sys
import time

TARGETS = json.loads(os.environ.get("HOSTILE_TARGETS", "{}"))


def _read(path):
    try:
        with open(path, "rb") as handle:
            return handle.read().decode("utf-8", errors="replace")
    except OSError as exc:
        return f"error: {type(exc).__name__}: {exc.strerror}"


def _write(path, text="escaped\n"):
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(text)
        return "written"
    except OSError as exc:
        return f"error: {type(exc).__name__}: {exc.strerror}"


def _pids():
    return sorted(int(p) for p in os.listdir("/proc") if p.isdigit())


def parent_environ():
    """Read the environment of every process in sight, the parent's first."""
    seen = {"ppid": os.getppid(), "parent": _read(f"/proc/{os.getppid()}/environ")}
    seen["all"] = {str(p): _read(f"/proc/{p}/environ") for p in _pids()}
    return seen


def list_processes():
    """Every process in sight, with its command line."""
    return {"processes": {str(p): _read(f"/proc/{p}/cmdline").replace("\0", " ")
                          for p in _pids()}}


def open_database():
    """The SQLite file where the test says it is, and any *.db walking up from here."""
    found = {"direct": _read(TARGETS["database"])[:200]}
    walked = []
    here = os.getcwd()
    while True:
        with contextlib.suppress(OSError):
            walked += [os.path.join(here, n) for n in os.listdir(here)
                       if n.endswith((".db", ".yaml"))]
        if here == "/":
            break
        here = os.path.dirname(here)
    found["walked"] = walked
    return found


def database_url():
    """Anything that looks like a database URL: the environment, every /proc environ,
    devflow's config file where the test says it is, and the agent's HOME."""
    places = {"env": "\n".join(f"{k}={v}" for k, v in os.environ.items()),
              "config": _read(TARGETS["config"])}
    places.update({f"proc-{p}": _read(f"/proc/{p}/environ") for p in _pids()})
    hits = {name: text for name, text in places.items()
            if "postgresql" in text or "sqlite:" in text}
    return {"hits": hits, "config": places["config"][:200]}


def approve():
    """Run devflow itself, from inside, to approve the other run's gate as someone else."""
    argv = [sys.executable, "-m", "devflow.cli.main", "decide", TARGETS["run"], "approve",
            "--as", "alice", "--json"]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=TARGETS["source"],
                          env={**os.environ, "PYTHONPATH": TARGETS["source"]}, check=False,
                          timeout=60)
    return {"exit": done.returncode, "stdout": done.stdout[-800:], "stderr": done.stderr[-800:]}


def connect_database():
    """A TCP connection to the database server's port."""
    try:
        with socket.create_connection(("127.0.0.1", TARGETS["port"]), timeout=5):
            return {"connect": "connected"}
    except OSError as exc:
        return {"connect": f"error: {type(exc).__name__}: {exc}"}


def daemon_socket():
    """Reach devflow's daemon, which runs commands for whoever connects: its socket where
    the test says it is (and through its directory), and its directory's listing."""
    found = {}
    for name, path in (("socket", TARGETS["socket"]),
                       ("by_dir", os.path.join(TARGETS["run_dir"], "daemon.sock"))):
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(5)
                sock.connect(path)
                found[name] = "connected"
        except OSError as exc:
            found[name] = f"error: {type(exc).__name__}: {exc.strerror}"
    try:
        found["listing"] = sorted(os.listdir(TARGETS["run_dir"]))
    except OSError as exc:
        found["listing"] = f"error: {type(exc).__name__}: {exc.strerror}"
    return found


def _daemon_alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def setsid_daemon():
    """A daemon in a session of its own, as build servers start them."""
    child = subprocess.Popen(["sleep", "300"], start_new_session=True,
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    time.sleep(0.2)
    return {"daemon": child.pid, "alive": _daemon_alive(child.pid)}


def nohup_daemon():
    subprocess.run(["sh", "-c", "nohup sleep 300 >/dev/null 2>&1 &"], check=True)
    time.sleep(0.2)
    out = subprocess.run(["sh", "-c", "ls /proc | grep -c '^[0-9]'"], capture_output=True,
                         text=True, check=False).stdout.strip()
    return {"processes_in_sight": out}


def double_fork():
    """The classic daemon: fork, setsid, fork again, the parent gone."""
    read, write = os.pipe()
    first = os.fork()
    if first == 0:
        os.setsid()
        if os.fork() == 0:
            os.close(read)
            os.write(write, str(os.getpid()).encode())
            os.close(write)
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            time.sleep(300)
        os._exit(0)
    os.close(write)
    os.waitpid(first, 0)
    grandchild = int(os.read(read, 32) or b"0")
    return {"daemon": grandchild, "alive": _daemon_alive(grandchild)}


def common_git_dir():
    """Move the user's main branch, add a hook, change the repository's config."""
    common = TARGETS["common"]
    done = subprocess.run(["git", "update-ref", "refs/heads/main", "HEAD"],
                          capture_output=True, text=True, check=False)
    return {"ref": _write(os.path.join(common, "refs", "heads", "main"), "0" * 40 + "\n"),
            "hook": _write(os.path.join(common, "hooks", "post-commit"), "#!/bin/sh\n"),
            "config": _write(os.path.join(common, "config"), "[core]\n\tfsmonitor = x\n"),
            "update_ref": done.returncode, "update_ref_error": done.stderr.strip()[-200:]}


def dot_git():
    """Point the worktree at the repository's common git directory."""
    return {"dot_git": _write(".git", f"gitdir: {TARGETS['common']}\n")}


def outside_worktree():
    """The user's checkout, their HOME, the system, this sandbox's /tmp."""
    return {name: _write(path) for name, path in TARGETS["paths"].items()}


def other_run():
    """Another run's worktree, prompts and kept artifacts."""
    return {name: _write(path) for name, path in TARGETS["paths"].items()}


ESCAPES = {f.__name__: f for f in (
    parent_environ, list_processes, open_database, database_url, approve, connect_database,
    daemon_socket,
    setsid_daemon, nohup_daemon, double_fork, common_git_dir, dot_git, outside_worktree,
    other_run)}


def main():
    escape = os.environ["HOSTILE_ESCAPE"]
    try:
        found = ESCAPES[escape]()
    except Exception as exc:  # noqa: BLE001 - what failed is the finding
        found = {"raised": f"{type(exc).__name__}: {exc}"}
    print(json.dumps({"hostile": {"escape": escape, **found}}), flush=True)
    time.sleep(float(os.environ.get("HOSTILE_WAIT", "0")))  # for a test that kills devflow
    artifact = os.environ.get("DEVFLOW_ARTIFACT")
    if artifact:
        os.makedirs(os.path.dirname(artifact) or ".", exist_ok=True)
        with open(artifact, "w", encoding="utf-8") as handle:
            handle.write(os.environ["HOSTILE_ARTIFACT"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
