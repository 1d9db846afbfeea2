"""Clinicians' decisions as labelled feedback for the model team: one JSON line per decided
Task (`mapping.fhir.approval.feedback_record`: the model's category, confidence and quote, the
clinician's category or reason; no patient or encounter reference)."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select

from fhir_adapter.store import Store
from fhir_adapter.store.models import FeedbackRow


def export(store: Store, out: Path) -> int:
    """Write every feedback record, oldest first, to `out` (JSON Lines); how many."""
    with store.session() as session, out.open("w", encoding="utf-8") as handle:
        count = 0
        for row in session.scalars(select(FeedbackRow).order_by(FeedbackRow.id)):
            handle.write(json.dumps(row.record, sort_keys=True) + "\n")
            count += 1
    return count
