"""Read a FHIR Bulk Data export: a directory of NDJSON files, one resource per line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class BulkExportError(ValueError):
    """A file of the export is not NDJSON of FHIR resources; the message names file and line."""


def export_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise BulkExportError(f"{directory} is not a directory of .ndjson files")
    files = sorted(directory.glob("*.ndjson"))
    if not files:
        raise BulkExportError(f"{directory} has no .ndjson files (a $export writes Type.ndjson)")
    return files


def read_export(directory: Path) -> Iterator[dict[str, Any]]:
    """Every resource of every .ndjson file, in file order; blank lines are skipped."""
    for path in export_files(directory):
        # Bytes, decoded line by line, so that a byte that is not UTF-8 is reported by line.
        with path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise BulkExportError(
                        f"{path.name} line {number}: not UTF-8 (byte {exc.start + 1} of the "
                        "line); convert the file to UTF-8 and retry"
                    ) from exc
                if not line.strip():
                    continue
                try:
                    resource = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise BulkExportError(
                        f"{path.name} line {number}: not JSON ({exc.msg}, column {exc.colno})"
                    ) from exc
                if not isinstance(resource, dict) or not isinstance(
                    resource.get("resourceType"), str
                ):
                    raise BulkExportError(f"{path.name} line {number}: not a FHIR resource")
                yield resource
