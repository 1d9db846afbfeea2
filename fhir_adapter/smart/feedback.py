"""Clinicians' decisions as labelled feedback for the model team: one JSON line per decided
Task (`mapping.fhir.approval.feedback_record`: the model's category, confidence and quote, the
clinician's category or reason; no patient or encounter reference).

The quote and the client's reply are words from a psychotherapy session, and the Task and
transcript ids join back to the chart: the file is PHI, so it is written readable by its owner
alone (0600), like the private keys."""

from __future__ import annotations

import json
import os
from pathlib import Path

from sqlalchemy import select

from fhir_adapter.store import Store
from fhir_adapter.store.models import FeedbackRow


def export(store: Store, out: Path) -> int:
    """Write every feedback record, oldest first, to `out` (JSON Lines); how many."""
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT: narrow it too
    with store.session() as session, open(fd, "w", encoding="utf-8") as handle:
        count = 0
        for row in session.scalars(select(FeedbackRow).order_by(FeedbackRow.id)):
            handle.write(json.dumps(row.record, sort_keys=True) + "\n")
            count += 1
    return count
