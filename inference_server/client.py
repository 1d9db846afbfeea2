"""Backends that classify micro-dialogue texts: through Triton, or in this process.

Both implement `Backend`, so the pipeline does not care where the model runs:

    backend: Backend = TritonBackend("127.0.0.1:8001", protocol="grpc")
    try:
        preds = await backend.predict(texts)   # texts from text.format_dialogue
    finally:
        await backend.close()

`TritonBackend` splits the texts into requests of `batch_size` (Triton's dynamic batcher merges
concurrent requests again on the server), sends them concurrently, retries transport failures a
bounded number of times with exponential backoff, and raises `ModelServerUnavailable` when the
server cannot be reached, `InferenceRequestRejected` when it refuses a request.
`InProcessBackend` runs a loaded `HomeworkClassifier` in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from inference_server import decision
from inference_server.classifier import (
    DialoguePredictions,
    HomeworkClassifier,
    Predictions,
    packaged_card,
)
from inference_server.decision import OperatingPoint
from inference_server.errors import InferenceRequestRejected, ModelServerUnavailable
from inference_server.labels import LABELS
from inference_server.windows import expand

log = logging.getLogger(__name__)

MODEL_NAME = "homework_classifier"
# Triton's max_batch_size in config.pbtxt: a request may not carry more items than this.
MAX_BATCH_SIZE = 64

Transport = Literal["http", "grpc"]

__all__ = ["Backend", "InProcessBackend", "Transport", "TritonBackend"]


@runtime_checkable
class Backend(Protocol):
    """Something that classifies formatted micro-dialogue texts, and the operating point
    (decision.py) its probabilities are read at."""

    point: OperatingPoint

    async def predict(self, texts: Sequence[str]) -> Predictions: ...

    async def close(self) -> None: ...


async def predict_dialogues(
    backend: Backend, dialogues: Sequence[Sequence[tuple[str, str]]]
) -> DialoguePredictions:
    """Classify micro-dialogues ((role, text) turns each) by their strongest windows: one
    model call for all their windows (windows.py)."""
    expanded = expand(dialogues)
    return DialoguePredictions.reduced(expanded, await backend.predict(expanded.texts))


def _empty() -> Predictions:
    return Predictions(np.zeros((0, len(LABELS)), np.float32), np.zeros(0, np.float32))


class InProcessBackend:
    """The classifier in this process; `predict` runs in a worker thread.

    One `predict` at a time (a lock): it already uses every core (torch's threads, or one
    int8 worker per core), and concurrent calls would only fight over them. Batches of 16
    keep two int8 workers busy on a short transcript; bench/README.md has the figures.
    """

    def __init__(
        self,
        classifier: HomeworkClassifier,
        batch_size: int = 16,
        point: OperatingPoint | None = None,
    ) -> None:
        self.classifier = classifier
        self.batch_size = batch_size
        # Default: the balanced point of the loaded weights' own card.
        self.point = point or classifier.operating_point()
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls,
        weights_dir: Path | None = None,
        *,
        device: str = "cpu",
        precision: str | None = None,
        batch_size: int = 16,
        point: OperatingPoint | None = None,
        cache_dir: Path | None = None,
    ) -> InProcessBackend:
        """Load the classifier at `precision` (default: the one Triton serves on this device,
        see optimize.py); `cache_dir` keeps the int8 conversion for the next process."""
        from inference_server.optimize import load_classifier

        classifier = load_classifier(weights_dir, device, precision, cache_dir=cache_dir)
        return cls(classifier, batch_size=batch_size, point=point)

    def _predict(self, texts: list[str]) -> Predictions:
        with self._lock:
            return self.classifier.predict(texts, batch_size=self.batch_size)

    async def predict(self, texts: Sequence[str]) -> Predictions:
        if not texts:
            return _empty()
        return await asyncio.to_thread(self._predict, list(texts))

    async def ready(self) -> bool:
        return True

    async def close(self) -> None:
        return None


# Triton statuses that mean "the server could not take this request now" (worth a retry), as
# tritonclient reports them: HTTP status codes, or str(grpc.StatusCode).
_RETRYABLE_STATUS = {
    "502",
    "503",
    "504",
    "StatusCode.UNAVAILABLE",
    "StatusCode.DEADLINE_EXCEEDED",
    "StatusCode.RESOURCE_EXHAUSTED",
}


class _Retryable(Exception):
    """A failure of one attempt that another attempt may not hit (reason in args[0])."""


class TritonBackend:
    """Classify through a Triton server over HTTP or gRPC (`tritonclient` asyncio clients).

    `url` is host:port without a scheme (8000 is Triton's HTTP default, 8001 gRPC).
    `timeout_s` bounds each request; `max_retries` extra attempts follow a transport failure or
    timeout, `backoff_s`, 2x`backoff_s`, ... apart (capped at `max_backoff_s`).
    """

    def __init__(
        self,
        url: str,
        protocol: Transport = "http",
        *,
        timeout_s: float = 30.0,
        max_retries: int = 3,
        backoff_s: float = 0.2,
        max_backoff_s: float = 2.0,
        batch_size: int = 32,
        max_in_flight: int = 8,
        model_name: str = MODEL_NAME,
        point: OperatingPoint | None = None,
    ) -> None:
        if protocol not in ("http", "grpc"):
            raise ValueError(f"protocol must be 'http' or 'grpc', not {protocol!r}")
        if not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"batch_size must be 1..{MAX_BATCH_SIZE} (the model's max_batch_size)")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.url = url
        self.protocol = protocol
        self.timeout_s = timeout_s
        # Bounded on purpose: a Triton restart takes ~10-30 s (loading torch and the model),
        # longer than any useful wait inside one request, so a few quick retries only ride out a
        # dropped connection or a moment of overload. After that the caller needs a clear error
        # (to report the session or fall back) rather than a hang, and unbounded retries from
        # many sessions would pile onto a server that is trying to recover.
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.batch_size = batch_size
        self.model_name = model_name
        # The server sends probabilities; where to cut them is the deployment's choice (by
        # default the packaged model card's balanced point).
        self.point = point or decision.from_card(packaged_card())
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._client: Any = None

    @property
    def _target(self) -> str:
        return f"{self.protocol}://{self.url}"

    def _get_client(self) -> Any:
        # Created on first use, inside the running event loop (aiohttp and grpc.aio need one).
        if self._client is None:
            if self.protocol == "http":
                import tritonclient.http.aio as httpclient

                self._client = httpclient.InferenceServerClient(
                    self.url, conn_timeout=self.timeout_s
                )
            else:
                import tritonclient.grpc.aio as grpcclient

                self._client = grpcclient.InferenceServerClient(self.url)
        return self._client

    async def ready(self) -> bool:
        """True if the server is up and the model loaded; never raises for a dead server."""
        client = self._get_client()
        try:
            async with asyncio.timeout(self.timeout_s):
                return bool(await client.is_model_ready(self.model_name))
        except Exception as exc:  # any failure to answer means "not ready"
            log.debug("readiness check of %s failed: %r", self._target, exc)
            return False

    async def served_version(self) -> str | None:
        """The model card version the server publishes in the model's config (parameter
        `model_card_version`, written by `build_repository`); None when it publishes none or
        does not answer."""
        client = self._get_client()
        try:
            async with asyncio.timeout(self.timeout_s):
                if self.protocol == "http":
                    config = await client.get_model_config(self.model_name)
                else:
                    config = (await client.get_model_config(self.model_name, as_json=True))[
                        "config"
                    ]
        except Exception as exc:  # not answering is the caller's to report
            log.warning("cannot read the model config from %s: %r", self._target, exc)
            return None
        value = ((config.get("parameters") or {}).get("model_card_version") or {}).get(
            "string_value"
        )
        return str(value) if value else None

    async def predict(self, texts: Sequence[str]) -> Predictions:
        if not texts:
            return _empty()
        chunks = [texts[i : i + self.batch_size] for i in range(0, len(texts), self.batch_size)]
        results = await asyncio.gather(*(self._predict_chunk(chunk) for chunk in chunks))
        return Predictions(
            np.concatenate([r.label_probs for r in results]),
            np.concatenate([r.review_probs for r in results]),
        )

    async def _predict_chunk(self, texts: Sequence[str]) -> Predictions:
        attempts = self.max_retries + 1
        reason = ""
        for attempt in range(1, attempts + 1):
            try:
                async with self._in_flight:
                    return await self._infer(texts)
            except _Retryable as exc:
                reason = str(exc)
            if attempt < attempts:
                delay = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
                log.warning(
                    "%s attempt %d/%d failed (%s); retrying in %.2f s",
                    self._target,
                    attempt,
                    attempts,
                    reason,
                    delay,
                )
                await asyncio.sleep(delay)
        raise ModelServerUnavailable(self._target, attempts, reason)

    async def _infer(self, texts: Sequence[str]) -> Predictions:
        """One request; transport failures become _Retryable, refusals InferenceRequestRejected."""
        import aiohttp
        from tritonclient.utils import InferenceServerException

        client = self._get_client()
        data = np.array([[t.encode("utf-8")] for t in texts], dtype=np.object_)
        try:
            if self.protocol == "http":
                import tritonclient.http as http

                inp = http.InferInput("TEXT", list(data.shape), "BYTES")
                inp.set_data_from_numpy(data, binary_data=True)
                outputs = [
                    http.InferRequestedOutput(name, binary_data=True)
                    for name in ("LABEL_PROBS", "REVIEW_PROB")
                ]
                result = await client.infer(self.model_name, [inp], outputs=outputs)
            else:
                import tritonclient.grpc as grpc

                inp = grpc.InferInput("TEXT", list(data.shape), "BYTES")
                inp.set_data_from_numpy(data)
                outputs = [grpc.InferRequestedOutput(n) for n in ("LABEL_PROBS", "REVIEW_PROB")]
                result = await client.infer(
                    self.model_name, [inp], outputs=outputs, client_timeout=self.timeout_s
                )
        except InferenceServerException as exc:
            status = str(exc.status())
            if status in _RETRYABLE_STATUS:
                raise _Retryable(f"{status}: {exc.message()}") from exc
            raise InferenceRequestRejected(self._target, status, str(exc.message())) from exc
        except TimeoutError as exc:
            raise _Retryable(f"no answer within {self.timeout_s} s") from exc
        except (aiohttp.ClientError, OSError) as exc:  # HTTP: refused, reset, disconnected
            raise _Retryable(f"{type(exc).__name__}: {exc}") from exc
        return Predictions(
            np.asarray(result.as_numpy("LABEL_PROBS"), np.float32),
            np.asarray(result.as_numpy("REVIEW_PROB"), np.float32).reshape(-1),
        )

    async def close(self) -> None:
        """Close connections (Triton waits for open HTTP connections when it shuts down)."""
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    async def __aenter__(self) -> TritonBackend:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
