"""Reading records out of resources: the dates EHRs send (bare dates, no zone) are kept, and
read as UTC, as the store indexes them."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest

from mapping.fhir.codes import CS_HOMEWORK_CATEGORY, LOINC, SID_NOTE, SID_TASK
from mapping.quality import measures, outcomes
from mapping.quality.records import score_record, session_record, task_record

FEB = measures.Filters(date(2025, 2, 1), date(2025, 2, 28))


def phq9(effective: str, value: int) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "44261-6"}]},
        "subject": {"reference": "Patient/p"},
        "effectiveDateTime": effective,
        "valueInteger": value,
    }


def note(start: str) -> dict[str, Any]:
    return {
        "resourceType": "DocumentReference",
        "identifier": [{"system": SID_NOTE, "value": "enc-1"}],
        "status": "current",
        "subject": {"reference": "Patient/p"},
        "date": "2025-03-20T09:00:00Z",  # approved weeks later: not the session's date
        "context": {"encounter": [{"reference": "Encounter/1"}], "period": {"start": start}},
    }


@pytest.mark.parametrize(
    ("effective", "when"),
    [
        ("2025-02-15", datetime(2025, 2, 15, tzinfo=UTC)),
        ("2025-02-15T10:30:00", datetime(2025, 2, 15, 10, 30, tzinfo=UTC)),
        ("2025-02-15T10:30:00Z", datetime(2025, 2, 15, 10, 30, tzinfo=UTC)),
        ("2025-02-15T10:30:00-05:00", datetime(2025, 2, 15, 15, 30, tzinfo=UTC)),
        ("2025-02-15T10:30:00.1234567Z", datetime(2025, 2, 15, 10, 30, 0, 123456, tzinfo=UTC)),
    ],
)
def test_a_score_dated_by_day_or_without_a_zone_is_read_as_utc(
    effective: str, when: datetime
) -> None:
    record = score_record(phq9(effective, 12))
    assert record is not None and record.date == when and record.date.tzinfo is not None


@pytest.mark.parametrize("effective", ["2025", "2025-02", "2025-02-30", "20250215", "", "soon"])
def test_a_score_without_a_day_is_no_record(effective: str) -> None:
    assert score_record(phq9(effective, 12)) is None


def test_scores_dated_by_day_feed_outcome_linkage() -> None:
    session = session_record(note("2025-02-04T10:00:00-05:00"))
    assert session is not None
    scores = [r for o in (phq9("2025-02-04", 15), phq9("2025-02-18T10:00:00", 9))
              if (r := score_record(o)) is not None]  # fmt: skip
    [course] = outcomes.courses([session], [], scores, FEB)
    change = course.scores["phq9"]
    assert (change.first_date, change.last_date, change.change) == ("2025-02-04", "2025-02-18", -6)


def test_a_session_dated_by_day_falls_on_that_day_not_on_its_notes_date() -> None:
    session = session_record(note("2025-02-04"))
    assert session is not None and session.start == datetime(2025, 2, 4, tzinfo=UTC)
    assert FEB.covers(session.start)


def test_a_task_authored_without_a_zone_is_read_as_utc() -> None:
    task = task_record(
        {
            "resourceType": "Task",
            "id": "t1",
            "identifier": [{"system": SID_TASK, "value": "t1"}],
            "status": "draft",
            "code": {"coding": [{"system": CS_HOMEWORK_CATEGORY, "code": "journal"}]},
            "encounter": {"reference": "Encounter/1"},
            "for": {"reference": "Patient/p"},
            "authoredOn": "2025-02-28T23:30:00",
        }
    )
    assert task is not None and task.authored == datetime(2025, 2, 28, 23, 30, tzinfo=UTC)
    assert FEB.covers(task.authored)
