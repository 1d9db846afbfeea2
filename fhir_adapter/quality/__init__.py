"""Fidelity for quality teams: measures, outcome linkage, SQL views and exports (IO side).

The arithmetic and the FHIR resources are built in `mapping.quality` (pure); this package
reads the store and writes tables and files.
"""

from fhir_adapter.quality.evaluate import (
    MeasureRequest,
    course_outcomes,
    evaluate_measure,
    filter_options,
)

__all__ = ["MeasureRequest", "course_outcomes", "evaluate_measure", "filter_options"]
