"""The demo's sample project: a small Python package with a flaw to fix, made as a git
repository, and the request that starts ``development@1`` on it with scripted agents."""

from __future__ import annotations

import textwrap
from pathlib import Path

from devflow import git
from devflow.errors import Code, DevflowError
from devflow.requests import StartRequest

_FILES = {
    "README.md": """\
        # textkit

        Small text helpers used by the export tool.

        ## Usage

            from textkit.slug import slugify
            slugify("Hello, World!")  # "hello-world"
        """,
    "textkit/__init__.py": '"""Small text helpers."""\n',
    "textkit/slug.py": """\
        import re


        def slugify(text: str) -> str:
            return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
        """,
    "tests/test_slug.py": """\
        from textkit.slug import slugify


        def test_basic():
            assert slugify("Hello, World!") == "hello-world"
        """,
}
_REQUIREMENTS = """\
Export file names are built from document titles with textkit.slug.slugify.
Titles with accents lose their letters (\"Café déjà vu\" becomes \"caf-d-j-vu\")
and very long titles make file names the file system refuses.

- Transliterate accented Latin letters to ASCII before slugifying.
- Add a max_length parameter (default 80) that cuts at a word boundary.
- Keep slugify("Hello, World!") == "hello-world".
"""


def _sample_repo(directory: Path) -> tuple[Path, bool]:
    """The sample project under ``directory``: made there, or the one an earlier demo made
    (True); anything else already at that place is left alone: an error."""
    repo = directory / "textkit"
    if repo.exists():
        made = git.run(["log", "-1", "--format=%s", "main"], repo, check=False) \
            if repo.is_dir() else None
        if made is not None and made.returncode == 0 and made.stdout.strip() == _SUBJECT:
            return repo, True
        raise DevflowError(Code.INVALID_INPUT, f"{repo} exists and is not devflow's sample "
                           "project", hint="choose another --dir (the demo makes DIR/textkit)")
    repo.mkdir(parents=True)
    for name, body in _FILES.items():
        path = repo / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(body), encoding="utf-8")
    git.run(["init", "--quiet", "--initial-branch=main"], repo)
    git.run(["add", "--all"], repo)
    git.run(["commit", "--quiet", "--no-verify", "-m", _SUBJECT], repo, env=git.AUTHOR)
    return repo, False

_SUBJECT = "textkit: slugify"


def start_request(directory: Path, actor: str) -> tuple[StartRequest, bool]:
    """The demo's run on the sample project under ``directory`` (made there, or reused:
    True), its agents scripted: the spec's first attempt invalid (to show a repair), the
    planner adding one follow-up phase."""
    repo, reused = _sample_repo(directory)
    return StartRequest(
        repo=repo, base="main", template="development@1", requirements=_REQUIREMENTS,
        objective="Readable, bounded export file names", actor=actor,
        binds={"planner": "scripted-planner", "implementer": "scripted-implementer",
               "reviewer": "scripted-reviewer"},
        scenarios={"spec": "invalid-then-ok", "plan": "plan:1"}), reused
