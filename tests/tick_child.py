"""One process of the concurrent-ticks test: connect, wait for ``go`` on stdin, evaluate.

``python -m tests.tick_child HOME DATABASE_URL WORKSPACE TRIGGERS_DIR NOW`` prints ``ready``
once connected, then one JSON line with the outcomes of its evaluation, made at ``NOW``
(an ISO time: the test's clock). The parent writes ``go`` to every child's stdin once
all are ready, so the evaluations really race.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime


def main(argv: list[str]) -> int:
    from devflow.app import App
    from devflow.settings import Settings

    home, url, workspace, triggers, now = argv
    moment = datetime.fromisoformat(now)
    app = App(Settings.load(env={}, home=home, database_url=url, workspace=workspace,
                            actor="tester", triggers_dirs=[triggers],
                            max_active_per_branch=5),
              clock=lambda: moment)
    try:
        app.catalog.triggers()  # definitions loaded and the database warm before the race
        app.store.triggers.states()
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            return 2
        outcomes = app.evaluate_triggers()
        print(json.dumps([o.to_json() for o in outcomes]), flush=True)
        return 0
    finally:
        app.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
