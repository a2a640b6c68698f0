"""scripts/bench: devflow's own cost as ratios against raw git and raw database commits.

Every figure is the median of several runs, with min and max; ratios compare figures
taken in the same run, so they hold on a noisy machine. Sections: start, engine,
decide, throughput, scale, memory, cli (read commands and a decision as whole
processes beside the interpreter's floors), gated (a two-step gated run with the real
Claude Code against a fake model server: devflow's share of its wall time). `--quick`
shrinks every section (a smoke test of the benchmark itself, not figures to quote).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import anchors
import cli
import decisions
import engine
import gated
import memory
import scale
import startup
import throughput
from common import Figure, Report, default_scratch, pg_database, scratch, write_templates
from rich.console import Console
from rich.table import Table

from devflow.store import Database, migrate

SECTIONS = ("start", "engine", "decide", "throughput", "scale", "memory", "cli", "gated")


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections of: {', '.join(SECTIONS)}")
    parser.add_argument("--scratch", type=Path, default=default_scratch(),
                        help="where the repositories, workspaces and SQLite files go, in a "
                             "directory removed afterwards (default: %(default)s)")
    args = parser.parse_args()
    only = set(args.only.split(","))
    if unknown := only - set(SECTIONS):
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    report = Report()
    started = time.perf_counter()
    with scratch(args.scratch) as tmp:
        root = Path(tmp)
        templates = write_templates(root / "templates")
        anchors.cpu(report, "at the start")
        _ratios(report, root, templates, only, args.quick)
        _loads(report, root, templates, only, args.quick)
        _processes(report, root, templates, only, args.quick)
        anchors.cpu(report, "at the end")
    elapsed = time.perf_counter() - started
    if args.json:
        print(json.dumps({"elapsed_seconds": round(elapsed, 1), "quick": args.quick,
                          "scratch": str(args.scratch.resolve()),
                          "figures": [f.to_json() for f in report.figures]}, indent=2))
    else:
        _table(report.figures, elapsed, args.scratch.resolve())
    return 0


def _ratios(report: Report, root: Path, templates: Path, only: set[str], q: bool) -> None:
    """The sections measured against an anchor taken in the same run."""
    if not only & {"start", "engine", "decide"}:
        return
    sqlite_url = f"sqlite:///{root / 'bench.db'}"
    with pg_database() as pg_url:
        _prepare(sqlite_url)
        anchor = {"sqlite": anchors.SessionCommit(sqlite_url),
                  "postgresql": anchors.SessionCommit(pg_url)}
        try:
            _paired(report, root, templates, only, q, anchor, sqlite_url, pg_url)
        finally:
            for each in anchor.values():
                each.close()


def _paired(report: Report, root: Path, templates: Path, only: set[str], q: bool,
            anchor: dict[str, anchors.SessionCommit], sqlite_url: str, pg_url: str) -> None:
    urls = (("sqlite", sqlite_url), ("postgresql", pg_url))
    if "start" in only:
        _say("start")
        startup.run(report, sqlite_url, root / "start", 5 if q else 15, templates)
    if "engine" in only:
        _say("engine")
        for label, url in urls:
            engine.per_phase(report, url, root / "engine", label, anchor[label],
                             2 if q else 8, templates)
        engine.validation(report, sqlite_url, root)
    if "decide" in only:
        _say("decide")
        for label, url in urls:
            decisions.library(report, url, root, label, anchor[label], 10 if q else 60,
                              templates)
        decisions.cli(report, sqlite_url, root, 5 if q else 15, templates)
        decisions.concurrent(report, pg_url, root, 10 if q else 50, templates)


def _loads(report: Report, root: Path, templates: Path, only: set[str], q: bool) -> None:
    """The sections that load the database: throughput, scale, memory."""
    if "throughput" in only:
        _say("throughput")
        throughput.run(report, root / "tp", 20 if q else 200, 20 if q else 60, templates)
    if "scale" in only:
        _say("scale")
        runs, per_run = (1000, 10) if q else (10_000, 100)
        url = f"sqlite:///{root / 'scale.db'}"
        _prepare(url)
        scale.fill(url, runs, per_run)
        scale.measure(report, url, root, "sqlite", runs)
        with pg_database() as url:
            scale.fill(url, runs, per_run)
            scale.measure(report, url, root, "postgresql", runs)
    if "memory" in only:
        _say("memory")
        with pg_database() as url:
            memory.run(report, url, root / "memory", 10 if q else 50, templates)


def _processes(report: Report, root: Path, templates: Path, only: set[str], q: bool) -> None:
    """The sections that time whole devflow processes: cli, gated."""
    if "cli" in only:
        _say("cli")
        url = f"sqlite:///{root / 'cli.db'}"
        with pg_database() as pg_url:
            cli.run(report, (("sqlite", url), ("postgresql", pg_url)), root, 3 if q else 15,
                    templates)
    if "gated" in only:
        _say("gated")
        gated.run(report, root / "gated", 1 if q else 5)


def _prepare(url: str) -> None:
    db = Database(url)
    migrate.upgrade(db)
    db.dispose()


def _say(section: str) -> None:
    print(f"bench: {section} ...", file=sys.stderr, flush=True)
    # Let the disk settle: what the last section wrote and deleted is flushed (and, on a
    # file system mounted with discard, its freed blocks trimmed) before this one times.
    os.sync()


def _table(figures: list[Figure], elapsed: float, where: Path) -> None:
    table = Table(title=f"devflow bench ({elapsed:.0f} s, in {where})", show_lines=False)
    for header in ("section", "figure", "median", "min", "max", "unit", "target", "ok", "note"):
        table.add_column(header)
    for f in figures:
        s = f.stat
        table.add_row(f.section, f.name, f"{f.shown:.2f}", f"{s.low:.2f}" if s else "",
                      f"{s.high:.2f}" if s else "", f.unit, f.target,
                      "" if f.ok is None else ("yes" if f.ok else "NO"), f.note)
    Console(width=200).print(table)


if __name__ == "__main__":
    sys.exit(main())
