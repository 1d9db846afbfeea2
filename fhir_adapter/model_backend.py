"""The model behind the pipeline, as settings choose it: in-process or a Triton server."""

from __future__ import annotations

import json
from pathlib import Path

from fhir_adapter.settings import Settings
from inference_server.classifier import CARD_FILE, WEIGHTS_DIR
from inference_server.client import Backend, InProcessBackend, TritonBackend
from inference_server.decision import OperatingPoint, resolve
from mapping.fhir.context import ModelInfo

MODEL_NAME = "homework-classifier"


def model_card(settings: Settings) -> dict[str, object]:
    """The model card of the weights in use (the packaged ones unless model.model_dir is set)."""
    path = (settings.model.model_dir or WEIGHTS_DIR) / CARD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no model card at {path}; run `homework-fhir train`")
    card: dict[str, object] = json.loads(path.read_text(encoding="utf-8"))
    return card


def model_info(settings: Settings) -> ModelInfo:
    card = model_card(settings)
    base = settings.api.public_base_url or f"http://{settings.api.host}:{settings.api.port}"
    return ModelInfo(
        name=MODEL_NAME,
        version=str(card.get("version", "unversioned")),
        model_card_url=f"{base}/model-card",
    )


def operating_point(settings: Settings) -> OperatingPoint:
    """The deployment's operating point: the model card's named point, with the thresholds
    settings give overriding it."""
    model = settings.model
    try:
        return resolve(
            model_card(settings),
            model.operating_point,
            model.homework_threshold,
            model.review_threshold,
        )
    except ValueError as exc:
        raise ValueError(f"model.operating_point: {exc}") from None


def make_backend(settings: Settings) -> Backend:
    """A backend for `settings.model`; in-process loads the weights now (seconds)."""
    model = settings.model
    point = operating_point(settings)
    if model.backend == "triton":
        assert model.triton_url is not None  # checked by ModelSettings
        return TritonBackend(
            model.triton_url,
            model.triton_protocol,
            timeout_s=model.timeout_s,
            model_name=model.triton_model,
            point=point,
        )
    weights: Path | None = model.model_dir
    # The precision Triton serves on a CPU (int8), so both backends give the same answers;
    # converted once per weights into data_dir and shared by every process that uses it.
    return InProcessBackend.load(weights, point=point, cache_dir=model_cache_dir(settings))


def model_cache_dir(settings: Settings) -> Path:
    return settings.data_dir / "model-cache"
