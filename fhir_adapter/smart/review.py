"""What the review screen shows, read for one patient only.

    drafts(store, patient, encounter)   this session's homework (the context encounter, else the
                                        patient's latest session with homework) and the earlier
                                        homework with its review status
    task(store, patient, task_id)       one Task of this patient; None for any other patient's
    trend(store, patient)               PHQ-9 / GAD-7 totals by date
    evidence(task, document)            the quoted turn in its transcript context

Every store query names the session's patient; nothing here takes a patient from the request.
The transcript comes from the EHR (the Task's `source-document`), read by the caller with the
clinician's token, and is parsed by `mapping.transcripts`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from fhir_adapter.api.search import parse_query
from fhir_adapter.store import Store, resources
from mapping.domain import SourcePosition, Utterance
from mapping.errors import MappingError
from mapping.fhir.codes import (
    EXT_AI_CONFIDENCE,
    P_CLIENT_REPLY,
    P_REVIEW_ENCOUNTER,
    P_REVIEW_POSITION,
    P_REVIEW_QUOTE,
    P_SOURCE_DOCUMENT,
    P_SOURCE_POSITION,
    P_THERAPIST_QUOTE,
)
from mapping.fhir.text import clock
from mapping.transcripts import read_document

# Turns shown before and after the quoted one.
CONTEXT_TURNS = 3
# A patient's Tasks read at most (years of weekly sessions with a few items each).
MAX_TASKS = 500  # the most one store search returns
HIDDEN_STATUSES = frozenset({"cancelled", "entered-in-error"})
INSTRUMENTS = {"44261-6": "PHQ-9", "70274-6": "GAD-7"}
_POSITION = re.compile(r"^(line|cue|segment)s? (\d+)(?:-(\d+))?")


@dataclass(frozen=True)
class Item:
    """One homework Task as the screen shows it."""

    id: str
    encounter: str
    session_date: str
    category: str
    description: str
    confidence: float | None
    ai_drafted: bool
    status: str
    ai_label: str | None  # what the AI label says; None for a clinician's own item
    review_status: str
    quote: str | None
    reply: str | None
    position: str | None
    document: str | None
    reviewed_in: str | None = None
    review_quote: str | None = None
    review_position: str | None = None
    version: str = ""  # meta.versionId: the decision forms send it back (stale page check)


@dataclass(frozen=True)
class Drafts:
    encounter: str | None
    session_date: str | None
    current: list[Item] = field(default_factory=list)
    earlier: list[Item] = field(default_factory=list)


def _input(task: dict[str, Any], code: str, key: str = "input") -> dict[str, Any] | None:
    for entry in task.get(key, []):
        if any(c.get("code") == code for c in entry.get("type", {}).get("coding", [])):
            return dict(entry)
    return None


def _string(task: dict[str, Any], code: str, key: str = "input") -> str | None:
    found = _input(task, code, key)
    return str(found["valueString"]) if found and "valueString" in found else None


def _reference(task: dict[str, Any], code: str, key: str = "input") -> str | None:
    found = _input(task, code, key)
    return (
        str(found["valueReference"]["reference"]) if found and "valueReference" in found else None
    )


def item(task: dict[str, Any]) -> Item:
    code = task.get("code", {})
    confidence = next(
        (e["valueDecimal"] for e in task.get("extension", []) if e.get("url") == EXT_AI_CONFIDENCE),
        None,
    )
    security = {c.get("code") for c in task.get("meta", {}).get("security", [])}
    business = task.get("businessStatus", {}).get("coding", [{}])[0].get("code", "")
    return Item(
        id=task["id"],
        encounter=task.get("encounter", {}).get("reference", ""),
        session_date=str(task.get("authoredOn", ""))[:10],
        category=code.get("text") or code.get("coding", [{}])[0].get("display", ""),
        description=task.get("description", ""),
        confidence=float(confidence) if confidence is not None else None,
        ai_drafted="AIAST" in security,
        status=task.get("status", ""),
        ai_label=_ai_label(security, task.get("status", "")),
        review_status=business,
        quote=_string(task, P_THERAPIST_QUOTE),
        reply=_string(task, P_CLIENT_REPLY),
        position=_string(task, P_SOURCE_POSITION),
        document=_reference(task, P_SOURCE_DOCUMENT),
        reviewed_in=_reference(task, P_REVIEW_ENCOUNTER, "output"),
        review_quote=_string(task, P_REVIEW_QUOTE, "output"),
        review_position=_string(task, P_REVIEW_POSITION, "output"),
        version=str(task.get("meta", {}).get("versionId", "")),
    )


def _ai_label(security: set[str | None], status: str) -> str | None:
    """The AI label an item shows: every item the model drafted keeps one, whatever the
    clinician decided (a rejected draft is still the model's; an approved one is clinician
    asserted, AI reported); an item the clinician added has none."""
    if "CLINAST_AIRPT" in security:
        return "AI-drafted, clinician-approved"
    if "AIAST" not in security:
        return None
    return "AI draft, rejected" if status == "rejected" else "AI draft"


def _search(
    store: Store, resource_type: str, params: list[tuple[str, str]]
) -> list[dict[str, Any]]:
    query = parse_query(resource_type, [*params, ("_count", str(MAX_TASKS))])
    with store.session() as session:
        found, _ = resources.search(session, query)
    return found


def drafts(store: Store, patient: str, encounter: str | None) -> Drafts:
    tasks = [
        t
        for t in _search(store, "Task", [("patient", patient)])
        if t.get("status") not in HIDDEN_STATUSES
    ]
    items = sorted((item(t) for t in tasks), key=lambda i: (i.session_date, i.id))
    chosen = encounter if encounter and any(i.encounter == encounter for i in items) else None
    if chosen is None and encounter:
        # The session in context has no homework drafted (yet): show it empty, and earlier
        # homework as usual.
        return Drafts(encounter, None, [], list(reversed(items)))
    if chosen is None and items:
        chosen = items[-1].encounter
    current = [i for i in items if i.encounter == chosen]
    date = current[0].session_date if current else None
    earlier = [
        i for i in items if i.encounter != chosen and (date is None or i.session_date <= date)
    ]
    return Drafts(chosen, date, current, list(reversed(earlier)))


def task(store: Store, patient: str, task_id: str) -> Item | None:
    found = _search(store, "Task", [("patient", patient), ("_id", task_id)])
    return item(found[0]) if found else None


def trend(store: Store, patient: str) -> dict[str, list[dict[str, Any]]]:
    """{"PHQ-9": [{"date", "value"}...], "GAD-7": [...]} in date order."""
    series: dict[str, list[dict[str, Any]]] = {name: [] for name in INSTRUMENTS.values()}
    for obs in _search(store, "Observation", [("patient", patient)]):
        codes = {c.get("code") for c in obs.get("code", {}).get("coding", [])}
        name = next((INSTRUMENTS[c] for c in codes if c in INSTRUMENTS), None)
        value = obs.get("valueInteger", obs.get("valueQuantity", {}).get("value"))
        if name is None or value is None or obs.get("status") == "entered-in-error":
            continue
        when = str(obs.get("effectiveDateTime") or obs.get("issued") or "")[:10]
        series[name].append({"date": when, "value": value})
    for points in series.values():
        points.sort(key=lambda p: str(p["date"]))
    return series


@dataclass(frozen=True)
class ShownTurn:
    speaker: str
    role: str
    text: str
    where: str
    time: str | None
    quoted: bool


@dataclass(frozen=True)
class Evidence:
    turns: list[ShownTurn]
    found: bool  # the quoted turn was located in the transcript
    problem: str | None = None


def _turns(
    utterances: tuple[Utterance, ...],
) -> list[tuple[str, str, str, SourcePosition, SourcePosition]]:
    """Consecutive fragments of one speaker merged, every speaker kept (unlike the model's
    micro-dialogues, the screen shows interpreters and others too)."""
    turns: list[tuple[str, str, str, SourcePosition, SourcePosition]] = []
    for u in utterances:
        if turns and turns[-1][0] == u.speaker:
            speaker, role, text, first, _ = turns[-1]
            turns[-1] = (speaker, role, f"{text} {u.text}", first, u.position)
        else:
            turns.append((u.speaker, str(u.role), u.text, u.position, u.position))
    return turns


def evidence(shown: Item, document: dict[str, Any] | None) -> Evidence:
    """The quoted turn of `shown` with CONTEXT_TURNS turns either side, from `document`."""
    if document is None:
        return Evidence([], False, "The EHR did not give us this session's transcript.")
    try:
        transcript = read_document(document)
    except MappingError as exc:
        return Evidence([], False, f"The transcript cannot be read: {exc}")
    match = _POSITION.match(shown.position or "")
    turns = _turns(transcript.utterances)
    at = None
    if match:
        unit, index = match.group(1), int(match.group(2))
        at = next(
            (
                i
                for i, (_, _, _, first, last) in enumerate(turns)
                if first.unit == unit and first.index <= index <= last.index
            ),
            None,
        )
    if at is None:
        return Evidence([], False, "The quoted turn was not found in the current transcript.")
    window = turns[max(0, at - CONTEXT_TURNS) : at + CONTEXT_TURNS + 1]
    start = max(0, at - CONTEXT_TURNS)
    return Evidence(
        [
            ShownTurn(
                speaker=speaker,
                role=role,
                text=text,
                where=f"{first.unit} {first.index}",
                time=clock(first.start_s) if first.start_s is not None else None,
                quoted=start + n == at,
            )
            for n, (speaker, role, text, first, _) in enumerate(window)
        ],
        True,
    )
