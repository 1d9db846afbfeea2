"""Poll an EHR for finished encounters, and fetch each one's inputs.

Neither Epic nor Oracle Health offers FHIR Subscriptions, so the poller asks for encounters
changed since the last poll (`_lastUpdated`, or the session date where the vendor's search has
no `_lastUpdated`), across the server or per patient of a configured Group (Epic and Oracle
Health search encounters per patient only), and, by `_lastUpdated`, for transcripts amended
since then of sessions already processed, which are processed again. The persisted cursor is
the time of the last successful poll; each poll reaches back `encounter_poll.lookback` before
it (clock skew, late charting with a date filter); re-seen encounters are no-ops: registration
is keyed by encounter.

What is read here (resource types and interactions) is listed in `ehr.capabilities.READ_NEEDS`,
which `homework-fhir check` and the start-up check compare with the scopes asked for: a new
read belongs there too.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from fhir_adapter.ehr.attachments import inline_attachments
from fhir_adapter.ehr.client import FhirClient
from fhir_adapter.ehr.errors import FatalFhirError
from fhir_adapter.pipeline.detect import is_transcript
from fhir_adapter.pipeline.staging import (
    LINK_WINDOW,
    StageSummary,
    resource_time,
    stage,
    transcript_changed,
)
from fhir_adapter.pipeline.steps import Step, WorkItem
from fhir_adapter.runtime import Runtime
from fhir_adapter.settings import EhrConnection
from fhir_adapter.store import Store, work
from fhir_adapter.store.models import EncounterRow
from mapping.errors import MappingError
from mapping.fhir.references import parse_reference, reference_id

log = logging.getLogger(__name__)

CURSOR_FEED = "encounters"
SCREENING_TOTALS = "http://loinc.org|44261-6,http://loinc.org|70274-6"


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def group_members(client: FhirClient, group: str) -> list[str]:
    """The Patient references of a Group's active members."""
    body = await client.read("Group", str(reference_id(group, "Group")))
    members: list[str] = []
    for member in body.get("member") or []:
        ref = (member.get("entity") or {}).get("reference") if isinstance(member, dict) else None
        if isinstance(ref, str) and ref.startswith("Patient/") and not member.get("inactive"):
            members.append(ref)
    return members


async def poll(
    client: FhirClient, store: Store, conn: EhrConnection, now: datetime | None = None
) -> StageSummary:
    """Register the finished encounters changed (or dated) since the last poll, minus the
    lookback: one search, or one per member of the configured Group."""
    now = now or datetime.now(UTC)
    with store.session() as session:
        cursor = work.get_cursor(session, conn.name, CURSOR_FEED)
    since = datetime.fromisoformat(cursor) if cursor else now
    params = conn.encounter_poll.search_params(now=since, since=conn.poll_since())
    encounters: list[dict[str, Any]] = []
    if conn.encounter_poll.scope == "group":
        assert conn.encounter_poll.group is not None  # checked by EncounterPoll
        for patient in await group_members(client, conn.encounter_poll.group):
            encounters += [
                e async for e in client.search("Encounter", [("patient", patient), *params])
            ]
    else:
        encounters = [e async for e in client.search("Encounter", params)]
    documents = await _amended_transcripts(client, store, conn, since)
    with store.session() as session:
        summary = stage(session, conn.name, [*encounters, *documents], Step.FETCH)
        # The cursor moves only once the encounters are registered (same transaction).
        work.set_cursor(session, conn.name, CURSOR_FEED, now.isoformat())
    log.info(
        "polled %s: %d encounters (%d new)", conn.name, len(encounters), summary.encounters_new
    )
    return summary


async def _amended_transcripts(
    client: FhirClient, store: Store, conn: EhrConnection, since: datetime
) -> list[dict[str, Any]]:
    """Transcripts changed since the last poll (minus the lookback) of sessions already
    processed, their Binary inlined: staged with the poll's encounters, each reopens its
    session (`staging.stage`), whose drafts and note the new transcript supersedes. A new
    session's transcript is left to its fetch step.

    Asked only where the poll filters on `_lastUpdated` (a DocumentReference's `date` is when
    it was made, not when it changed) and `encounter_poll.transcripts` is on. A server that
    refuses the search is logged and the poll goes on: amended transcripts then need a push
    or a backfill."""
    poll = conn.encounter_poll
    if not poll.transcripts or conn.poll_since() != "last-updated":
        return []
    params = [("_lastUpdated", f"ge{_iso(since - poll.lookback)}")]
    found: list[dict[str, Any]] = []
    try:
        if poll.scope == "group":
            assert poll.group is not None  # checked by EncounterPoll
            for patient in await group_members(client, poll.group):
                query = [("patient", patient), *params]
                found += [d async for d in client.search("DocumentReference", query)]
        else:
            found = [d async for d in client.search("DocumentReference", params)]
    except FatalFhirError as exc:
        log.warning("%s: transcripts changed since the last poll not asked for: %s",
                    conn.name, exc)  # fmt: skip
        return []
    amended: list[dict[str, Any]] = []
    for doc in found:
        if not is_transcript(doc):
            continue
        encounter = next(
            (r for r in (_ref_tail(e) for e in (doc.get("context") or {}).get("encounter") or [])
             if r and r.startswith("Encounter/")),
            None,
        )  # fmt: skip
        if encounter is None:
            continue
        with store.session() as session:
            row = work.get_encounter(session, conn.name, encounter)
            before = work.source(session, conn.name, "DocumentReference", str(doc.get("id")))
        if row is None or row.step not in (Step.DONE, Step.SKIPPED):
            continue
        if before is not None and not transcript_changed(before, doc):
            continue
        amended.append(await inline_attachments(doc, client.fetch_attachment))
    return amended


def _ref_tail(value: Any) -> str | None:
    """ "Type/id" of a reference, relative or absolute, without a version."""
    ref = parse_reference(value)
    return ref.relative if ref else None


def _belongs(resource: dict[str, Any], row: EncounterRow, low: datetime, high: datetime) -> bool:
    """Whether a search match really is this patient's (and, where it says, this session's).

    Servers may ignore search parameters they do not support (FHIR's default lenient
    handling; sekmet does so for QuestionnaireResponse) and answer with everyone's resources.
    """
    if _ref_tail(resource.get("subject")) != _ref_tail(row.patient):
        return False
    if resource["resourceType"] == "DocumentReference":
        named = {_ref_tail(e) for e in (resource.get("context") or {}).get("encounter") or []}
        return not named or _ref_tail(row.encounter) in named
    when = resource_time(resource)
    return when is None or low <= when <= high


async def fetch_inputs(runtime: Runtime, item: WorkItem) -> None:
    """Read the encounter's transcript(s), its patient and PHQ-9/GAD-7 results; stage them."""
    conn = runtime.connection(item.connection)
    if conn is None:
        raise MappingError(f"{item.encounter} needs fetching but no EHR connection is configured")
    with runtime.store.session() as session:
        row = work.get_encounter(session, item.connection, item.encounter)
    if row is None or row.step != Step.FETCH:
        return
    client = (await runtime.clients(conn)).ehr
    store = runtime.store
    encounter_id = str(reference_id(row.encounter))
    start = row.period_start or datetime.now(UTC)
    end = row.period_end or start
    resources: list[dict[str, Any]] = []
    resources.append(await client.read("Patient", str(reference_id(row.patient))))
    async for doc in client.search(
        "DocumentReference", [("patient", row.patient), ("encounter", encounter_id)]
    ):
        if _belongs(doc, row, start, end) and is_transcript(doc):
            resources.append(await inline_attachments(doc, client.fetch_attachment))
    window = [("date", f"ge{_iso(start - LINK_WINDOW)}"), ("date", f"le{_iso(end + LINK_WINDOW)}")]
    for source in client.vendor.questionnaire_sources:
        try:
            if source == "QuestionnaireResponse":
                params = [("patient", row.patient)]
                params += [("authored", v) for _, v in window]
                resources += [r async for r in client.search("QuestionnaireResponse", params)]
            else:
                params = [("patient", row.patient), ("code", SCREENING_TOTALS), *window]
                resources += [r async for r in client.search("Observation", params)]
        except FatalFhirError as exc:
            # Some builds do not expose one of the two searches; the other one still counts.
            log.warning("%s: %s search refused for %s: %s", conn.name, source, row.encounter, exc)
    low, high = start - LINK_WINDOW, end + LINK_WINDOW
    resources = [
        r for r in resources if r["resourceType"] == "Patient" or _belongs(r, row, low, high)
    ]
    with store.session() as session:
        for resource in resources:
            # A questionnaire of the patient is linked to this encounter by the fetch itself.
            encounter = row.encounter if resource["resourceType"] != "Patient" else None
            if resource["resourceType"] == "DocumentReference":
                encounter = row.encounter
            work.stage_source(session, conn.name, resource, encounter, row.patient)
        current = work.get_encounter(session, conn.name, row.encounter)
        if current is not None and current.step == Step.FETCH:
            work.advance(session, current, Step.DETECT)
