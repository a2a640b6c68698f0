"""The ``aider`` preset: Aider run once, non-interactively, on the prompt file.

argv::

    aider --model MODEL --weak-model WEAK --editor-model EDITOR --message-file PROMPT
          --yes-always --no-auto-commits --no-dirty-commits --no-gitignore
          --no-check-update --no-show-model-warnings --no-show-release-notes
          --analytics-disable --no-pretty --no-fancy-input --no-detect-urls
          --chat-history-file H/chat.history.md --input-history-file H/input.history
          --map-tokens N --model-metadata-file H/model-metadata.json
          [--edit-format F] [--openai-api-base URL] [--read FILE...] [ARGS...]
          -- ARTIFACT [FILES...]

devflow makes the checkpoint commits, so Aider commits nothing; its history files live
in the run's own directory (``H``, its HOME), and so does a ``.gitconfig`` naming a git
user: without one, Aider writes one into the repository's config, which the sandbox
keeps read-only (and which is the user's). ``--map-tokens 0`` (the default of
``map_tokens``) keeps its tag cache out of the worktree. The weak and editor models are
the main one unless the persona names others.

Aider looks up every model it uses in a price list it downloads, unless its
model-metadata file names the model: devflow writes that file for each model (prices
per token from ``prices``, other fields from ``model_metadata``) and sets
``LITELLM_LOCAL_MODEL_COST_MAP=True``, so nothing is downloaded; a model without prices
reports tokens and no cost. ``--no-detect-urls``: with ``--yes-always`` Aider would
fetch every URL in the prompt (the JSON Schemas name some) and offer to pip-install a
browser to do it.

Aider wraps what it prints at ``COLUMNS`` (80 off a terminal): devflow gives it a wide
``COLUMNS`` so that a line such as ``Applied edit to PATH`` stays one line.

Aider prints no machine-readable output and has no sessions: tokens and cost come from
its ``Tokens: N sent, M received. Cost: $X message, $Y session.`` lines, and a
``litellm.…Error`` with no answer after it is a failed attempt (Aider exits 0 then).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Final

from devflow.backends import command
from devflow.backends import options as opts
from devflow.backends.base import Outcome, Task
from devflow.backends.process import Exit

TOKENS: Final = re.compile(
    r"Tokens: (?P<sent>[\d.,]+k?) sent(?:, [\d.,]+k? cache \w+)*, (?P<received>[\d.,]+k?) "
    r"received(?:\. Cost: \$(?P<message>[\d.,]+) message, \$(?P<session>[\d.,]+) session)?")
ERROR: Final = re.compile(r"^(litellm\.\w*Error|\w*APIError|\w+Exception): ?(.*)$")
APPLIED: Final = re.compile(r"^Applied edit to (.+)$")
WIDTH: Final = 4000
#: Aider's git user, never used (it commits nothing), so it writes none into the repository
GITCONFIG: Final = "[user]\n\tname = Aider (devflow)\n\temail = aider@devflow.invalid\n"
EDIT_FORMATS: Final = ("whole", "diff", "diff-fenced", "udiff", "udiff-simple", "editor-diff",
                       "editor-whole", "architect", "ask", "code")


class Aider(command.Preset):
    name = "aider"
    program = "aider"
    options_schema = command.preset_schema({
        "edit_format": {"enum": list(EDIT_FORMATS), "description": "how Aider edits files"},
        "api_base": {"type": "string", "description": "an OpenAI-compatible server"},
        "map_tokens": {**opts.COUNT, "description": "Aider's repository map (0, the "
                                                       "default, keeps it out)"},
        "model_metadata": {"type": "object", "description": "more of litellm's model fields "
                                                            "(max_input_tokens, ...)"},
        "prices": opts.PRICES,
        "files": {**opts.STRINGS, "description": "more files to put in the chat"},
        "read": {**opts.STRINGS, "description": "files added read-only"},
        "weak_model": {"type": "string", "description": "Aider's weak model"},
        "editor_model": {"type": "string", "description": "Aider's editor model"},
    })

    def arguments(self, task: Task, home: Path, extra: list[str]) -> list[str]:
        options = task.persona.options
        metadata = home / "model-metadata.json"
        metadata.write_text(json.dumps(model_metadata(task), indent=1), encoding="utf-8")
        (home / ".gitconfig").write_text(GITCONFIG, encoding="utf-8")
        argv = ["--message-file", str(task.prompt_file), "--yes-always", "--no-auto-commits",
                "--no-dirty-commits", "--no-gitignore", "--no-check-update",
                "--no-show-model-warnings", "--no-show-release-notes", "--analytics-disable",
                "--no-pretty", "--no-fancy-input", "--no-detect-urls",
                "--chat-history-file", str(home / "chat.history.md"),
                "--input-history-file", str(home / "input.history"),
                "--map-tokens", str(int(options.get("map_tokens", 0))),
                "--model-metadata-file", str(metadata)]
        if task.persona.model:
            argv = ["--model", task.persona.model,
                    "--weak-model", str(options.get("weak_model") or task.persona.model),
                    "--editor-model", str(options.get("editor_model") or task.persona.model),
                    *argv]
        if options.get("edit_format"):
            argv += ["--edit-format", str(options["edit_format"])]
        if options.get("api_base"):
            argv += ["--openai-api-base", str(options["api_base"])]
        for path in options.get("read") or ():
            argv += ["--read", path]
        argv += extra
        files = [task.artifact_path] if task.artifact_path else []
        files += [f for f in options.get("files") or () if f not in files]
        if files:
            # Aider finds the git repository from its files' directories: make them exist
            for name in files:
                (task.worktree / name).parent.mkdir(parents=True, exist_ok=True)
            argv += ["--", *files]
        return argv

    def defaults(self, task: Task, home: Path) -> dict[str, str]:
        # COLUMNS: off a terminal Aider wraps at 80 columns, which splits its "Applied edit
        # to PATH" line (the progress note) on a long path
        return {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "COLUMNS": str(WIDTH)}

    def stdin(self, task: Task) -> Path | None:
        return None

    def reads(self, task: Task) -> tuple[Path, ...]:
        return tuple(Path(p) for p in task.persona.options.get("read") or ()
                     if Path(p).is_absolute())

    def progress(self, line: str) -> str | None:
        text = line.strip()
        if APPLIED.match(text) or TOKENS.search(text) or ERROR.match(text):
            return text[:200]
        return None

    def outcome(self, task: Task, exit: Exit, stdout_log: Path, stderr_log: Path) -> Outcome:
        lines = command.read_lines(stdout_log)
        sent = received = 0
        session_cost: float | None = None
        answered, error = False, None
        for number, line in enumerate(lines):
            if found := TOKENS.search(line):
                sent += _count(found.group("sent"))
                received += _count(found.group("received"))
                answered, error = True, None
                if found.group("session"):
                    session_cost = float(found.group("session").replace(",", ""))
            elif ERROR.match(line.strip()) and not answered:
                error = " ".join([line.strip(), *_continued(lines, number + 1)])[:500]
        failure = f"Aider's model call failed: {error}" if error else None
        if not answered:
            return Outcome(failure=failure)
        return Outcome(failure=failure, tokens_in=sent, tokens_out=received,
                       cost_usd=session_cost)


def model_metadata(task: Task) -> dict[str, Any]:
    """litellm's entries for the persona's models: ``model_metadata``, prices per token.

    Written even when empty of facts: a model the file names is one Aider does not look
    up on the network; litellm merges the entry over what its bundled list knows."""
    options = task.persona.options
    model = task.persona.model or ""
    entry: dict[str, Any] = dict(options.get("model_metadata") or {})
    prices = command.prices_for(model, options)
    if prices:
        entry.setdefault("input_cost_per_token", float(prices.get("input", 0.0)) / 1_000_000)
        entry.setdefault("output_cost_per_token", float(prices.get("output", 0.0)) / 1_000_000)
    if not model:
        return {}
    provider, _, _ = model.partition("/")
    entry.setdefault("litellm_provider", provider if "/" in model else "openai")
    entry.setdefault("mode", "chat")
    found = {model: entry}
    for helper in (options.get("weak_model"), options.get("editor_model")):
        if helper and helper not in found:  # no prices of its own: tokens only
            found[str(helper)] = {"litellm_provider": entry["litellm_provider"], "mode": "chat"}
    return found


def _count(text: str) -> int:
    """Aider's rounded counts: ``713``, ``2.3k``, ``15k``."""
    text = text.replace(",", "")
    if text.endswith("k"):
        return round(float(text[:-1]) * 1000)
    return int(float(text))


def _continued(lines: list[str], start: int) -> list[str]:
    """The lines Aider wrapped an error message onto."""
    more = []
    for line in lines[start:start + 4]:
        if not line.strip() or line.startswith(("Retrying", "The API provider")):
            break
        more.append(line.strip())
    return more
