"""Quality reporting over the FHIR resources the service reads and writes: pure functions.

`viewdef`: SQL on FHIR v2 ViewDefinitions -> rows (and the columns of their tables).
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
