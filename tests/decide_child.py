"""One process of the concurrent-decisions test: connect, wait for ``go`` on stdin, approve.

``python -m tests.decide_child HOME DATABASE_URL WORKSPACE RUN_ID TOKEN [APPROVAL_ID]`` prints
``ready`` once connected, then one JSON line with what the decision returned. The parent
writes ``go`` to every child's stdin once all are ready, so the decisions really race.
"""

from __future__ import annotations

import json
import sys


def main(argv: list[str]) -> int:
    from devflow.app import App
    from devflow.approvals import DecisionRequest
    from devflow.errors import DevflowError
    from devflow.settings import Settings

    home, url, workspace, run_id, token, *rest = argv
    app = App(Settings.load(env={}, home=home, database_url=url, workspace=workspace,
                            actor="tester"))
    try:
        app.store.runs.get(run_id)  # connected and warm before the race
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            return 2
        try:
            result = app.decide(DecisionRequest(
                run_id=run_id, action="approve", actor="tester", token=token,
                approval_id=int(rest[0]) if rest else None))
            body = {"ok": True, "decision": result.decision.id, "replayed": result.replayed,
                    "outcome": dict(result.outcome)}
        except DevflowError as exc:
            body = {"ok": False, "code": str(exc.code), "message": exc.message}
        print(json.dumps(body), flush=True)
        return 0
    finally:
        app.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
