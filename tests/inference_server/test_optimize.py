"""Precision modes of the encoder: what each one changes, and what it costs against fp32."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch

from inference_server.classifier import HomeworkClassifier
from inference_server.optimize import (
    _prefer_fast_ct2_isa,
    check_precision,
    ct2_cpu_isa,
    default_precision,
    load_classifier,
)
from tests.inference_server.triton_fixtures import TEXTS


def _cosines(a: torch.Tensor, b: torch.Tensor) -> npt.NDArray[np.float32]:
    return torch.nn.functional.cosine_similarity(a.float(), b.float()).numpy()


def test_defaults_are_int8_on_cpu_and_bf16_on_gpu() -> None:
    # Each default must be one the device accepts (int8 is CPU only).
    assert check_precision(default_precision("cpu"), "cpu") == "int8"
    assert check_precision(default_precision("cuda:0"), "cuda:0") == "bf16"


_ISA_AT_IMPORT = os.environ.get("CT2_FORCE_CPU_ISA")
AVX2 = frozenset({"sse4_2", "avx", "avx2", "fma"})
AVX512 = AVX2 | {"avx512f", "avx512cd", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni"}


def test_ct2_is_forced_to_avx512_only_where_the_cpu_has_all_of_it() -> None:
    assert ct2_cpu_isa(AVX512) == "AVX512"
    assert ct2_cpu_isa(AVX2) is None
    # CTranslate2 refuses to load on a partial set (e.g. Knights Landing: no BW/VL/DQ).
    assert ct2_cpu_isa(AVX2 | {"avx512f", "avx512cd"}) is None
    assert ct2_cpu_isa(AVX512 - {"avx512cd"}) is None
    assert ct2_cpu_isa(set()) is None


def test_the_isa_is_set_for_the_process_unless_the_operator_set_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A private environment: the code under test writes os.environ itself, and monkeypatch only
    # restores what it set, so the forced AVX512 leaked into every later subprocess (a server
    # started on a CPU without AVX-512 then failed to load CTranslate2).
    monkeypatch.setattr(os, "environ", dict(os.environ))
    monkeypatch.setattr("inference_server.optimize._cpu_flags", lambda: AVX512)
    monkeypatch.delenv("CT2_FORCE_CPU_ISA", raising=False)
    _prefer_fast_ct2_isa()
    assert os.environ["CT2_FORCE_CPU_ISA"] == "AVX512"

    monkeypatch.setenv("CT2_FORCE_CPU_ISA", "AVX2")
    _prefer_fast_ct2_isa()
    assert os.environ["CT2_FORCE_CPU_ISA"] == "AVX2"

    monkeypatch.setattr("inference_server.optimize._cpu_flags", lambda: AVX2)
    monkeypatch.delenv("CT2_FORCE_CPU_ISA")
    _prefer_fast_ct2_isa()
    assert "CT2_FORCE_CPU_ISA" not in os.environ


def test_load_classifier_defaults_to_int8_on_cpu(test_weights: Path) -> None:
    assert type(load_classifier(test_weights).encoder).__name__ == "_CT2Encoder"


def test_bad_precisions_are_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="fp32, bf16, int8"):
        check_precision("fp16")
    with pytest.raises(ValueError, match="CPU only"):
        check_precision("int8", "cuda")


def test_bf16_is_faithful_to_fp32(test_weights: Path, classifier_fp32: HomeworkClassifier) -> None:
    bf16 = load_classifier(test_weights, precision="bf16")
    assert next(bf16.encoder.parameters()).dtype == torch.bfloat16
    assert next(bf16.heads.parameters()).dtype == torch.float32
    # The "negligible cost" that makes bf16 the GPU default (bench --accuracy: the rest).
    assert _cosines(bf16.embed(TEXTS), classifier_fp32.embed(TEXTS)).min() > 0.999
    ref, got = classifier_fp32.predict(TEXTS), bf16.predict(TEXTS)
    assert got.label_probs.dtype == np.float32
    assert got.labels() == ref.labels()


def test_int8_runs_the_encoder_in_ctranslate2(
    test_weights: Path, classifier_fp32: HomeworkClassifier
) -> None:
    int8 = load_classifier(test_weights, precision="int8")
    assert type(int8.encoder).__name__ == "_CT2Encoder"
    assert not list(int8.encoder.parameters())  # no PyTorch encoder weights left behind
    assert isinstance(int8.heads.label[1], torch.nn.Linear)  # heads stay fp32
    cos = _cosines(int8.embed(TEXTS), classifier_fp32.embed(TEXTS))
    # Close but visibly approximate: bench --accuracy measures what it costs in F1.
    assert 0.95 < cos.min() < 0.99999
    preds = int8.predict(TEXTS, batch_size=5)  # padding inside batches exercises lengths
    assert preds.label_probs.shape == (len(TEXTS), 5)
    one_by_one = [int8.predict([t]).label_probs[0] for t in TEXTS[:3]]
    np.testing.assert_allclose(preds.label_probs[:3], one_by_one, atol=0.02)


def test_int8_batches_run_in_parallel_and_land_in_their_own_rows(
    test_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    int8 = load_classifier(test_weights, precision="int8")
    int8.encoder.concurrency = 1
    one_at_a_time = int8.predict(TEXTS, batch_size=2)

    threads: set[int] = set()
    embed = int8.embed

    def spy(texts: list[str]) -> torch.Tensor:
        threads.add(threading.get_ident())
        return embed(texts)

    monkeypatch.setattr(int8, "embed", spy)
    int8.encoder.concurrency = 3
    parallel = int8.predict(TEXTS, batch_size=2)  # same 6 batches, now 3 at a time
    assert len(threads) > 1
    np.testing.assert_allclose(parallel.label_probs, one_at_a_time.label_probs, atol=1e-6)
    np.testing.assert_allclose(parallel.review_probs, one_at_a_time.review_probs, atol=1e-6)
    # One batch is split so every worker gets a share (12 texts, 3 workers: 4 each).
    sizes: list[int] = []
    monkeypatch.setattr(int8, "embed", lambda texts: sizes.append(len(texts)) or embed(texts))
    int8.predict(TEXTS, batch_size=64)
    assert sorted(sizes) == [4, 4, 4]


def test_the_int8_conversion_is_cached_by_weights_and_reused(
    test_weights: Path, tmp_path: Path
) -> None:
    """The first process converts into the cache; later ones load that conversion (no new
    files) and answer the same; other weights get a conversion of their own."""
    from inference_server.optimize import converted_encoder, encoder_digest

    cache = tmp_path / "cache"
    uncached = load_classifier(test_weights, precision="int8").predict(TEXTS, 8)
    first = load_classifier(test_weights, precision="int8", cache_dir=cache)
    entries = sorted(p.name for p in cache.iterdir())
    assert len(entries) == 1 and entries[0].startswith("ct2-")  # no partial copy left over
    written = (cache / entries[0] / "model.bin").stat().st_mtime_ns
    second = load_classifier(test_weights, precision="int8", cache_dir=cache)
    assert (cache / entries[0] / "model.bin").stat().st_mtime_ns == written  # not converted again
    for result in (first.predict(TEXTS, 8), second.predict(TEXTS, 8)):
        np.testing.assert_allclose(result.label_probs, uncached.label_probs, atol=1e-6)

    other = HomeworkClassifier.load(test_weights)
    key = encoder_digest(other)
    with torch.no_grad():
        next(other.encoder.parameters()).add_(0.01)  # type: ignore[operator]
    assert encoder_digest(other) != key
    assert converted_encoder(other, cache).name == f"ct2-{encoder_digest(other)}"
    assert len(list(cache.iterdir())) == 2


def test_the_isa_test_leaves_the_process_environment_as_it_found_it() -> None:
    # Runs after the tests above (file order): the AVX512 the ISA test forced on a pretend CPU
    # may not reach later servers. Loading int8 in-process (the tests above) rightly sets what
    # this machine's own CPU takes, so that value is allowed too.
    from inference_server.optimize import _cpu_flags

    allowed = {_ISA_AT_IMPORT, ct2_cpu_isa(_cpu_flags())}
    assert os.environ.get("CT2_FORCE_CPU_ISA") in allowed
