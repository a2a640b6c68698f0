"""Concurrent `devflow run start` processes against one PostgreSQL database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devflow import git
from devflow.settings import Settings
from tests.integration.helpers import (
    QUICK_CLI_BINDS,
    branches,
    popen_cli,
    requirements_file,
    worktrees,
)

pytestmark = [pytest.mark.postgresql_only, pytest.mark.slow]


@pytest.fixture
def db_url(pg_url: str) -> str:
    """This module runs on PostgreSQL only."""
    return pg_url


def _start_all(settings: Settings, repo: Path, tmp_path: Path,
               bases: list[str]) -> list[tuple[int, str, str]]:
    requirements = str(requirements_file(tmp_path))
    procs = [popen_cli(settings, "run", "start", "--repo", str(repo), "--base", base,
                       "--template", "quick@1", "--requirements", requirements,
                       *QUICK_CLI_BINDS, "--detach", "--json") for base in bases]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        results.append((proc.returncode, out, err))
    return results


def test_twenty_start_processes_on_one_branch_let_exactly_one_through(
        settings: Settings, repo: Path, tmp_path: Path) -> None:
    results = _start_all(settings, repo, tmp_path, ["main"] * 20)
    codes = sorted(code for code, _, _ in results)
    assert codes == [0] + [3] * 19, [(c, o, e[-500:]) for c, o, e in results if c not in (0, 3)]
    (winner,) = [json.loads(out)["run"] for code, out, _ in results if code == 0]
    assert winner["state"] == "bound"
    for code, out, _ in results:
        if code == 3:
            error = json.loads(out)["error"]
            assert error["code"] == "active_run_exists"
            assert winner["id"] in error["message"]
    assert [b for b in branches(repo) if b.startswith("devflow/")] == [winner["branch"]]
    assert len(worktrees(repo)) == 2


def test_eight_start_processes_on_eight_branches_all_get_their_worktrees(
        settings: Settings, repo: Path, tmp_path: Path) -> None:
    for i in range(8):
        git.run(["branch", f"b{i}", "main"], repo)
    results = _start_all(settings, repo, tmp_path, [f"b{i}" for i in range(8)])
    assert [code for code, _, _ in results] == [0] * 8, [e[-500:] for _, _, e in results]
    runs = [json.loads(out)["run"] for _, out, _ in results]
    assert sorted(r["base"] for r in runs) == [f"b{i}" for i in range(8)]
    registered = {p.resolve() for p in worktrees(repo)}
    assert len(registered) == 9
    for run in runs:
        tree = Path(run["worktree"])
        assert tree.resolve() in registered
        assert git.out(["rev-parse", "--abbrev-ref", "HEAD"], tree) == run["branch"]
        assert git.out(["rev-parse", "HEAD"], tree) == git.out(["rev-parse", "main"], repo)
