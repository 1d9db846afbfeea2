"""The blind second-label check that decides which written units enter the corpus."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inference_server.blind_check import BlindCheckError, blind, main, merge


def _unit(i: int, label: str, review: bool = False) -> dict[str, object]:
    return {
        "id": f"x-c001-{i:02d}",
        "conversation": "x-c001",
        "turns": [{"speaker": "therapist", "text": f"turn {i}"}],
        "label": label,
        "review": review,
    }


UNITS = [_unit(1, "practice"), _unit(2, "none", True), _unit(3, "journal"), _unit(4, "none")]


def test_blind_strips_labels_and_keeps_every_unit() -> None:
    rows = blind(UNITS, seed=1)
    assert sorted(r["id"] for r in rows) == [u["id"] for u in UNITS]
    assert all(set(r) == {"id", "turns"} for r in rows)


def test_merge_keeps_only_units_agreed_on_label_and_review() -> None:
    second = [
        {"id": "x-c001-01", "label": "practice", "review": False},
        {"id": "x-c001-02", "label": "none", "review": False},  # review differs
        {"id": "x-c001-03", "label": "learn", "review": False},  # label differs
        {"id": "x-c001-04", "label": "none", "review": False},
    ]
    kept, report = merge(UNITS, second)
    assert [u["id"] for u in kept] == ["x-c001-01", "x-c001-04"]
    assert report["units"] == 4
    assert report["label"]["agreement"] == 0.75
    assert report["review"]["agreement"] == 0.75
    assert report["homework_vs_none"]["agreement"] == 1.0


def test_merge_refuses_labels_that_do_not_cover_the_shard() -> None:
    with pytest.raises(BlindCheckError, match="miss 1 unit"):
        merge(UNITS, [{"id": u["id"], "label": "none", "review": False} for u in UNITS[:3]])
    with pytest.raises(BlindCheckError, match="needs a label"):
        merge(UNITS, [{"id": u["id"], "label": "homework", "review": False} for u in UNITS])


def test_cli_round_trip_and_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shard = tmp_path / "x.jsonl"
    shard.write_text("".join(json.dumps(u) + "\n" for u in UNITS))
    assert main(["prepare", str(shard), str(tmp_path / "blind.jsonl")]) == 0
    second = [
        {"id": r["id"], "label": "none", "review": False}
        for r in map(json.loads, (tmp_path / "blind.jsonl").read_text().splitlines())
    ]
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in second))
    assert main(["merge", str(shard), str(tmp_path / "b.jsonl"), str(tmp_path / "out.jsonl")]) == 0
    assert [json.loads(x)["id"] for x in (tmp_path / "out.jsonl").read_text().splitlines()] == [
        "x-c001-04"
    ]
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    assert main(["merge", str(shard), str(tmp_path / "bad.jsonl"), str(tmp_path / "o")]) == 2
    assert "bad.jsonl:1: not JSON" in capsys.readouterr().err


def test_cli_refuses_a_latin1_shard_and_units_without_turns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(b'{"id": "x-c001-01", "turns": [], "note": "caf\xe9"}\n')
    assert main(["prepare", str(latin1), str(tmp_path / "o1")]) == 2
    assert f"{latin1} is not UTF-8 text" in capsys.readouterr().err
    no_turns = tmp_path / "no_turns.jsonl"
    no_turns.write_text(json.dumps({"id": "x-c001-09", "label": "none", "review": False}) + "\n")
    assert main(["prepare", str(no_turns), str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 1 unit(s) have no list of turns (first: x-c001-09)")
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
