"""Errors raised by the model-serving side of `inference_server`.

    InferenceError                  base: anything that kept texts from being classified
    ├── ModelServerUnavailable      Triton could not be reached (or never answered) after the
    │                               bounded retries; check that `homework-fhir serve-model` runs
    ├── InferenceRequestRejected    the server refused a request (bad input, e.g. empty or
    │                               non-UTF-8 text); retrying the same request cannot succeed
    └── TritonStartError            a local tritonserver did not become ready; read its log file

Callers catch `InferenceError` to treat all of them alike, or a subclass to react (e.g. fall
back to the in-process backend on `ModelServerUnavailable`). Messages say what to do next and
never contain transcript text.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "InferenceError",
    "InferenceRequestRejected",
    "ModelServerUnavailable",
    "TritonStartError",
]


class InferenceError(Exception):
    """Base class for inference errors."""


class ModelServerUnavailable(InferenceError):
    """The model server did not answer after `attempts` tries."""

    def __init__(self, url: str, attempts: int, reason: str) -> None:
        self.url = url
        self.attempts = attempts
        self.reason = reason
        super().__init__(
            f"model server at {url} unavailable after {attempts} attempt(s): {reason}; "
            "start it with `homework-fhir serve-model` or check the URL and network"
        )


class InferenceRequestRejected(InferenceError):
    """The server answered with an error for this request; it will not be retried."""

    def __init__(self, url: str, status: str, reason: str) -> None:
        self.url = url
        self.status = status
        self.reason = reason
        super().__init__(f"model server at {url} rejected the request ({status}): {reason}")


class TritonStartError(InferenceError):
    """A local tritonserver exited or did not become ready in time."""

    def __init__(self, message: str, log_file: Path, log_tail: str = "") -> None:
        self.log_file = log_file
        self.log_tail = log_tail
        # One line for a CLI; str(exc) adds the log's tail so a failing test shows the cause.
        self.summary = f"{message}; see the server log at {log_file}"
        tail = f"\n--- last lines of {log_file} ---\n{log_tail}" if log_tail else ""
        super().__init__(self.summary + tail)
