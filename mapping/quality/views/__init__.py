"""Our published ViewDefinitions (SQL on FHIR v2), kept as JSON data beside this module.

`homework_sessions` (chart notes: one per processed session), `homework_tasks` (homework items
with review status) and `homework_scores` (PHQ-9/GAD-7 totals): the tables a quality team's BI
tool reads. Each view's `name` is its table name.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

__all__ = ["VIEW_NAMES", "view_definition"]

VIEW_NAMES = ("homework_sessions", "homework_tasks", "homework_scores")


@cache
def _load(name: str) -> str:
    return resources.files(__name__).joinpath(f"{name}.json").read_text(encoding="utf-8")


def view_definition(name: str) -> dict[str, Any]:
    """A fresh copy of the ViewDefinition `name` (KeyError naming the views for another)."""
    if name not in VIEW_NAMES:
        raise KeyError(f"no view {name!r}; views: {', '.join(VIEW_NAMES)}")
    body: dict[str, Any] = json.loads(_load(name))
    return body
