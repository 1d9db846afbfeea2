"""Fidelity for quality teams over the FHIR resources the service writes: pure functions.

`records`: sessions, homework items and scores read out of our resources; `measures`: the
Measures and MeasureReports; `outcomes`: outcome linkage; `viewdef`: SQL on FHIR v2
ViewDefinitions -> rows (and the columns of their tables); `views`: our ViewDefinitions.
"""

from mapping.quality.viewdef import (
    Column,
    CompiledView,
    ViewError,
    compile_view,
    run_view,
    view_columns,
)

__all__ = ["Column", "CompiledView", "ViewError", "compile_view", "run_view", "view_columns"]
