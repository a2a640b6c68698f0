"""Concurrent starts through the library (threads), on SQLite and PostgreSQL: starts on
different branches of one repository all get their worktrees; starts on one branch let
exactly one run through and refuse the others naming it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devflow import git
from devflow.app import App, RunView
from devflow.errors import Code, DevflowError
from tests.integration.helpers import branches, quick, worktrees


def _together(count: int, work: Callable[[int], Any]) -> list[Any]:
    """Run ``work(i)`` in ``count`` threads released at once; each result or exception."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def one(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work(i)
        except BaseException as exc:  # noqa: BLE001 - returned to the test
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(t.is_alive() for t in threads), "a start never returned"
    return results


def _branchy_repo(repo: Path, count: int) -> dict[str, str]:
    """Branches b0..b<count-1>, each with a commit of its own; their shas."""
    shas = {}
    for i in range(count):
        git.run(["checkout", "--quiet", "-b", f"b{i}", "main"], repo)
        (repo / f"only-on-b{i}.txt").write_text(f"{i}\n", encoding="utf-8")
        git.run(["add", "--all"], repo)
        git.run(["commit", "--quiet", "--no-verify", "-m", f"b{i}"], repo, env=git.AUTHOR)
        shas[f"b{i}"] = git.out(["rev-parse", "HEAD"], repo)
    git.run(["checkout", "--quiet", "main"], repo)
    return shas


def test_concurrent_starts_on_eight_branches_all_get_their_worktrees(app: App,
                                                                     repo: Path) -> None:
    shas = _branchy_repo(repo, 8)
    app.store, app.catalog  # noqa: B018 - build the shared parts before the threads race
    results = _together(8, lambda i: app.start(quick(repo, base=f"b{i}"), detach=True))
    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == []
    views: list[RunView] = results
    assert len({v.run.id for v in views}) == 8
    registered = {p.resolve() for p in worktrees(repo)}
    for i, view in enumerate(views):
        run = view.run
        tree = Path(run.worktree)
        assert run.base == f"b{i}" and run.base_sha == shas[f"b{i}"]
        assert run.state == "bound"
        assert tree.resolve() in registered
        assert git.out(["rev-parse", "HEAD"], tree) == shas[f"b{i}"]
        assert git.out(["rev-parse", "--abbrev-ref", "HEAD"], tree) == run.branch
        assert (tree / f"only-on-b{i}.txt").is_file()
    assert len(registered) == 9  # the repository itself and the eight runs
    assert sorted(b for b in branches(repo) if b.startswith("devflow/")) == sorted(
        v.run.branch for v in views)
    # and they run side by side to the end
    driven = _together(8, lambda i: app.drive(views[i].run.id))
    assert [r for r in driven if isinstance(r, BaseException)] == []
    assert [(view.run.state, drove) for view, drove in driven] == [("completed", True)] * 8


def test_twenty_concurrent_starts_on_one_branch_let_exactly_one_through(app: App,
                                                                        repo: Path) -> None:
    app.store, app.catalog  # noqa: B018 - as above
    results = _together(20, lambda i: app.start(quick(repo, run_id=f"race-{i:02d}"),
                                                detach=True))
    started = [r for r in results if isinstance(r, RunView)]
    refused = [r for r in results if isinstance(r, DevflowError)]
    assert len(started) == 1, results
    assert len(refused) == 19, [r for r in results if not isinstance(r, RunView | DevflowError)]
    winner = started[0].run.id
    for error in refused:
        assert error.code is Code.ACTIVE_RUN_EXISTS
        assert error.exit_code == 3
        assert winner in error.message
        assert error.details.get("active_runs") == [winner]
    assert [r.id for r in app.runs()] == [winner]
    assert len(worktrees(repo)) == 2
    assert [b for b in branches(repo) if b.startswith("devflow/")] == [f"devflow/{winner}/main"]
    # once the winner ends, the branch is free again
    view, drove = app.drive(winner)
    assert drove and view.run.state == "completed"
    again = app.start(quick(repo, run_id="after-race"), detach=True)
    assert again.run.state == "bound"
