"""Backends: the in-process one, and TritonBackend's failure handling against real sockets.

"No server" is a free port nobody listens on; "a hung server" is a socket that accepts and never
answers; "the server went away" is a real Triton stopped mid-test. Nothing is mocked.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from inference_server.classifier import HomeworkClassifier
from inference_server.client import Backend, InProcessBackend, Transport, TritonBackend
from inference_server.errors import InferenceError, ModelServerUnavailable
from inference_server.optimize import load_classifier
from inference_server.triton_server import TritonServer, build_repository, free_port
from tests.inference_server.triton_fixtures import TEXTS

PROTOCOLS: list[Transport] = ["http", "grpc"]


async def test_in_process_backend_matches_the_classifier(
    classifier_fp32: HomeworkClassifier,
) -> None:
    backend = InProcessBackend(classifier_fp32, batch_size=4)
    assert isinstance(backend, Backend)
    assert await backend.ready()
    direct = classifier_fp32.predict(TEXTS)
    # Concurrent callers are serialised, each gets its own answer.
    first, second = await asyncio.gather(backend.predict(TEXTS), backend.predict(TEXTS[::-1]))
    np.testing.assert_allclose(first.label_probs, direct.label_probs, atol=1e-5)
    np.testing.assert_allclose(second.label_probs, direct.label_probs[::-1], atol=1e-5)
    empty = await backend.predict([])
    assert empty.label_probs.shape == (0, 5)
    assert empty.review_probs.shape == (0,)
    await backend.close()


async def test_in_process_backend_loads_the_served_precision(test_weights: Path) -> None:
    backend = InProcessBackend.load(test_weights, batch_size=8)
    assert backend.batch_size == 8
    assert type(backend.classifier.encoder).__name__ == "_CT2Encoder"  # int8 on a CPU
    served = load_classifier(test_weights, precision="int8").predict(TEXTS, 8)
    preds = await backend.predict(TEXTS)
    np.testing.assert_allclose(preds.label_probs, served.label_probs, atol=1e-5)


def test_triton_backend_is_a_backend_and_checks_arguments() -> None:
    assert isinstance(TritonBackend("127.0.0.1:8001", "grpc"), Backend)
    with pytest.raises(ValueError, match="max_batch_size"):
        TritonBackend("127.0.0.1:8000", batch_size=65)
    with pytest.raises(ValueError, match="protocol"):
        TritonBackend("127.0.0.1:8000", "tcp")  # type: ignore[arg-type]


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_no_server_fails_fast_with_a_typed_error(
    protocol: Transport, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"127.0.0.1:{free_port()}"
    backend = TritonBackend(url, protocol, max_retries=2, backoff_s=0.05, timeout_s=5)
    assert not await backend.ready()
    started = time.monotonic()
    with (
        caplog.at_level(logging.WARNING, logger="inference_server.client"),
        pytest.raises(ModelServerUnavailable) as caught,
    ):
        await backend.predict(TEXTS[:2])
    elapsed = time.monotonic() - started
    await backend.close()
    assert caught.value.attempts == 3
    assert caught.value.url == f"{protocol}://{url}"
    assert "serve-model" in str(caught.value)
    assert isinstance(caught.value, InferenceError)
    assert elapsed < 2.0  # refused connections: backoff 0.05 + 0.1 s plus connect attempts
    assert sum("retrying" in r.message for r in caplog.records) == 2
    assert all(t not in r.message for r in caplog.records for t in TEXTS)  # no PHI in logs


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP socket that accepts connections and never answers (a hung server)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_hung_server_times_out_within_the_bound(
    silent_server: str, protocol: Transport
) -> None:
    backend = TritonBackend(silent_server, protocol, timeout_s=0.5, max_retries=1, backoff_s=0.05)
    started = time.monotonic()
    with pytest.raises(ModelServerUnavailable) as caught:
        await backend.predict(TEXTS[:1])
    elapsed = time.monotonic() - started
    await backend.close()
    assert caught.value.attempts == 2
    assert 1.0 <= elapsed < 4.0  # two 0.5 s timeouts and one backoff, not a hang


@pytest.fixture
def disposable_server(tmp_path: Path, test_weights: Path) -> Iterator[TritonServer]:
    """A Triton of its own, for a test that stops it."""
    repo = build_repository(tmp_path / "repo", weights_dir=test_weights, precision="fp32")
    with TritonServer(repo, log_file=tmp_path / "triton.log") as server:
        yield server


async def test_retries_are_bounded_when_the_server_goes_away(
    disposable_server: TritonServer, caplog: pytest.LogCaptureFixture
) -> None:
    http = TritonBackend(disposable_server.http_url, "http", max_retries=3, backoff_s=0.05)
    grpc = TritonBackend(disposable_server.grpc_url, "grpc", max_retries=3, backoff_s=0.05)
    assert (await http.predict(TEXTS)).label_probs.shape == (len(TEXTS), 5)
    assert (await grpc.predict(TEXTS)).label_probs.shape == (len(TEXTS), 5)
    await http.close()  # Triton waits for open HTTP connections on shutdown

    disposable_server.stop()
    assert not disposable_server.running()
    for backend in (http, grpc):
        caplog.clear()
        with (
            caplog.at_level(logging.WARNING, logger="inference_server.client"),
            pytest.raises(ModelServerUnavailable) as caught,
        ):
            await backend.predict(TEXTS[:3])
        assert caught.value.attempts == 4
        assert sum("retrying" in r.message for r in caplog.records) == 3
        assert not await backend.ready()
        await backend.close()
