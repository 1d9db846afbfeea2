"""Faster numerics for the classifier's encoder, chosen by name: fp32 | bf16 | int8.

The heads stay fp32 in every mode (they are tiny); only the MiniLM encoder changes:

- ``fp32``: the reference (PyTorch).
- ``bf16``: encoder weights and activations in bfloat16 (PyTorch), hidden states cast back to
  fp32 before pooling. For GPUs (tensor cores) and CPUs with AVX-512 BF16 or AMX; on a CPU
  without them it is emulated and ~2.8x *slower* than fp32 (measured). Casting the weights
  once beats `torch.autocast`, which re-casts every weight on every call. The GPU default.
- ``int8``: the encoder converted at load to CTranslate2 and run with int8 weights and int8
  GEMMs (VNNI where the CPU has it); CPU only. ~3x fp32 on a Sapphire Rapids Xeon (with the
  AVX-512 kernels `ct2_cpu_isa` picks), ~2x on an older AVX-512 VNNI Xeon, ~1.8x on an
  AVX2-only EPYC; its kernels, and so its rounding, depend on the CPU: on dev it changed 3-4
  of 539 labels (mean F1 -0.1 to -0.5 points). The CPU default.
  (PyTorch's dynamic int8 quantisation was slower and lost ~8 points, so it is not offered.)

`bench/throughput.py --accuracy` measures each mode against fp32 (agreement, probability
differences, dev F1 and flips); bench/README.md has the figures.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Set as AbstractSet
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal, cast, get_args

import numpy as np
import torch
from torch import nn

from inference_server.classifier import HomeworkClassifier

Precision = Literal["fp32", "bf16", "int8"]
PRECISIONS: tuple[str, ...] = get_args(Precision)

__all__ = ["PRECISIONS", "Precision", "default_precision", "load_classifier", "optimize"]


def default_precision(device: str = "cpu") -> Precision:
    """The fastest precision whose accuracy cost we measured as negligible, per device:
    int8 (CTranslate2) on a CPU, bf16 on a GPU (bench/README.md has the figures)."""
    return "int8" if device.startswith("cpu") else "bf16"


class _Bf16Encoder(nn.Module):
    """Runs a bfloat16 encoder and hands fp32 hidden states to pooling and the heads."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.inner = encoder.to(torch.bfloat16)

    def forward(self, **inputs: torch.Tensor) -> Any:
        out = self.inner(**inputs)
        out.last_hidden_state = out.last_hidden_state.float()
        return out


def check_precision(precision: str, device: str = "cpu") -> Precision:
    """Validate a precision name for a device; the message lists what is allowed."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == "int8" and not device.startswith("cpu"):
        raise ValueError("int8 runs on the CPU only; use --precision bf16 or fp32 on a GPU")
    return cast(Precision, precision)


class _CT2Encoder(nn.Module):
    """A CTranslate2 encoder behind the `encoder(**batch).last_hidden_state` call of
    `HomeworkClassifier.embed`: padded ids in, fp32 hidden states out (padding is masked by
    mean pooling, as for the PyTorch encoder)."""

    def __init__(self, encoder: Any, concurrency: int) -> None:
        super().__init__()
        self.ct2 = encoder
        # Batches `HomeworkClassifier.predict` may run at once (one per CTranslate2 worker).
        self.concurrency = concurrency

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: torch.Tensor
    ) -> Any:
        import ctranslate2

        ids = np.ascontiguousarray(input_ids.cpu().numpy().astype(np.int32))
        lengths = np.ascontiguousarray(attention_mask.sum(1).cpu().numpy().astype(np.int32))
        out = self.ct2.forward_batch(
            ctranslate2.StorageView.from_array(ids), ctranslate2.StorageView.from_array(lengths)
        )
        hidden = torch.from_numpy(np.array(out.last_hidden_state, dtype=np.float32))
        return SimpleNamespace(last_hidden_state=hidden)


# The flags CTranslate2's `cpu_supports_avx512` checks; forcing AVX512 without all of them
# makes its first model load fail ("The CPU does not support AVX512").
_AVX512_FLAGS = frozenset({"avx512f", "avx512cd", "avx512bw", "avx512vl", "avx512dq"})


def ct2_cpu_isa(cpu_flags: AbstractSet[str]) -> str | None:
    """The CTranslate2 ISA to force for a CPU with these /proc/cpuinfo flags, or None to
    leave CTranslate2's own choice.

    CTranslate2 leaves AVX-512 out of its automatic dispatch and runs AVX2 where both exist.
    Its AVX-512 kernels (the element-wise ops; the int8 GEMMs are MKL's either way) gave an
    int8 session 8-28% more items/s on a 2-core Sapphire Rapids Xeon, at the same cost
    against fp32 as AVX2 (dev mean F1 0.8432 against 0.8439; bench/README.md).
    """
    return "AVX512" if _AVX512_FLAGS.issubset(cpu_flags) else None


def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: keep CTranslate2's default
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def _prefer_fast_ct2_isa() -> None:
    """Set CT2_FORCE_CPU_ISA for this process unless the operator set it already.
    CTranslate2 reads it once, when its first model loads, so this must run before that."""
    isa = ct2_cpu_isa(_cpu_flags())
    if isa:
        os.environ.setdefault("CT2_FORCE_CPU_ISA", isa)


def encoder_digest(classifier: HomeworkClassifier) -> str:
    """A key for the converted encoder: its merged weights and the converter's version.

    Hashing the tensors themselves (~90 MB, ~0.2 s) rather than file names or dates means a
    changed adapter, base model or merge can never reuse a stale conversion.
    """
    import ctranslate2

    digest = hashlib.sha256(f"ctranslate2 {ctranslate2.__version__}".encode())
    state = classifier.encoder.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().contiguous().cpu()
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:24]


def _convert(classifier: HomeworkClassifier, target: Path) -> None:
    """Save the merged encoder and tokenizer and convert them to CTranslate2 at `target`."""
    from ctranslate2.converters import TransformersConverter

    with tempfile.TemporaryDirectory(prefix="homework-hf-") as tmp:
        hf_dir = Path(tmp) / "hf"
        classifier.encoder.save_pretrained(hf_dir)  # type: ignore[operator]
        classifier.tokenizer.save_pretrained(hf_dir)  # type: ignore[attr-defined]
        TransformersConverter(str(hf_dir)).convert(str(target))


def converted_encoder(classifier: HomeworkClassifier, cache_dir: Path) -> Path:
    """The CTranslate2 conversion of the encoder under `cache_dir`, converted on first use.

    Keyed by `encoder_digest`, so workers and restarts share one conversion per weights.
    Written to a temporary directory beside it and renamed into place, so a process that reads
    it never sees half a conversion, and two processes converting at once both end with a
    complete one (the second rename loses and its copy is dropped).
    """
    final = cache_dir / f"ct2-{encoder_digest(classifier)}"
    if (final / "model.bin").is_file():
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=".ct2-", dir=cache_dir))
    try:
        _convert(classifier, partial / "model")
        try:
            os.rename(partial / "model", final)
        except OSError:
            if not (final / "model.bin").is_file():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return final


def _to_ctranslate2(
    classifier: HomeworkClassifier, compute_type: str, cache_dir: Path | None = None
) -> nn.Module:
    """Convert the loaded encoder (LoRA delta already merged) to CTranslate2.

    Converting from the weights rather than shipping a converted copy keeps one source of
    truth. With `cache_dir` the conversion (~2-3 s and ~180 MB of temporary files) is done
    once per weights and reused by every later process; without it, in a temporary
    directory each time. Nothing is downloaded: the converter reads the model we just saved.

    One single-threaded worker per core, fed whole batches in parallel, beats one batch at a
    time on all cores: with ~48-token texts the GEMMs are too small to split well (measured
    on 2 cores: a 512-text session 1.9-2.9 s against 2.9-4.0 s, interleaved runs).
    """
    _prefer_fast_ct2_isa()
    import ctranslate2

    workers = torch.get_num_threads()

    def load(path: Path) -> ctranslate2.Encoder:
        return ctranslate2.Encoder(
            str(path),
            device="cpu",
            compute_type=compute_type,
            inter_threads=workers,
            intra_threads=1,
        )

    if cache_dir is not None:
        return _CT2Encoder(load(converted_encoder(classifier, cache_dir)), workers).eval()
    with tempfile.TemporaryDirectory(prefix="homework-ct2-") as tmp:
        _convert(classifier, Path(tmp) / "ct2")
        # The encoder reads its files here; the temp dir can go afterwards.
        encoder = load(Path(tmp) / "ct2")
    return _CT2Encoder(encoder, workers).eval()


def optimize(
    classifier: HomeworkClassifier, precision: str, cache_dir: Path | None = None
) -> HomeworkClassifier:
    """Switch `classifier`'s encoder to `precision` in place and return it (`cache_dir`: where
    an int8 conversion is kept for the next process)."""
    mode = check_precision(precision, classifier.device.type)
    if mode == "bf16":
        classifier.encoder = _Bf16Encoder(classifier.encoder).eval()
    elif mode == "int8":
        classifier.encoder = _to_ctranslate2(classifier, "int8", cache_dir)
    return classifier


def load_classifier(
    weights_dir: Path | None = None,
    device: str = "cpu",
    precision: str | None = None,
    threads: int | None = None,
    cache_dir: Path | None = None,
) -> HomeworkClassifier:
    """`HomeworkClassifier.load` followed by `optimize` (default: `default_precision(device)`);
    `threads` sets torch's intra-op pool (and CTranslate2's, for int8); `cache_dir` keeps the
    int8 conversion for later processes."""
    precision = precision or default_precision(device)
    check_precision(precision, device)
    if threads:
        torch.set_num_threads(threads)
    classifier = HomeworkClassifier.load(weights_dir, device=device)
    return optimize(classifier, precision, cache_dir)
