"""`devflow demo --dir D`, the README's first command, as a subprocess on both databases."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

from devflow import git
from devflow.catalog import Catalog, Dirs

Cli = Callable[..., subprocess.CompletedProcess[str]]


def test_demo_ends_with_a_valid_report_and_checkpoint_commits(cli: Cli,
                                                              tmp_path: Path) -> None:
    result = cli("demo", "--dir", str(tmp_path / "demo"), check=0, timeout=240)
    found = re.search(r"^demo finished: run (\S+) completed$", result.stdout, re.MULTILINE)
    assert found, result.stdout
    assert f"devflow report {found.group(1)}" in result.stdout
    report_path = Path(json.loads(cli("report", found.group(1), "--json", "--path",
                                      check=0).stdout)["path"])
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert Catalog(Dirs.with_builtins()).schemas.validate("common/final-report@1", report) == []
    assert report["run"]["state"] == "completed"
    assert (report_path.parent / "report.md").is_file()

    run_id = report["run"]["id"]
    assert re.search(rf"^\s*run\s+{re.escape(run_id)}\s*$", result.stdout, re.MULTILINE)
    repo = tmp_path / "demo" / "textkit"
    assert Path(report["run"]["repo"]) == repo.resolve()
    branch = report["run"]["branch"]
    assert branch == f"devflow/{run_id}/main"
    assert f"branch    {branch}" in result.stdout
    subjects = git.out(["log", "--reverse", "--format=%s", f"main..{branch}"], repo).splitlines()
    # the spec's first attempt is invalid on purpose; the planner adds one follow-up phase
    assert subjects == ["devflow(spec): attempt 2", "devflow(plan): attempt 1",
                        "devflow(implement): attempt 1", "devflow(review): attempt 1",
                        "devflow(plan-step-1): attempt 1"]
    assert [c["subject"] for c in report["git"]["commits"]] == subjects[::-1]
    assert [(v["phase"], v["attempt"]) for v in report["validation_errors"]] == [("spec", 1)]
    assert [a["gate"] for a in report["approvals"]] == ["spec_review", "final_review"]
    assert {d["actor"] for a in report["approvals"] for d in a["decisions"]} == {"demo"}
    # the main branch of the sample project is left as it was
    assert git.out(["log", "--format=%s", "main"], repo).splitlines() == ["textkit: slugify"]


def test_a_second_demo_in_the_same_dir_reuses_it_and_says_where_a_gate_waits(
        cli: Cli, tmp_path: Path) -> None:
    first = cli("demo", "--dir", str(tmp_path / "demo"), "--json", check=0, timeout=240)
    assert json.loads(first.stdout)["run"]["state"] == "completed"
    waiting = cli("demo", "--dir", str(tmp_path / "demo"), "--no-auto-approve", check=0,
                  timeout=240)
    assert "made by an earlier demo" in waiting.stdout
    assert "demo finished" not in waiting.stdout
    found = re.search(r"^demo: the run waits at gate spec_review", waiting.stdout, re.MULTILINE)
    assert found, waiting.stdout
    run_id = re.search(r"^run (\S+)  awaiting_approval", waiting.stdout, re.MULTILINE)
    assert run_id, waiting.stdout
    assert f"approve {run_id.group(1)}" in waiting.stdout  # how to decide
    assert "Traceback" not in waiting.stderr
    # a directory holding something else under textkit is left alone
    other = tmp_path / "other" / "textkit"
    other.mkdir(parents=True)
    (other / "mine.txt").write_text("mine\n", encoding="utf-8")
    refused = cli("demo", "--dir", str(tmp_path / "other"), "--json", check=2)
    assert json.loads(refused.stdout)["error"]["code"] == "invalid_input"
    assert sorted(p.name for p in other.iterdir()) == ["mine.txt"]
