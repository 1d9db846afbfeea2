"""The bundled sample export: a small FHIR Bulk Data export made by us, for the demo and tests.

Three fictional patients, two therapists and nine psychotherapy sessions, as `$export` writes
them (one NDJSON file per resource type): Patient, Practitioner, Encounter, DocumentReference
(the session transcripts, inline, in every format we read), QuestionnaireResponse and
Observation (PHQ-9 / GAD-7). `README.md` here tells the story each session holds (which
homework is set, which earlier homework is reviewed); `sources/` holds what the export is built
from, and `python -m fhir_adapter.samples.build` rebuilds it.

    from fhir_adapter.bulk import read_export
    from fhir_adapter.samples import sample_export_dir

    resources = list(read_export(sample_export_dir()))
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["sample_export_dir", "sample_sources_dir"]

_HERE = Path(__file__).resolve().parent


def sample_export_dir() -> Path:
    """The directory of the sample export's NDJSON files (`Patient.ndjson`, ...)."""
    return _HERE / "export"


def sample_sources_dir() -> Path:
    """The directory the export is built from: `export.toml` and the transcript files."""
    return _HERE / "sources"
