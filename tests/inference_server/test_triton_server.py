"""The model repository (shipped config, runtime rendering) and starting/stopping the server."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest
from google.protobuf import text_format  # type: ignore[import-untyped]
from tritonclient.grpc import model_config_pb2

from inference_server.classifier import HEADS_FILE
from inference_server.errors import TritonStartError
from inference_server.labels import LABELS
from inference_server.triton_server import (
    MODEL_NAME,
    SHIPPED_REPOSITORY,
    TritonServer,
    build_repository,
    render_config,
)

KIND = model_config_pb2.ModelInstanceGroup


def _parse(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_shipped_config_matches_the_classifier() -> None:
    config = _parse((SHIPPED_REPOSITORY / MODEL_NAME / "config.pbtxt").read_text())
    assert config.name == MODEL_NAME
    assert config.backend == "python"
    assert config.max_batch_size == 64
    assert config.dynamic_batching.max_queue_delay_microseconds > 0
    assert list(config.dynamic_batching.preferred_batch_size)
    assert max(config.dynamic_batching.preferred_batch_size) <= config.max_batch_size
    inputs = {i.name: (i.data_type, list(i.dims)) for i in config.input}
    outputs = {o.name: (o.data_type, list(o.dims)) for o in config.output}
    assert inputs == {"TEXT": (model_config_pb2.TYPE_STRING, [1])}
    assert outputs == {
        "LABEL_PROBS": (model_config_pb2.TYPE_FP32, [len(LABELS)]),
        "REVIEW_PROB": (model_config_pb2.TYPE_FP32, [1]),
        "LABEL": (model_config_pb2.TYPE_STRING, [1]),
    }
    assert [(g.kind, g.count) for g in config.instance_group] == [(KIND.KIND_CPU, 1)]
    assert config.parameters["weights_dir"].string_value == "weights"
    assert config.parameters["precision"].string_value == "int8"  # default_precision("cpu")


def test_gpu_variant_replaces_the_instance_group() -> None:
    shipped = (SHIPPED_REPOSITORY / MODEL_NAME / "config.pbtxt").read_text()
    default = _parse(render_config(shipped, device="gpu"))
    assert default.parameters["precision"].string_value == "bf16"  # not the CPU's int8
    config = _parse(render_config(shipped, device="gpu", precision="bf16", instances=2))
    assert [(g.kind, g.count) for g in config.instance_group] == [(KIND.KIND_GPU, 2)]
    assert config.parameters["precision"].string_value == "bf16"
    # Everything else is the shipped config.
    assert config.max_batch_size == _parse(shipped).max_batch_size
    assert [o.name for o in config.output] == ["LABEL_PROBS", "REVIEW_PROB", "LABEL"]


def test_int8_is_refused_for_gpu() -> None:
    shipped = (SHIPPED_REPOSITORY / MODEL_NAME / "config.pbtxt").read_text()
    with pytest.raises(ValueError, match="CPU only"):
        render_config(shipped, device="gpu", precision="int8")


def test_build_repository_copies_weights_next_to_model(test_weights: Path, tmp_path: Path) -> None:
    repo = build_repository(tmp_path / "repo", weights_dir=test_weights, precision="int8")
    version = repo / MODEL_NAME / "1"
    assert (version / "model.py").read_bytes() == (
        SHIPPED_REPOSITORY / MODEL_NAME / "1" / "model.py"
    ).read_bytes()
    assert (version / "weights" / HEADS_FILE).read_bytes() == (
        test_weights / HEADS_FILE
    ).read_bytes()
    assert json.loads((version / "weights" / "model_card.json").read_text())["version"] == "test"
    config = _parse((repo / MODEL_NAME / "config.pbtxt").read_text())
    assert config.parameters["precision"].string_value == "int8"
    with pytest.raises(FileExistsError):
        build_repository(repo, weights_dir=test_weights)


def test_build_repository_without_weights_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="--weights"):
        build_repository(tmp_path / "repo", weights_dir=tmp_path / "nothing")


def test_server_is_ready_and_serves_metadata(triton_server: TritonServer) -> None:
    assert triton_server.running()
    url = f"http://{triton_server.http_url}/v2/models/{MODEL_NAME}"
    with urllib.request.urlopen(url, timeout=5) as response:
        meta = json.load(response)
    assert meta["platform"] == "python"
    assert {o["name"] for o in meta["outputs"]} == {"LABEL_PROBS", "REVIEW_PROB", "LABEL"}
    with urllib.request.urlopen(triton_server.metrics_url, timeout=5) as response:
        assert b"nv_inference_request_success" in response.read()


def test_failed_model_load_names_the_log(test_weights: Path, tmp_path: Path) -> None:
    repo = build_repository(tmp_path / "repo", weights_dir=test_weights)
    (repo / MODEL_NAME / "1" / "weights" / HEADS_FILE).unlink()
    server = TritonServer(repo, log_file=tmp_path / "triton.log", ready_timeout_s=120)
    started = time.monotonic()
    with pytest.raises(TritonStartError) as caught:
        server.start()
    assert time.monotonic() - started < 120  # it exited; we did not wait for the timeout
    assert caught.value.log_file == tmp_path / "triton.log"
    assert str(tmp_path / "triton.log") in str(caught.value)
    # The model's own message, from the log, tells the operator what to do.
    assert "no heads.safetensors" in caught.value.log_tail + (tmp_path / "triton.log").read_text()
    assert not server.running()


def test_gpu_instances_never_fall_back_to_cpu(test_weights: Path, tmp_path: Path) -> None:
    # No GPU here: a KIND_GPU repository must fail to load, not quietly serve from the CPU.
    repo = build_repository(tmp_path / "repo", weights_dir=test_weights, device="gpu")
    server = TritonServer(repo, log_file=tmp_path / "triton.log", ready_timeout_s=120)
    with pytest.raises(TritonStartError) as caught:
        server.start()
    assert not server.running()
    assert "KIND_GPU" in caught.value.log_file.read_text()
