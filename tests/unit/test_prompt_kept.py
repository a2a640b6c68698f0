"""What a prompt shows of the artifacts earlier phases kept."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from devflow.engine import prompt
from devflow.errors import Code, DevflowError


def test_an_artifact_kept_in_this_process_is_shown_as_validated_without_a_read(
        tmp_path: Path) -> None:
    value = {"summary": "done", "files": ["a.py"]}
    copy = tmp_path / "never-written.json"
    prompt.kept(str(copy), "ab" * 32, value)
    assert prompt._kept_text(str(copy), "ab" * 32) == json.dumps(value, indent=2)


def test_another_is_read_once_with_its_hash_checked(tmp_path: Path) -> None:
    data = b'{"summary":"from another process"}'
    sha = hashlib.sha256(data).hexdigest()
    copy = tmp_path / "kept.json"
    copy.write_bytes(b'{"summary":"changed by hand"}')
    with pytest.raises(DevflowError) as caught:
        prompt._kept_text(str(copy), sha)
    assert caught.value.code is Code.ARTIFACT_TAMPERED
    copy.write_bytes(data)
    assert prompt._kept_text(str(copy), sha) == '{\n  "summary": "from another process"\n}'
