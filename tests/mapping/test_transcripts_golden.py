"""Golden files for the transcript readers and the micro-dialogue builder.

Each `tests/data/transcripts/<case>/` holds `input.<ext>`, read with `read_transcript` (format
auto-detected, the file name given) and turned into micro-dialogues, and the expected result:
`expected.jsonl`, one `dialogue_record` per line, and `expected_transcript.json`, the detected
format, utterance count and role decisions. An optional `hints.json` gives role hints and the
context window: {"explicit": {label: role}, "therapist_names": [...], "client_names": [...],
"context_turns": n}.

After a deliberate change, regenerate with
    UPDATE_GOLDEN=1 .venv/bin/pytest tests/mapping/test_transcripts_golden.py
and review `git diff tests/data/transcripts` before committing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mapping.dialogues import build_micro_dialogues, dialogue_record
from mapping.domain import Role, RoleHints, Transcript
from mapping.transcripts import read_transcript
from tests.mapping.golden import DATA, update_requested

CASES_DIR = DATA / "transcripts"
CASES = sorted(p.name for p in CASES_DIR.iterdir() if p.is_dir())
UPDATE = update_requested()


def _input(case: str) -> Path:
    (path,) = (p for p in (CASES_DIR / case).iterdir() if p.stem == "input")
    return path


def _hints(case: str) -> tuple[RoleHints, int]:
    path = CASES_DIR / case / "hints.json"
    raw: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    hints = RoleHints(
        explicit={k: Role(v) for k, v in raw.get("explicit", {}).items()},
        therapist_names=tuple(raw.get("therapist_names", ())),
        client_names=tuple(raw.get("client_names", ())),
    )
    return hints, int(raw.get("context_turns", 0))


def _summary(transcript: Transcript) -> dict[str, object]:
    return {
        "source_format": transcript.source_format,
        "utterances": len(transcript.utterances),
        "roles": [
            {"speaker": d.speaker, "role": d.role.value, "method": d.method, "detail": d.detail}
            for d in transcript.roles
        ],
    }


def _run(case: str) -> tuple[list[dict[str, Any]], dict[str, object]]:
    path = _input(case)
    hints, context_turns = _hints(case)
    transcript = read_transcript(path.read_bytes(), "auto", hints, filename=path.name)
    dialogues = build_micro_dialogues(transcript, context_turns=context_turns)
    # Through JSON and back, so that what is compared is what the CLI prints.
    records = [json.loads(json.dumps(dialogue_record(d))) for d in dialogues]
    return records, _summary(transcript)


def test_every_case_has_its_files() -> None:
    assert len(CASES) >= 12
    for case in CASES:
        _input(case)
        if not UPDATE:
            assert (CASES_DIR / case / "expected.jsonl").exists(), case
            assert (CASES_DIR / case / "expected_transcript.json").exists(), case


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str) -> None:
    records, summary = _run(case)
    expected_path = CASES_DIR / case / "expected.jsonl"
    summary_path = CASES_DIR / case / "expected_transcript.json"
    if UPDATE:
        expected_path.write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8"
        )
        summary_path.write_text(
            json.dumps(summary, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
        )
    expected = [json.loads(line) for line in expected_path.read_text("utf-8").splitlines()]
    assert records == expected
    assert summary == json.loads(summary_path.read_text("utf-8"))


def test_sixty_minute_session_spans_the_hour() -> None:
    path = _input("vtt_session_60min")
    assert path.stat().st_size < 200_000
    records, summary = _run("vtt_session_60min")
    positions = [r["position"] for r in records]
    assert positions[0]["start_s"] < 10
    assert positions[-1]["end_s"] > 55 * 60
    # Strict alternation in the source: every therapist turn has its client reply.
    assert all(r["client"] is not None for r in records)
    assert len(records) > 200
    starts = [p["start_s"] for p in positions]
    assert starts == sorted(starts)
    assert summary["source_format"] == "vtt"
