"""Memory: a worker's peak RSS while it drives 50 runs at once."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from common import Figure, Report, make_app, start_request, synthetic_repo


def run(report: Report, url: str, root: Path, runs: int, templates: Path) -> None:
    repo = synthetic_repo(root / "mem", 20)
    app = make_app(url, root, templates_dirs=(templates,))
    scenarios = {f"p{i}": "slow:2" for i in range(5)}
    for i in range(runs):
        app.start(start_request(repo, "bench5@1", run_id=f"m{i}", scenarios=scenarios),
                  detach=True)
    app.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEVFLOW_")}
    env.update({"DEVFLOW_HOME": str(root / "home"), "DEVFLOW_DATABASE_URL": url,
                "DEVFLOW_WORKSPACE": str(root / "ws"), "DEVFLOW_TEMPLATES_DIR": str(templates)})
    worker = subprocess.Popen([sys.executable, "-m", "devflow.cli.main", "worker", "--once",
                               "--concurrency", str(runs), "--poll", "0.1"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0
    while worker.poll() is None:
        try:
            status = Path(f"/proc/{worker.pid}/status").read_text()
        except OSError:
            break
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                peak = max(peak, int(line.split()[1]))
        time.sleep(0.1)
    worker.wait()
    report.add(Figure("memory", f"worker peak RSS driving {runs} runs at once", "MiB",
                      value=peak / 1024, note="the worker process alone, agents excluded"))
