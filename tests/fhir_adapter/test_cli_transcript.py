"""`homework-fhir transcript`: JSON lines on stdout; bad input exits 2 with one line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fhir_adapter.cli import app

CASES = Path(__file__).resolve().parents[1] / "data" / "transcripts"
runner = CliRunner()

SESSION = (
    "[00:00:01] Dr. Lee: How did the breathing practice go?\n"
    "[00:00:06] Sam: I did it twice.\n"
    "[00:00:10] Dr. Lee: Let's keep it going, every evening this week.\n"
    "[00:00:15] Sam: Okay.\n"
)


def invoke(*args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, ["transcript", *args], input=stdin)
    return result.exit_code, result.stdout, result.stderr


def _lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


def test_prints_one_json_line_per_micro_dialogue(tmp_path: Path) -> None:
    path = tmp_path / "session.txt"
    path.write_text(SESSION)
    code, out, err = invoke(str(path))
    assert (code, err) == (0, "")
    records = _lines(out)
    assert [(r["therapist"], r["client"]) for r in records] == [
        ("How did the breathing practice go?", "I did it twice."),
        ("Let's keep it going, every evening this week.", "Okay."),
    ]
    assert records[1]["position"] == {
        "unit": "line",
        "index": 3,
        "last_index": 4,
        "start_s": 10.0,
        "end_s": 15.0,
    }


def test_output_matches_the_golden_file() -> None:
    code, out, _ = invoke(str(CASES / "vtt_zoom" / "input.vtt"))
    assert code == 0
    expected = (CASES / "vtt_zoom" / "expected.jsonl").read_text("utf-8")
    assert _lines(out) == _lines(expected)


def test_roles_context_and_format_options(tmp_path: Path) -> None:
    path = tmp_path / "session.data"
    path.write_text(SESSION)
    code, out, _ = invoke(
        str(path), "--format", "text", "--therapist", "sam", "--client", "DR. LEE", "--context", "1"
    )
    assert code == 0
    records = _lines(out)
    assert [r["therapist"] for r in records] == ["I did it twice.", "Okay."]
    assert records[0]["roles"] == ["client", "therapist", "client"]
    assert records[0]["context"] == ["How did the breathing practice go?"]


def test_stdin_and_unicode() -> None:
    code, out, _ = invoke("-", stdin="王医生\uff1a你好 😊\n李明\uff1a好的\n".encode())
    assert code == 0
    assert _lines(out)[0]["speakers"] == ["王医生", "李明"]
    assert "你好 😊" in out  # printed as text, not \\u escapes


def test_fhir_document_reference(tmp_path: Path) -> None:
    code, out, _ = invoke(str(CASES / "fhir_docref_vtt" / "input.json"))
    assert code == 0
    assert {r["position"]["unit"] for r in _lines(out)} == {"cue"}


def _docref(content: dict[str, Any]) -> str:
    return json.dumps(
        {"resourceType": "DocumentReference", "status": "current", "content": [content]}
    )


@pytest.mark.parametrize(
    ("name", "content", "args", "words"),
    [
        ("empty.txt", b"", [], "(line 1)"),
        ("garbage.bin", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", [], "(byte 1)"),
        ("words.txt", b"no speaker here\n", [], "(line 1)"),
        (
            "bad.vtt",
            b"WEBVTT\n\n00:00:01.000 --> 00:00:02.000\nA: hi\n\n"
            b"00:00:03,000 --> 00:00:04,000\nB: x\n",
            [],
            "(cue 2, line 6)",
        ),
        ("types.json", b'[{"speaker": "A", "text": 42}]', [], "(segment 1)"),
        ("segments.json", b'{"segments": [1]}', ["--format", "json"], "(segment 1)"),
        ("noattachment.json", _docref({}).encode(), [], "(content[0].attachment)"),
        (
            "url.json",
            _docref({"attachment": {"contentType": "text/vtt", "url": "Binary/1"}}).encode(),
            [],
            "links to Binary/1; download it",
        ),
        ("noresource.json", b'{"status": "current"}', ["--format", "fhir"], "(resourceType)"),
        ("ok.txt", SESSION.encode(), ["--therapist", "Dr. Who"], "no speaker 'Dr. Who'"),
        ("ok.txt", SESSION.encode(), ["--therapist", "Sam", "--client", "sam "], "both"),
        ("ok.txt", SESSION.encode(), ["--format", "vtt"], "(line 1)"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    tmp_path: Path, name: str, content: bytes, args: list[str], words: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    code, out, err = invoke(str(path), *args)
    assert code == 2
    assert out == ""
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and words in err
    assert "Traceback" not in err


def test_missing_file_and_directory(tmp_path: Path) -> None:
    code, _, err = invoke(str(tmp_path / "nope.vtt"))
    assert code == 2 and err.startswith("error: no such file")
    code, _, err = invoke(str(tmp_path))
    assert code == 2 and len(err.splitlines()) == 1


def test_help() -> None:
    result = runner.invoke(app, ["transcript", "--help"])
    assert result.exit_code == 0
    for option in ("--format", "--therapist", "--client", "--context"):
        assert option in result.stdout
