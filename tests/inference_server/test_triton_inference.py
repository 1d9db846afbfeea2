"""Predictions through a real Triton server (HTTP and gRPC) against the in-process backend."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc.aio as grpcclient
import tritonclient.http as http
import tritonclient.http.aio as httpclient
from tritonclient.utils import InferenceServerException

from inference_server.classifier import HomeworkClassifier
from inference_server.client import InProcessBackend, Transport, TritonBackend
from inference_server.errors import InferenceRequestRejected
from inference_server.labels import LABELS
from inference_server.triton_server import MODEL_NAME, TritonServer
from tests.inference_server.triton_fixtures import TEXTS

# Same fp32 model on both sides; only batch composition (padding) differs.
ATOL = 1e-4


def _url(server: TritonServer, protocol: Transport) -> str:
    return server.http_url if protocol == "http" else server.grpc_url


@pytest.mark.parametrize("protocol", ["http", "grpc"])
async def test_triton_agrees_with_in_process(
    triton_server: TritonServer, classifier_fp32: HomeworkClassifier, protocol: Transport
) -> None:
    local = await InProcessBackend(classifier_fp32).predict(TEXTS)
    async with TritonBackend(_url(triton_server, protocol), protocol, batch_size=5) as remote:
        assert await remote.ready()
        served = await remote.predict(TEXTS)
    assert served.label_probs.shape == (len(TEXTS), len(LABELS))
    assert served.review_probs.shape == (len(TEXTS),)
    np.testing.assert_allclose(served.label_probs, local.label_probs, atol=ATOL)
    np.testing.assert_allclose(served.review_probs, local.review_probs, atol=ATOL)
    assert served.labels() == local.labels()
    assert served.reviews() == local.reviews()
    # The test heads are peaked: this is a real comparison, not near-uniform noise.
    assert len(set(local.labels())) > 1
    assert float(local.label_probs.max(axis=1).mean()) > 0.5


async def test_a_session_sized_batch_keeps_order(
    triton_server: TritonServer, classifier_fp32: HomeworkClassifier
) -> None:
    texts = [f"{t} (minute {i})" for i, t in enumerate(TEXTS * 12)]  # 144 distinct texts
    local = await InProcessBackend(classifier_fp32).predict(texts)
    async with TritonBackend(triton_server.grpc_url, "grpc", batch_size=32) as remote:
        served = await remote.predict(texts)
    np.testing.assert_allclose(served.label_probs, local.label_probs, atol=ATOL)
    assert served.labels() == local.labels()


async def test_label_output_is_the_argmax(triton_server: TritonServer) -> None:
    data = np.array([[t.encode()] for t in TEXTS], dtype=np.object_)
    inp = http.InferInput("TEXT", list(data.shape), "BYTES")
    inp.set_data_from_numpy(data)
    async with httpclient.InferenceServerClient(triton_server.http_url) as client:
        result = await client.infer(MODEL_NAME, [inp])
    names = [v.decode() for v in result.as_numpy("LABEL").reshape(-1)]
    assert names == [LABELS[i] for i in result.as_numpy("LABEL_PROBS").argmax(axis=1)]
    np.testing.assert_allclose(result.as_numpy("LABEL_PROBS").sum(axis=1), 1.0, atol=1e-5)


async def _stats(client: grpcclient.InferenceServerClient) -> tuple[int, int]:
    stats = await client.get_inference_statistics(MODEL_NAME, as_json=True)
    model = stats["model_stats"][0]
    return int(model.get("execution_count", 0)), int(model.get("inference_count", 0))


async def test_bad_request_fails_alone_in_its_batch(
    triton_server: TritonServer, classifier_fp32: HomeworkClassifier
) -> None:
    """Bad and good requests sent together share one execute(); only the bad ones fail."""
    good = TEXTS[:3]
    local = classifier_fp32.predict(good)
    payloads = [[good[0].encode()], [b"\xff\xfe not utf-8"], [good[1].encode()], [b"   "]]
    payloads.append([good[2].encode()])

    async def send(client: grpcclient.InferenceServerClient, items: list[bytes]) -> Any:
        import tritonclient.grpc as grpc

        data = np.array([[x] for x in items], dtype=np.object_)
        inp = grpc.InferInput("TEXT", list(data.shape), "BYTES")
        inp.set_data_from_numpy(data)
        try:
            return await client.infer(MODEL_NAME, [inp])
        except InferenceServerException as exc:
            return exc

    co_batched = False
    async with grpcclient.InferenceServerClient(triton_server.grpc_url) as client:
        for _ in range(3):  # the server's 200 ms queue delay makes one try enough in practice
            executions_before, _ = await _stats(client)
            results = await asyncio.gather(*(send(client, p) for p in payloads))
            executions_after, _ = await _stats(client)

            ok = [r for i, r in enumerate(results) if i in (0, 2, 4)]
            bad = [r for i, r in enumerate(results) if i in (1, 3)]
            for result, expected in zip(ok, local.label_probs, strict=True):
                assert not isinstance(result, Exception), result
                np.testing.assert_allclose(
                    result.as_numpy("LABEL_PROBS")[0],
                    expected,
                    atol=ATOL,
                )
            assert all(isinstance(r, InferenceServerException) for r in bad)
            assert "UTF-8" in bad[0].message()
            assert "empty" in bad[1].message()
            assert bad[0].status() == "StatusCode.INVALID_ARGUMENT"
            if executions_after - executions_before == 1:
                co_batched = True
                break
    assert co_batched, "the five requests never shared one execute(); batching is broken"


async def test_rejected_request_is_not_retried(triton_server: TritonServer) -> None:
    async with TritonBackend(triton_server.http_url, "http", max_retries=3) as remote:
        with pytest.raises(InferenceRequestRejected) as caught:
            await remote.predict([TEXTS[0], ""])
    assert caught.value.status == "400"
    assert "empty" in str(caught.value)


async def _settled_stats(
    client: grpcclient.InferenceServerClient, inferences: int, timeout_s: float = 10.0
) -> tuple[int, int]:
    """The statistics once they count `inferences`: Triton records a request's statistics
    after its response is sent, so a read right after the last response can miss the last
    executions (seen on a loaded 2-core CI machine). Gives up after `timeout_s`."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        executions, counted = await _stats(client)
        if counted >= inferences or asyncio.get_running_loop().time() > deadline:
            return executions, counted
        await asyncio.sleep(0.05)


async def test_concurrent_requests_are_batched(triton_server: TritonServer) -> None:
    async with grpcclient.InferenceServerClient(triton_server.grpc_url) as client:
        executions_before, inferences_before = await _stats(client)
        async with TritonBackend(triton_server.grpc_url, "grpc", batch_size=4) as remote:
            await remote.predict(TEXTS * 4)  # 48 texts -> 12 requests of 4, sent together
        executions_after, inferences_after = await _settled_stats(client, inferences_before + 48)
    assert inferences_after - inferences_before == 48
    # Dynamic batching: far fewer forward passes than requests.
    assert executions_after - executions_before < 12
