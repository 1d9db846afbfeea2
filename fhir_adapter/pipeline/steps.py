"""Step names, as stored in `encounter_work.step`, and the work item a step takes."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Step(StrEnum):
    FETCH = "fetch"  # the Encounter is known; its inputs still have to be read from the EHR
    DETECT = "detect"  # inputs staged; the model has not run
    DRAFT = "draft"  # detections stored; resources not built yet
    DONE = "done"  # resources built, stored and queued for write-back
    SKIPPED = "skipped"  # nothing to do (no transcript); the reason is in state["skipped"]
    FAILED = "failed"  # dead-lettered after repeated failures; state["failed_at"] is the step


@dataclass(frozen=True)
class WorkItem:
    """One encounter of one connection: what every step takes, with the runtime."""

    connection: str
    encounter: str  # "Encounter/<id>"
