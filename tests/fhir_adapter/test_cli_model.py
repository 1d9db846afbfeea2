"""`homework-fhir train | evaluate | detect`: output schema, exit codes, Triton backend."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fhir_adapter.cli import app
from inference_server.classifier import HEADS_FILE
from inference_server.dataset import read_jsonl
from inference_server.evaluate import full_report
from inference_server.labels import LABELS

DATA = Path(__file__).resolve().parents[1] / "data" / "model"
TINY_FILE = DATA / "tiny_corpus" / "tiny.jsonl"
SESSION = DATA / "session.txt"

runner = CliRunner()


def invoke(*args: str) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def one_error_line(result: Any) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    return str(lines[0])


def test_evaluate_prints_scores_and_writes_predictions(tmp_path: Path) -> None:
    out = tmp_path / "pred.jsonl"
    result = invoke("evaluate", TINY_FILE, "--predictions", out)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    examples = read_jsonl(TINY_FILE)
    assert report["n"] == len(examples)
    assert set(report["per_label"]) == set(LABELS)
    for label in LABELS:
        assert report["per_label"][label]["support"] == sum(ex.label == label for ex in examples)
    matrix = report["confusion"]["rows_gold_cols_predicted"]
    assert report["confusion"]["labels"] == list(LABELS)
    assert sum(map(sum, matrix)) == len(examples)
    assert {"mean_f1", "review", "homework_vs_none", "model"} <= set(report)

    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [ex.id for ex in examples]
    for row in rows:
        assert set(row) == {"id", "label", "review", "label_probs", "review_prob"}
        assert sum(row["label_probs"].values()) == pytest.approx(1.0, abs=1e-4)
        # Decisions are the reported operating point's (inference_server/decision.py).
        point = report["operating_point"]
        homework = {k: v for k, v in row["label_probs"].items() if k != "none"}
        called = 1 - row["label_probs"]["none"] >= point["homework"] - 1e-6
        assert row["label"] == (max(homework, key=homework.get) if called else "none")
        assert row["review"] == (row["review_prob"] >= point["review"] - 1e-6)
    # The printed report is the report of the written predictions.
    again = full_report(
        [ex.label for ex in examples],
        [r["label"] for r in rows],
        [ex.review for ex in examples],
        [r["review"] for r in rows],
    )
    assert report["per_label"] == again["per_label"]
    assert report["review"] == again["review"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"turns": [{"speaker": "therapist", "text": "hi"}], "label": "none", "review": false}\n'
         "{oops\n", ":2: not valid JSON"),
        ('{"turns": [{"speaker": "therapist", "text": "hi"}], "label": "chore", "review": false}\n',
         ":1: unknown label 'chore'"),
    ],
)
def test_evaluate_bad_lines_exit_2_naming_the_line(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    result = invoke("evaluate", path)
    assert result.exit_code == 2
    assert message in one_error_line(result)


def test_evaluate_usage_errors_exit_2(tmp_path: Path) -> None:
    missing = invoke("evaluate", tmp_path / "nope.jsonl")
    assert missing.exit_code == 2
    assert "nope.jsonl" in one_error_line(missing)
    neither = invoke("evaluate")
    assert neither.exit_code == 2
    assert "FILE.jsonl, --esconv-split SPLIT or --realtalk SPLIT" in one_error_line(neither)
    no_esconv = invoke("evaluate", "--esconv-split", "test", "--esconv", tmp_path)
    assert no_esconv.exit_code == 2
    assert "--esconv DIR" in one_error_line(no_esconv)
    bad_url = invoke("evaluate", TINY_FILE, "--triton", "ftp://x:1")
    assert bad_url.exit_code == 2
    assert "--triton" in one_error_line(bad_url)
    no_folder = invoke("evaluate", TINY_FILE, "--predictions", tmp_path / "no" / "p.jsonl")
    assert no_folder.exit_code == 2
    no_weights = invoke("evaluate", TINY_FILE, "--weights", tmp_path)
    assert no_weights.exit_code == 2
    assert HEADS_FILE in one_error_line(no_weights)


def test_evaluate_refuses_a_predictions_folder_before_predicting(tmp_path: Path) -> None:
    # Found only when writing, after the whole model run, the report was lost.
    result = invoke("evaluate", TINY_FILE, "--predictions", tmp_path)
    assert result.exit_code == 2
    line = one_error_line(result)
    assert f"--predictions {tmp_path} already exists as a folder; pass a file path" in line
    assert result.stdout == ""  # refused before any report


def test_evaluate_reads_every_unit_shape_the_guide_allows(tmp_path: Path) -> None:
    task = "Before we meet again, could you write down each worrying thought in a notebook?"
    filler = "We talked about how the week went and what felt hard at work. " * 8
    rows = [
        {"turns": [{"speaker": "therapist", "text": task}], "label": "journal", "review": False},
        {
            "turns": [
                {"speaker": "client", "text": "I keep worrying at night."},
                {"speaker": "therapist", "text": task},
                {"speaker": "client", "text": "OK."},
            ],
            "label": "journal",
            "review": False,
        },
        {
            "turns": [{"speaker": "therapist", "text": f"{filler}\n\n{task}\n\n{filler}"}],
            "label": "journal",
            "review": False,
            "source": "written",
        },
    ]
    path = tmp_path / "shapes.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "p.jsonl"
    result = invoke("evaluate", path, "--predictions", out)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["n"] == 3 and set(report["by_source"]) == {"unspecified", "written"}
    assert set(report["intervals"]) == {
        "mean_f1", "mean_f1_present", "homework_f1", "review_f1"
    }
    predicted = [json.loads(line)["label"] for line in out.read_text().splitlines()]
    # The task sits mid-way through a 200-word message and is still found.
    assert predicted[2] != "none"


def test_evaluate_realtalk_split_reports_each_source_with_intervals() -> None:
    result = invoke("evaluate", "--realtalk", "test")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    sources = {"primock57", "activity-counselling", "mibot", "esconv"}
    assert set(report["by_source"]) == sources
    assert report["n"] == sum(report["by_source"][s]["n"] for s in sources)
    for name in sources:
        low, high = report["by_source"][name]["intervals"]["mean_f1"]
        assert 0 <= low <= report["by_source"][name]["mean_f1"] <= high <= 1


def test_evaluate_unreachable_triton_exits_1_with_one_line() -> None:
    result = invoke("evaluate", TINY_FILE, "--triton", "127.0.0.1:9")
    assert result.exit_code == 1
    assert "unavailable" in one_error_line(result)


def test_evaluate_esconv_split(tmp_path: Path) -> None:
    # Two dialogues in ESConv's shape, written here: one suggestion, three other strategies.
    dialogs = [
        {"dialog": [
            {"speaker": "usr", "text": "I can't sleep before exams."},
            {"speaker": "sys", "text": "That sounds stressful.",
             "strategy": "Reflection of feelings"},
            {"speaker": "sys", "text": "Maybe try writing your worries down before bed.",
             "strategy": "Providing Suggestions"},
            {"speaker": "usr", "text": "I could try that."},
        ]},
        {"dialog": [
            {"speaker": "sys", "text": "Hi, how are you today?", "strategy": "Question"},
            {"speaker": "usr", "text": "Not great."},
            {"speaker": "sys", "text": "I'm here to listen.", "strategy": "Others"},
        ]},
    ]
    (tmp_path / "valid.json").write_text("\n".join(json.dumps(d) for d in dialogs) + "\n")
    out = tmp_path / "p.jsonl"
    result = invoke(
        "evaluate", "--esconv-split", "valid", "--esconv", tmp_path, "--predictions", out
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["n"] == 4
    assert report["homework_vs_none"]["support"] == 1
    assert sum(report["predicted_labels"].values()) == 4
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert ids == ["esconv-valid-1-1", "esconv-valid-1-2", "esconv-valid-2-0", "esconv-valid-2-2"]


def test_detect_prints_homework_and_review_with_positions() -> None:
    result = invoke("detect", SESSION)
    assert result.exit_code == 0, result.output
    found = [json.loads(line) for line in result.stdout.splitlines()]
    lines = SESSION.read_text().splitlines()
    for item in found:
        assert set(item) == {
            "index", "label", "review", "confidence", "review_confidence", "speaker",
            "therapist", "evidence", "position",
        }
        assert item["evidence"] is None  # short turns: the whole turn is the evidence
        assert item["label"] != "none" or item["review"]
        assert item["position"]["unit"] == "line"
        assert lines[item["position"]["index"] - 1] == f"Therapist: {item['therapist']}"
    by_index = {item["index"]: item for item in found}
    # The unmistakable ones: a structured breathing task and a check on last week's diary.
    assert by_index[2]["label"] == "practice"
    assert by_index[1]["review"] is True
    # Small talk sets no homework; the shipped model still rates "How was your week?" a
    # possible review (a known weakness, see docs/model.md), but below the real check.
    small_talk = by_index.get(0)
    if small_talk is not None:
        assert small_talk["label"] == "none"
        assert small_talk["review_confidence"] < by_index[1]["review_confidence"]

    everything = invoke("detect", SESSION, "--all")
    assert [json.loads(x)["index"] for x in everything.stdout.splitlines()] == [0, 1, 2, 3]


def test_detect_bad_input_exits_2(tmp_path: Path) -> None:
    missing = invoke("detect", tmp_path / "none.txt")
    assert missing.exit_code == 2
    one_error_line(missing)
    only_client = tmp_path / "client.txt"
    only_client.write_text("Client: I talk alone.\n")
    result = invoke("detect", only_client, "--client", "Client")
    assert result.exit_code == 2
    assert "therapist" in one_error_line(result)


def test_detect_with_weights_that_are_not_the_classifiers_exits_2(tmp_path: Path) -> None:
    import shutil

    import torch
    from safetensors.torch import save_file

    from inference_server.classifier import CARD_FILE, WEIGHTS_DIR

    for name, write in (
        ("damaged", lambda path: path.write_bytes(b"not a safetensors file")),
        ("other", lambda path: save_file({"x": torch.zeros(2)}, str(path))),
    ):
        weights = tmp_path / name
        weights.mkdir()
        shutil.copy(WEIGHTS_DIR / CARD_FILE, weights / CARD_FILE)  # the card alone is fine
        write(weights / HEADS_FILE)
        result = invoke("detect", SESSION, "--weights", weights)
        assert result.exit_code == 2, result.output
        line = one_error_line(result)
        assert f"{weights} does not hold classifier weights" in line
        assert "pass the folder written by `homework-fhir train`" in line


def test_train_and_dapt_refuse_an_unusable_out_before_any_work(tmp_path: Path) -> None:
    # The check must come first: --corpus and --shared-data name nothing, so were it missing
    # these would stop at reading data (another message), never reach training.
    afile = tmp_path / "afile"
    afile.write_text("")
    nothing = tmp_path / "nothing"
    common = ["--corpus", nothing, "--no-esconv", "--no-realtalk", "--set", "distill_weight=0"]
    as_file = invoke("train", "--out", afile, *common)
    assert as_file.exit_code == 2
    assert f"--out {afile} already exists as a file; pass a folder" in one_error_line(as_file)
    under_file = invoke("train", "--out", afile / "w", *common)
    assert under_file.exit_code == 2
    assert f"{afile} is a file, not a folder" in one_error_line(under_file)

    folder = tmp_path / "folder"
    folder.mkdir()
    dapt = invoke("dapt", "--out", folder, "--shared-data", nothing)
    assert dapt.exit_code == 2
    assert f"--out {folder} already exists as a folder" in one_error_line(dapt)


def test_train_cli_writes_weights_and_prints_summary(tmp_path: Path) -> None:
    out = tmp_path / "w"
    result = invoke(
        "train", "--corpus", TINY_FILE.parent, "--out", out, "--epochs", "2", "--seed", "3",
        "--cache", tmp_path / "cache", "--no-esconv", "--quiet",
        "--set", "hidden=16", "--set", "encoder_layers=2", "--set", "lora_layers=1",
        "--set", "distill_weight=0.5",
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert set(summary) >= {"version", "best_epoch", "dev", "test"}
    assert (out / HEADS_FILE).is_file()
    card = json.loads((out / "model_card.json").read_text())
    assert card["training"]["seed"] == 3 and card["training"]["epochs"] == 2
    assert card["training"]["hidden"] == 16 and card["encoder"]["layers"] == 2
    assert card["training"]["teacher"]["layers"] == 6  # by default, the shipped model teaches
    assert card["version"] == summary["version"]
    bad = invoke("train", "--corpus", tmp_path / "missing", "--out", out, "--no-esconv")
    assert bad.exit_code == 2
    one_error_line(bad)


def test_train_cli_without_a_teacher_says_how_to_make_one(tmp_path: Path) -> None:
    result = invoke(
        "train", "--out", tmp_path / "w", "--no-esconv", "--teacher", tmp_path,
        "--set", "distill_weight=0.5",
    )
    assert result.exit_code == 2
    line = one_error_line(result)
    assert "no distillation teacher" in line and "--set distill_weight=0" in line
    assert not (tmp_path / "w").exists()
    # A teacher without distillation would be ignored: say so instead of training.
    ignored = invoke("train", "--out", tmp_path / "w", "--no-esconv", "--teacher", tmp_path)
    assert ignored.exit_code == 2
    assert "--teacher is read only when distilling" in one_error_line(ignored)
    assert not (tmp_path / "w").exists()


def test_parse_settings_takes_words_for_text_fields() -> None:
    # A text field (review_calibration) used to crash --set with a KeyError.
    from fhir_adapter.commands.train import config_with
    from inference_server.train import TrainConfig

    assert TrainConfig().review_calibration != "temperature"  # so the override shows
    config = config_with(TrainConfig(), ["review_calibration=temperature", "hidden=16"])
    assert (config.review_calibration, config.hidden) == ("temperature", 16)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("hiden=16", "NAME one of seed, epochs"),
        ("hidden", "expected NAME=VALUE"),
        ("hidden=big", "hidden takes an integer, not 'big'"),
        ("calibrate=maybe", "takes true or false"),
        ("lora_layers=7", "lora_layers must be between 0 and encoder_layers"),
        ("encoder_layers=0", "encoder_layers must be between 1 and 6"),
        ("review_calibration=isotonic", "review_calibration must be one of temperature, platt"),
    ],
)
def test_train_cli_refuses_bad_settings_before_training(
    tmp_path: Path, setting: str, message: str
) -> None:
    result = invoke("train", "--out", tmp_path / "w", "--no-esconv", "--set", setting)
    assert result.exit_code == 2
    assert message in one_error_line(result)
    assert not (tmp_path / "w").exists()


@pytest.mark.integration
def test_evaluate_through_triton_matches_in_process(
    triton_server: Any, test_weights: Path, tmp_path: Path
) -> None:
    local, remote = tmp_path / "local.jsonl", tmp_path / "remote.jsonl"
    first = invoke("evaluate", TINY_FILE, "--weights", test_weights, "--predictions", local)
    assert first.exit_code == 0, first.output
    for url in (f"http://{triton_server.http_url}", f"grpc://{triton_server.grpc_url}"):
        second = invoke("evaluate", TINY_FILE, "--triton", url, "--predictions", remote)
        assert second.exit_code == 0, second.output
        assert json.loads(second.stdout)["model"] == {"backend": "triton", "url": url}
        a = [json.loads(x) for x in local.read_text().splitlines()]
        b = [json.loads(x) for x in remote.read_text().splitlines()]
        assert [r["id"] for r in a] == [r["id"] for r in b]
        assert [r["label"] for r in a] == [r["label"] for r in b]
        for ra, rb in zip(a, b, strict=True):
            for label in LABELS:
                assert ra["label_probs"][label] == pytest.approx(rb["label_probs"][label], abs=1e-3)
