"""Malformed template and persona files, each with the error code and the place it must report.

Shared by the unit tests (parsed in process) and the acceptance tests (``devflow templates
validate`` as a subprocess). The line a problem must be reported at is marked ``# <-`` in
the YAML text itself, so the expectation cannot drift from the text.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

GOOD_TEMPLATE = textwrap.dedent("""\
    name: custom
    version: 1
    description: A small workflow for tests.
    roles:
      implementer:
        description: Changes the code.
      reviewer: {}
    phases:
      - key: implement
        title: Implement the change
        roles: [implementer]
        artifact:
          path: .devflow/implementation.json
          schema: dev/implementation@1
        timeout: 30m
        instructions: Make the change.
      - key: review
        roles: [reviewer]
        artifact:
          path: .devflow/review.json
          schema: dev/review@1
        gates: [final]
        instructions: Review the change.
    gates:
      final:
        message: Read the review.
        timeout: 24h
        warn_before: 1h
    """)

GOOD_PERSONA = textwrap.dedent("""\
    name: custom-implementer
    version: 1
    description: A scripted implementer for tests.
    roles: [implementer]
    backend: scripted
    options:
      scenario: ok
    prompt: You implement.
    """)


def alias_bomb(name: str = "custom-implementer", levels: int = 9) -> str:
    """A persona whose free-form ``options.scenarios`` expand to 9**levels strings, in
    0.7 KB: what checking the options, hashing or validating it would expand without end."""
    lines = ["    l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"    l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]"
              for i in range(1, levels)]
    return GOOD_PERSONA.replace("custom-implementer", name).replace(
        "options:\n  scenario: ok\n",
        "options:\n  scenario: ok\n  scenarios:\n" + "\n".join(lines) + "\n")


@dataclass(frozen=True)
class Case:
    name: str
    kind: str          # template | persona
    text: str
    code: str
    pointer: str | None  # JSON pointer the error must name (None: YAML syntax errors)

    @property
    def line(self) -> int:
        marked = [i for i, line in enumerate(self.text.splitlines(), 1) if "# <-" in line]
        assert len(marked) == 1, f"case {self.name}: mark exactly one line with '# <-'"
        return marked[0]

    def write(self, directory: Path) -> Path:
        path = directory / f"{self.name}.yaml"
        path.write_text(self.text, encoding="utf-8")
        return path


def _swap(base: str, old: str, new: str) -> str:
    assert base.count(old) == 1, old
    return base.replace(old, new)


T = GOOD_TEMPLATE
CASES = [
    Case("bad-yaml", "template",
         _swap(T, "    roles: [reviewer]\n", "    roles: [reviewer\n    foo: bar  # <-\n"),
         "yaml_invalid", None),
    Case("bad-yaml-tab", "template",
         _swap(T, "description: A small workflow for tests.\n",
               "description: A small workflow for tests.\n\tbroken: yes  # <-\n"),
         "yaml_invalid", None),
    Case("unknown-schema", "template",
         _swap(T, "schema: dev/implementation@1\n", "schema: dev/nothing-like-it@1  # <-\n"),
         "unknown_schema", "/phases/0/artifact/schema"),
    Case("unknown-role", "template",
         _swap(T, "roles: [reviewer]\n", "roles: [auditor]  # <-\n"),
         "unknown_role", "/phases/1/roles/0"),
    Case("duplicate-phase", "template",
         _swap(T, "  - key: review\n", "  - key: implement  # <-\n"),
         "duplicate_phase", "/phases/1/key"),
    Case("path-escape-dotdot", "template",
         _swap(T, "path: .devflow/review.json\n", "path: ../outside/review.json  # <-\n"),
         "path_escape", "/phases/1/artifact/path"),
    Case("path-escape-absolute", "template",
         _swap(T, "path: .devflow/review.json\n", "path: /etc/review.json  # <-\n"),
         "path_escape", "/phases/1/artifact/path"),
    Case("path-escape-inner-dotdot", "template",
         _swap(T, "path: .devflow/review.json\n", "path: .devflow/../../review.json  # <-\n"),
         "path_escape", "/phases/1/artifact/path"),
    Case("missing-field", "template",
         # the second phase loses its roles: the error is on the phase object
         _swap(T, "  - key: review\n    roles: [reviewer]\n", "  - key: review  # <-\n"),
         "definition_invalid", "/phases/1"),
    Case("missing-top-field", "template",
         # reported on the document itself, at the line of its first node
         _swap(T, "name: custom\nversion: 1\n", "name: custom  # <-\n"),
         "definition_invalid", ""),
    Case("wrong-type", "template",
         _swap(T, "roles: [implementer]\n", "roles: implementer  # <-\n"),
         "definition_invalid", "/phases/0/roles"),
    Case("wrong-type-repairs", "template",
         _swap(T, "timeout: 30m\n", "timeout: 30m\n    max_repairs: many  # <-\n"),
         "definition_invalid", "/phases/0/max_repairs"),
    Case("unknown-field", "template",
         # reported on the phase object that holds the unexpected key
         _swap(_swap(T, "title: Implement the change\n",
                     "title: Implement the change\n    colour: blue\n"),
               "  - key: implement\n", "  - key: implement  # <-\n"),
         "definition_invalid", "/phases/0"),
    Case("undefined-gate", "template",
         _swap(T, "gates: [final]\n", "gates: [final, security]  # <-\n"),
         "unknown_gate", "/phases/1/gates/1"),
    Case("bad-duration", "template",
         _swap(T, "timeout: 30m\n", "timeout: half an hour  # <-\n"),
         "bad_duration", "/phases/0/timeout"),
    Case("bad-gate-duration", "template",
         _swap(T, "timeout: 24h\n", "timeout: 24 hours  # <-\n"),
         "bad_duration", "/gates/final/timeout"),
    Case("bad-persona-backend", "persona",
         _swap(GOOD_PERSONA, "backend: scripted\n", "backend: gpt-shell  # <-\n"),
         "definition_invalid", "/backend"),
]
