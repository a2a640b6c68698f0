"""What a run is asked to do: requirements decoded and checked in the library (bytes as
read, or text), with the objective; and command-line arguments that are not text."""

from __future__ import annotations

from pathlib import Path

import pytest

from devflow.cli.main import main
from devflow.engine.start import check_text
from devflow.errors import Code, DevflowError


def _refused(requirements: str | bytes, source: str | None = None,
             objective: str | None = None) -> DevflowError:
    with pytest.raises(DevflowError) as caught:
        check_text(requirements, source, objective)
    assert caught.value.code is Code.INVALID_INPUT and caught.value.exit_code == 2
    assert caught.value.hint
    return caught.value


@pytest.mark.parametrize(("data", "says", "offset"), [
    ("café".encode("latin-1"), "req.md is not UTF-8 text: byte 0xe9 at offset 3", 3),
    (b"\x89PNG\r\n\x1a\n", "req.md is not UTF-8 text: byte 0x89 at offset 0", 0),
    (b"text\x00more", "req.md looks binary: control byte 0x00 at offset 4", 4),
    (b"ok\n\x1b[31mred", "req.md looks binary: control byte 0x1b at offset 3", 3),
    (b"\xff\xfe" + "é".encode("utf-16-le"), "req.md is not UTF-8 text: byte 0xff at offset 0",
     0),
])
def test_requirements_that_are_not_text_name_the_file_and_the_byte(data: bytes, says: str,
                                                                   offset: int) -> None:
    error = _refused(data, "req.md")
    assert f"requirements file {says}" in error.message
    assert error.details["offset"] == offset


@pytest.mark.parametrize(("requirements", "source", "objective", "says"), [
    (b"", "req.md", None, "requirements file req.md is empty"),
    (b" \n\t\r\n", "req.md", None, "requirements file req.md holds only white space"),
    (b"", "req.md", "An objective", "requirements file req.md is empty"),
    (b"", "-", None, "standard input is empty"),
    ("", None, None, "a run needs --requirements FILE (or -) or --objective TEXT"),
    ("  \n", None, None, "a run needs --requirements FILE (or -) or --objective TEXT"),
    ("Do it.", None, "  ", "--objective is blank"),
    ("", None, "", "--objective is blank"),
    ("Do \x00 it.", None, None, "the requirements: the text holds a NUL character"),
    ("Do it.", None, "caf\udce9", "--objective: the text holds an unpaired surrogate"),
])
def test_blank_or_missing_is_refused_like_missing(requirements: str | bytes, source: str | None,
                                                 objective: str | None, says: str) -> None:
    assert says in _refused(requirements, source, objective).message


def test_text_is_accepted_as_it_is_written() -> None:
    assert check_text("Add a farewell.", None, None) == "Add a farewell."
    assert check_text(b"\xef\xbb\xbfcaf\xc3\xa9\r\n\tx\x0c", "r.md", None) == "café\r\n\tx\x0c"
    assert check_text(b"", None, "An objective") == ""
    assert check_text("", None, "An objective") == ""


def test_an_argument_that_is_not_utf8_is_refused_before_anything_runs(
        capsys: pytest.CaptureFixture[str]) -> None:
    # bytes that are not UTF-8 reach Python as lone surrogates (os.fsdecode)
    with pytest.raises(SystemExit) as exited:
        main(["run", "status", "caf\udce9", "--json"])
    assert exited.value.code == 2
    out = capsys.readouterr().out
    assert '"code": "invalid_input"' in out
    assert "argument 3 is not UTF-8 text: byte 0xe9 at offset 3" in out


def test_blank_requirements_are_refused_before_the_database_is_opened(tmp_path: Path) -> None:
    from devflow.app import App
    from devflow.requests import StartRequest
    from devflow.settings import Settings
    home = tmp_path / "home"
    app = App(Settings.load(env={}, home=str(home), workspace=str(tmp_path / "ws")))
    with pytest.raises(DevflowError) as caught:
        app.start(StartRequest(repo=tmp_path, base=None, template="quick@1", requirements=b" \n",
                               requirements_source="r.md", actor="tester"))
    assert caught.value.code is Code.INVALID_INPUT
    assert "store" not in app.__dict__ and not home.exists()
