"""A stub agent for the command backend's tests: records what it was given, writes the artifact.

Run as ``python -I stub_agent.py ARGS...`` (standard library only). ``STUB_DIR`` (from the
persona's ``env.set``) is where it works:

- it writes ``STUB_DIR/calls/<phase>-<attempt>.json``: its argv, environment, working
  directory and standard input;
- it copies ``STUB_DIR/artifacts/<basename of $DEVFLOW_ARTIFACT>`` to ``$DEVFLOW_ARTIFACT``;
- ``STUB_SAY`` is printed on stdout and stderr (a canary, say); ``STUB_SLEEP`` seconds
  are slept first, with a child process doing the same (for timeouts).
"""

import json
import os
import shutil
import subprocess
import sys
import time


def main() -> int:
    work = os.environ["STUB_DIR"]
    phase, attempt = os.environ.get("DEVFLOW_PHASE", "x"), os.environ.get("DEVFLOW_ATTEMPT", "0")
    stdin = "" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read()
    os.makedirs(os.path.join(work, "calls"), exist_ok=True)
    with open(os.path.join(work, "calls", f"{phase}-{attempt}.json"), "w",
              encoding="utf-8") as handle:
        json.dump({"argv": sys.argv[1:], "env": dict(os.environ), "cwd": os.getcwd(),
                   "stdin": stdin, "pid": os.getpid()}, handle)
    if os.environ.get("STUB_SAY"):
        print(os.environ["STUB_SAY"], flush=True)
        print(os.environ["STUB_SAY"], file=sys.stderr, flush=True)
    if os.environ.get("STUB_SLEEP"):
        child = subprocess.Popen([sys.executable, "-c",
                                  f"import time; time.sleep({os.environ['STUB_SLEEP']})"])
        with open(os.path.join(work, "calls", f"{phase}-{attempt}.child"), "w",
                  encoding="utf-8") as handle:
            handle.write(str(child.pid))
        time.sleep(float(os.environ["STUB_SLEEP"]))
    artifact = os.environ.get("DEVFLOW_ARTIFACT")
    if artifact:
        source = os.path.join(work, "artifacts", os.path.basename(artifact))
        os.makedirs(os.path.dirname(artifact) or ".", exist_ok=True)
        shutil.copyfile(source, artifact)
    return 0


if __name__ == "__main__":
    sys.exit(main())
