"""The scripted agent's process: does what its script says, and nothing else.

Run by path with ``python -I -S`` (no devflow import and no site-packages, so it starts
in milliseconds); the parent computed everything: what to write where, what to edit,
how long to sleep, how to exit. Standard library only.
"""

import json
import os
import signal
import subprocess
import sys
import time


def say(kind: str, text: str, **more: object) -> None:
    print(json.dumps({"type": kind, "text": text, **more}), flush=True)


def main(argv: list[str]) -> int:
    if len(argv) > 1:  # a large script comes in a file
        with open(argv[1], encoding="utf-8") as handle:
            script = json.load(handle)
    else:
        script = json.loads(os.environ["DEVFLOW_SCRIPT"])
    say("start", script.get("note", "scripted agent"))
    if script.get("kill_parent"):
        # sandboxed, devflow's process is out of sight: the line asks it to die
        say("crash", "killing the process that started me", pid=script["kill_parent"])
        if os.getppid() == script["kill_parent"]:  # unsandboxed: do it here
            os.kill(os.getppid(), signal.SIGKILL)
        time.sleep(30)
    if script.get("hang"):
        subprocess.Popen(["sleep", "3600"])  # a child that must die with the group
        say("hang", "sleeping forever")
        while True:
            time.sleep(3600)
    if script.get("sleep"):
        say("sleep", f"working for {script['sleep']}s")
        time.sleep(float(script["sleep"]))
    edit = script.get("edit")
    if edit:
        target = edit["path"]
        os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
        with open(target, "a", encoding="utf-8") as handle:
            handle.write(edit["append"])
        say("edit", f"edited {target}")
    write = script.get("write")
    if write:
        os.makedirs(os.path.dirname(write["path"]) or ".", exist_ok=True)
        with open(write["path"], "w", encoding="utf-8") as handle:
            handle.write(write["content"])
        say("write", f"wrote {write['path']}")
    say("done", f"exit {script.get('exit', 0)}")
    return int(script.get("exit", 0))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
