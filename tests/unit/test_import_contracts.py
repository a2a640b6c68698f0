"""The import contracts of pyproject.toml hold on the tree, and each one breaks when a
module makes the import it forbids.

A copy of the package gets one probe import per forbidden edge (every source and
forbidden module of each ``forbidden`` contract, a module outside each ``protected``
one importing it, a private module imported from outside its package, a lower layer
importing a higher one); ``lint-imports`` then runs on the copy and must list each
probe's import under the contract it breaks. A contract that could not be broken
would be kept whatever the code did. What import-linter cannot see, a private name
(``_name``) of one part used in another, is checked here from the syntax tree.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")


#: the "never" lines of the design (DESIGN.md, docs/architecture.md): each must be an
#: import some contract forbids, so a contract cannot be loosened past them unnoticed
NEVER = {
    *(("devflow.cli", m) for m in ("devflow.engine", "devflow.store", "devflow.git",
                                    "devflow.worktree", "subprocess")),
    *((m, "devflow.store") for m in ("devflow.backends", "devflow.worktree",
                                      "devflow.artifacts", "devflow.report")),
    *((m, lib) for m in ("devflow.cli", "devflow.app", "devflow.engine", "devflow.backends")
      for lib in ("sqlalchemy", "alembic", "psycopg")),
    ("devflow", "git"),
}


def _contracts() -> list[dict[str, Any]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    contracts: list[dict[str, Any]] = config["tool"]["importlinter"]["contracts"]
    return contracts


def _lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT), "--no-cache"], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False)


def _file_of(module: str, package: Path) -> Path:
    """The file of ``module`` in the copy (a package's ``__init__.py``)."""
    path = package.parent.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _expand(expression: str, package: Path) -> list[str]:
    """The modules a contract's module expression names (``pkg.*``: its children)."""
    if not expression.endswith(".*"):
        return [expression]
    parent = expression[:-2]
    folder = package.parent.joinpath(*parent.split("."))
    return sorted(f"{parent}.{p.stem}" for p in folder.glob("*.py") if p.stem != "__init__")


def _probes(package: Path) -> dict[str, set[tuple[str, str]]]:
    """Contract name -> the imports (importer, imported) that must break it."""
    wanted: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for contract in _contracts():
        name, kind = str(contract["name"]), contract["type"]
        if kind == "forbidden":
            for source in contract["source_modules"]:
                for forbidden in contract["forbidden_modules"]:
                    wanted[name].add((source, forbidden))
        elif kind == "protected":
            ignored = set(contract.get("ignore_imports", []))
            for expression in contract["protected_modules"]:
                for module in _expand(expression, package):
                    if f"devflow.app -> {module}" not in ignored:
                        wanted[name].add(("devflow.app", module))
        elif kind == "private_modules":
            (package / "store" / "_probe.py").write_text('"""A private module."""\n')
            wanted[name].add(("devflow.app", "devflow.store._probe"))
        elif kind == "layers":
            for lower, higher in (("devflow.errors", "devflow.app"),
                                  ("devflow.store", "devflow.engine"),
                                  ("devflow.engine", "devflow.cli")):
                wanted[name].add((lower, higher))
    return wanted


def test_the_tree_keeps_every_contract() -> None:
    done = _lint(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"Contracts: {len(_contracts())} kept, 0 broken." in done.stdout


def test_each_contract_breaks_on_an_import_it_forbids(tmp_path: Path) -> None:
    package = tmp_path / "devflow"
    shutil.copytree(ROOT / "devflow", package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    wanted = _probes(package)
    assert NEVER - set().union(*wanted.values()) == set()
    by_file: dict[Path, list[str]] = defaultdict(list)
    for edges in wanted.values():
        for importer, imported in edges:
            by_file[_file_of(importer, package)].append(f"import {imported}  # probe\n")
    for path, lines in by_file.items():
        with path.open("a", encoding="utf-8") as file:
            file.writelines(sorted(set(lines)))
    done = _lint(tmp_path)
    assert done.returncode != 0, done.stdout
    broken = _broken_sections(done.stdout, [str(c["name"]) for c in _contracts()])
    assert sorted(broken) == sorted(wanted), done.stdout
    missing = {name: sorted(f"{a} -> {b}" for a, b in edges
                            if not re.search(rf"^-?\s*{re.escape(a)} -> {re.escape(b)}\b",
                                             broken[name], re.MULTILINE))
               for name, edges in wanted.items()}
    assert {name: edges for name, edges in missing.items() if edges} == {}, done.stdout


def _broken_sections(text: str, names: list[str]) -> dict[str, str]:
    """The report of each broken contract: contract name -> what lint-imports said."""
    _, _, report = text.partition("Broken contracts")
    starts = sorted((m.start(), name) for name in names
                    for m in re.finditer(rf"^{re.escape(name)}\n-+\n", report, re.MULTILINE))
    return {name: report[start:(starts[i + 1][0] if i + 1 < len(starts) else len(report))]
            for i, (start, name) in enumerate(starts)}


def _part(module: str) -> str:
    """The part a module belongs to: its package below devflow, or itself."""
    return ".".join(module.split(".")[:2])


def test_no_module_uses_another_parts_private_names() -> None:
    """What import-linter cannot see: ``from devflow.x import _name`` or ``x._name`` in a
    module of another part (a part: a package below devflow, or a top-level module)."""
    import ast

    found = []
    for path in sorted((ROOT / "devflow").rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        aliases: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("devflow"):
                for name in node.names:
                    target = f"{node.module}.{name.name}"
                    aliases[name.asname or name.name] = target
                    if name.name.startswith("_") and _part(str(node.module)) != _part(module):
                        found.append(f"{module}: from {node.module} import {name.name}")
            elif isinstance(node, ast.Import):
                for name in node.names:
                    if name.name.startswith("devflow") and name.asname:
                        aliases[name.asname] = name.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and node.attr.startswith("_")
                    and not node.attr.startswith("__")
                    and _part(aliases[node.value.id]) != _part(module)):
                found.append(f"{module}: {node.value.id}.{node.attr}")
    assert found == []
