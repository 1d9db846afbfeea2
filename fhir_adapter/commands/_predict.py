"""How the model commands (`evaluate`, `detect`) get predictions: in process, or from Triton.

In process loads `HomeworkClassifier` (shipped weights unless `--weights`); `--triton URL`
sends the same formatted texts to a running Triton server through `inference_server.client`.
Failures become one line on stderr (`fail`), never a stack trace.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from fhir_adapter.commands._common import fail

if TYPE_CHECKING:
    from inference_server.classifier import DialoguePredictions, Predictions
    from inference_server.decision import OperatingPoint

EXIT_MODEL_UNAVAILABLE = 1


class PointOption(StrEnum):
    """The model card's operating points (inference_server/decision.py)."""

    BALANCED = "balanced"
    PRECISION = "precision"

TRITON_HELP = (
    "Classify through a running Triton server: host:port (HTTP), http://host:port or "
    "grpc://host:port. Default: load the model in this process."
)


def parse_triton_url(url: str) -> tuple[str, Literal["http", "grpc"]]:
    """`host:port`, `http://host:port` or `grpc://host:port` -> (host:port, protocol)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "http", url
    if scheme not in ("http", "grpc") or not rest or "/" in rest.rstrip("/"):
        fail(f"--triton {url!r} is not host:port, http://host:port or grpc://host:port")
    return rest.rstrip("/"), "grpc" if scheme == "grpc" else "http"


def model_info(weights: Path | None) -> dict[str, object]:
    """Name and version of the weights the in-process model would load (from the card)."""
    import json

    from inference_server.classifier import CARD_FILE, WEIGHTS_DIR

    card_file = (weights or WEIGHTS_DIR) / CARD_FILE
    if not card_file.is_file():
        return {}
    card = json.loads(card_file.read_text(encoding="utf-8"))
    return {"name": card.get("name"), "version": card.get("version")}


def predict_texts(
    texts: Sequence[str], triton: str | None, weights: Path | None, batch_size: int = 64
) -> Predictions:
    """Label and review probabilities for formatted micro-dialogue texts."""
    from inference_server.errors import InferenceError

    if triton:
        address, protocol = parse_triton_url(triton)
        try:
            return asyncio.run(_predict_triton(texts, address, protocol))
        except InferenceError as exc:
            fail(str(exc).splitlines()[0], EXIT_MODEL_UNAVAILABLE)
    from inference_server.classifier import HEADS_FILE, WEIGHTS_DIR, HomeworkClassifier

    directory = weights or WEIGHTS_DIR
    if not (directory / HEADS_FILE).is_file():
        fail(f"no {HEADS_FILE} in {directory}; run `homework-fhir train` or pass --weights DIR")
    try:
        classifier = HomeworkClassifier.load(directory)
    except FileNotFoundError as exc:  # a damaged heads file, or another model's
        fail(str(exc))
    return classifier.predict(list(texts), batch_size=batch_size)


def predict_dialogues(
    dialogues: Sequence[Sequence[tuple[str, str]]],
    triton: str | None,
    weights: Path | None,
    batch_size: int = 64,
) -> DialoguePredictions:
    """Probabilities per micro-dialogue ((role, text) turns) from its strongest windows."""
    from inference_server.classifier import DialoguePredictions
    from inference_server.windows import expand

    expanded = expand(dialogues)
    preds = predict_texts(expanded.texts, triton, weights, batch_size)
    return DialoguePredictions.reduced(expanded, preds)


def operating_point(weights: Path | None, name: str) -> OperatingPoint:
    """The operating point `name` of the weights' model card (with --triton: the card of
    --weights or the packaged weights, which should be what the server serves)."""
    from inference_server.classifier import packaged_card
    from inference_server.decision import from_card

    try:
        return from_card(packaged_card(weights), name)
    except ValueError as exc:
        fail(str(exc))


async def _predict_triton(
    texts: Sequence[str], address: str, protocol: Literal["http", "grpc"]
) -> Predictions:
    from inference_server.client import TritonBackend

    backend = TritonBackend(address, protocol=protocol)
    try:
        return await backend.predict(list(texts))
    finally:
        await backend.close()
