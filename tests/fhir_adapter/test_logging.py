"""Log output as operators configure it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

SCRIPT = """
import logging, warnings
from fhir_adapter.commands._common import configure_logging
configure_logging()
logging.getLogger("fhir_adapter.pipeline").warning("Encounter/%s failed: %s", "e1", "MappingError")
warnings.warn("settings: api.auth.issuer: not set")
"""


def test_json_logs_are_one_object_per_line_warnings_included() -> None:
    env = {**os.environ, "HOMEWORK_FHIR_LOG_FORMAT": "json"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                          text=True, check=True)  # fmt: skip
    records = [json.loads(line) for line in done.stderr.splitlines()]
    assert records[0]["message"] == "Encounter/e1 failed: MappingError"
    assert (records[0]["level"], records[0]["logger"]) == ("WARNING", "fhir_adapter.pipeline")
    assert "time" in records[0]
    assert "api.auth.issuer: not set" in records[1]["message"]

    text_env = {**os.environ, "HOMEWORK_FHIR_LOG_FORMAT": "text"}
    plain = subprocess.run([sys.executable, "-c", SCRIPT], env=text_env, capture_output=True,
                           text=True, check=True)  # fmt: skip
    assert "WARNING fhir_adapter.pipeline: Encounter/e1 failed" in plain.stderr
