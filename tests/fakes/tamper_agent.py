"""A hostile agent for the git tests: it tries to make devflow's git write outside the
run's branch, then does its work like an honest one.

Run as ``python -I tamper_agent.py`` by a ``command`` persona (standard library only).
On the attempts listed in ``TAMPER_ON`` (default ``1``) it does what ``TAMPER`` says,
with plain git in its worktree (nothing stops it: no sandbox in these tests):

- ``dot-git``: rewrites the worktree's ``.git`` file to ``gitdir: <common git dir>``, so
  a git that trusts the file works on the user's main worktree, index and HEAD;
- ``head-to-main``: points HEAD at ``refs/heads/main`` (``git symbolic-ref``);
- ``self-commit``: commits its change onto the run's branch by itself;
- ``branch-to-main``: moves the run's branch to the user's ``main``.

Every attempt then appends a line to ``README.md`` and copies
``$STUB_DIR/artifacts/<basename of $DEVFLOW_ARTIFACT>`` to ``$DEVFLOW_ARTIFACT``; it
logs what it did to ``$STUB_DIR/tamper.log``.
"""

import os
import shutil
import subprocess
import sys


def git(*args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update({"GIT_AUTHOR_NAME": "agent", "GIT_AUTHOR_EMAIL": "agent@example.com",
                "GIT_COMMITTER_NAME": "agent", "GIT_COMMITTER_EMAIL": "agent@example.com"})
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True,
                          env=env).stdout.strip()


def tamper(how: str) -> None:
    if how == "dot-git":
        common = os.path.abspath(git("rev-parse", "--git-common-dir"))
        with open(".git", "w", encoding="utf-8") as handle:
            handle.write(f"gitdir: {common}\n")
    elif how == "head-to-main":
        git("symbolic-ref", "HEAD", "refs/heads/main")
    elif how == "self-commit":
        with open("README.md", "a", encoding="utf-8") as handle:
            handle.write("committed by the agent itself\n")
        git("commit", "--quiet", "--no-verify", "-am", "the agent commits by itself")
    elif how == "branch-to-main":
        branch = git("symbolic-ref", "HEAD")
        git("update-ref", branch, git("rev-parse", "refs/heads/main"))
    else:
        raise SystemExit(f"unknown TAMPER {how!r}")


def main() -> int:
    work = os.environ["STUB_DIR"]
    attempt = os.environ.get("DEVFLOW_ATTEMPT", "0")
    how = os.environ.get("TAMPER", "")
    with open(os.path.join(work, "tamper.log"), "a", encoding="utf-8") as log:
        if how and attempt in os.environ.get("TAMPER_ON", "1").split(","):
            tamper(how)
            log.write(f"{os.environ.get('DEVFLOW_PHASE')} {attempt} {how}\n")
        else:
            log.write(f"{os.environ.get('DEVFLOW_PHASE')} {attempt} honest\n")
    with open("README.md", "a", encoding="utf-8") as handle:
        handle.write(f"attempt {attempt}\n")
    artifact = os.environ.get("DEVFLOW_ARTIFACT")
    if artifact:
        source = os.path.join(work, "artifacts", os.path.basename(artifact))
        os.makedirs(os.path.dirname(artifact) or ".", exist_ok=True)
        shutil.copyfile(source, artifact)
    return 0


if __name__ == "__main__":
    sys.exit(main())
