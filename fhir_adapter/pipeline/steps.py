"""Step names, as stored in `encounter_work.step`."""

from __future__ import annotations

from enum import StrEnum


class Step(StrEnum):
    FETCH = "fetch"  # the Encounter is known; its inputs still have to be read from the EHR
    DETECT = "detect"  # inputs staged; the model has not run
    DRAFT = "draft"  # detections stored; resources not built yet
    DONE = "done"  # resources built, stored and queued for write-back
    SKIPPED = "skipped"  # nothing to do (no transcript); the reason is in state["skipped"]


# Steps an encounter must reach before a later session of the same patient may review it.
DRAFTED = (Step.DONE,)
