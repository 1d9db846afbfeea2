"""Build the sample Bulk Data export from `sources/` (deterministic: no clock, no randomness).

    python -m fhir_adapter.samples.build            # rewrite fhir_adapter/samples/export/
    python -m fhir_adapter.samples.build --check    # exit 1 when the export is out of date
    python -m fhir_adapter.samples.build --out DIR  # write somewhere else

`sources/export.toml` names the cast and the sessions; each session's transcript file is carried
byte for byte, base64, in its DocumentReference. Every resource is validated with the
fhir.resources R4B model of its type before anything is written. Output is one `Type.ndjson`
per resource type, one compact JSON resource per line, UTF-8, in `export.toml` order. The
sessions' expected story (`homework`, `reviews_homework`) is read by `load_sources` for tests
and the demo; the export does not carry it.

Codes chosen, as an EHR would send them:
- Encounter: class v3-ActCode AMB (in person) or VR (video); type SNOMED CT 75516001
  "Psychotherapy" with CPT 90834 (psychotherapy, 38-52 minutes); reasonCode ICD-10-CM.
- DocumentReference: type LOINC 34904-3 "Mental health Progress note" (LOINC has no document
  kind for a session transcript; EHRs file it as a note of the visit), US Core category
  clinical-note, format mimeTypeSufficient, attachment `size` and SHA-1 `hash` of the file.
- QuestionnaireResponse: PHQ-9 / GAD-7 item codes and LOINC answer codes (LA6568-5..LA6571-9)
  from `mapping/scores/instruments.json`, so the samples score with `mapping.scores`.
- Observation: a total only (44261-6 / 70274-6, valueInteger), category survey, no encounter:
  Oracle Health files totals this way; the pipeline links them to a session by date.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from fhir_adapter.samples import sample_export_dir, sample_sources_dir
from mapping.domain import HomeworkLabel
from mapping.scores import Instrument, instrument
from mapping.scores.instruments import answer_by_value, difficulty_code

EXPORT_TYPES = (
    "Patient",
    "Practitioner",
    "Encounter",
    "DocumentReference",
    "QuestionnaireResponse",
    "Observation",
)
MANIFEST = "export.toml"
DESCRIPTION = "Build the sample Bulk Data export from its sources."

US_CORE = "http://hl7.org/fhir/us/core/StructureDefinition"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
CPT = "http://www.ama-assn.org/go/cpt"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
V3_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
V3_PARTICIPATION_TYPE = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
V2_IDENTIFIER_TYPE = "http://terminology.hl7.org/CodeSystem/v2-0203"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
DOCREF_CATEGORY = "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category"
IHE_FORMAT_CODE = "http://ihe.net/fhir/ihe.formatcode.fhir/CodeSystem/formatcode"
MIME_SUFFICIENT = "urn:ihe:iti:xds:2017:mimeTypeSufficient"

ENCOUNTER_CLASSES = {"AMB": "ambulatory", "VR": "virtual"}
# Transcript file suffix -> (attachment contentType, how the description names the format).
TRANSCRIPT_TYPES = {
    ".txt": ("text/plain; charset=utf-8", "plain text"),
    ".vtt": ("text/vtt", "WebVTT"),
    ".json": ("application/json", "diarized JSON"),
}
SCORE_STYLES = ("questionnaire-per-instrument", "questionnaire-combined", "observation-totals")
# LOINC's own FHIR Questionnaires for the two panels; the combined form is the clinic's.
PANEL_QUESTIONNAIRE = "http://loinc.org/q/{panel}"
COMBINED_QUESTIONNAIRE = "https://riverbend.example.org/fhir/Questionnaire/phq9-gad7"
INSTRUMENT_KEYS = {"phq9": "phq-9", "gad7": "gad-7"}

Json = dict[str, Any]


class SampleBuildError(ValueError):
    """The sources cannot make a valid export; the message names the file, entry or resource."""


@dataclass(frozen=True)
class Clinic:
    organization: str
    name: str
    mrn_system: str
    staff_system: str
    visit_system: str
    minutes: int


@dataclass(frozen=True)
class Person:
    id: str
    given: str
    family: str
    gender: str
    prefix: str | None = None
    suffix: str | None = None
    display: str | None = None
    staff_id: str | None = None
    birth_date: str | None = None
    mrn: str | None = None
    therapist: str | None = None
    reason: tuple[str, str] | None = None
    scores: str | None = None

    @property
    def full_name(self) -> str:
        return self.display or f"{self.given} {self.family}"


@dataclass(frozen=True)
class Session:
    id: str
    patient: str
    start: datetime
    encounter_class: str
    transcript: str
    scored: datetime | None
    items: dict[str, tuple[int, ...]]  # "phq9" / "gad7" -> item answers 0-3
    totals: dict[str, int]  # "phq9" / "gad7" -> a total without items
    phq9_difficulty: tuple[str, str] | None
    # The expected story (not in the export): homework kinds set, and whether earlier
    # homework is followed up.
    homework: tuple[HomeworkLabel, ...]
    reviews_homework: bool


@dataclass(frozen=True)
class Sources:
    directory: Path
    clinic: Clinic
    practitioners: tuple[Person, ...]
    patients: tuple[Person, ...]
    sessions: tuple[Session, ...]


# ---------------------------------------------------------------------------------- sources


def load_sources(directory: Path | None = None) -> Sources:
    """Read `export.toml` from `directory` (default: the bundled sources)."""
    directory = directory or sample_sources_dir()
    path = directory / MANIFEST
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SampleBuildError(f"{path}: cannot read ({exc})") from exc
    try:
        clinic = Clinic(**data["clinic"])
        practitioners = tuple(_person(p) for p in data["practitioner"])
        patients = tuple(_person(p) for p in data["patient"])
        sessions = tuple(_session(s) for s in data["session"])
    except (KeyError, TypeError, ValueError) as exc:
        raise SampleBuildError(f"{path}: {type(exc).__name__}: {exc}") from exc
    sources = Sources(directory, clinic, practitioners, patients, sessions)
    _check_links(sources, path)
    return sources


def _person(entry: dict[str, Any]) -> Person:
    reason = entry.pop("reason", None)
    return Person(**entry, reason=(str(reason[0]), str(reason[1])) if reason else None)


def _session(entry: dict[str, Any]) -> Session:
    scored = entry.get("scored")
    difficulty = entry.get("phq9_difficulty")
    return Session(
        id=str(entry["id"]),
        patient=str(entry["patient"]),
        start=datetime.fromisoformat(entry["start"]),
        encounter_class=str(entry["class"]),
        transcript=str(entry["transcript"]),
        scored=datetime.fromisoformat(scored) if scored else None,
        items={k: tuple(int(v) for v in entry[k]) for k in INSTRUMENT_KEYS if k in entry},
        totals={k: int(entry[f"{k}_total"]) for k in INSTRUMENT_KEYS if f"{k}_total" in entry},
        phq9_difficulty=(str(difficulty[0]), str(difficulty[1])) if difficulty else None,
        homework=tuple(HomeworkLabel(label) for label in entry["homework"]),
        reviews_homework=_flag(entry["reviews_homework"]),
    )


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"reviews_homework must be true or false, not {value!r}")
    return value


def _check_links(sources: Sources, path: Path) -> None:
    """Refuse references to nobody, unknown codes and missing files before building anything."""
    practitioners = {p.id for p in sources.practitioners}
    patients = {p.id: p for p in sources.patients}
    for patient in sources.patients:
        if patient.therapist not in practitioners:
            raise SampleBuildError(f"{path}: {patient.id} names unknown therapist")
        if patient.scores not in SCORE_STYLES:
            raise SampleBuildError(f"{path}: {patient.id} scores must be one of {SCORE_STYLES}")
    for session in sources.sessions:
        where = f"{path}: session {session.id}"
        if session.patient not in patients:
            raise SampleBuildError(f"{where} names unknown patient {session.patient!r}")
        if session.encounter_class not in ENCOUNTER_CLASSES:
            raise SampleBuildError(f"{where}: class must be one of {list(ENCOUNTER_CLASSES)}")
        if Path(session.transcript).suffix not in TRANSCRIPT_TYPES:
            raise SampleBuildError(f"{where}: transcript must end in {list(TRANSCRIPT_TYPES)}")
        if not (sources.directory / session.transcript).is_file():
            raise SampleBuildError(f"{where}: transcript {session.transcript} not found")
        if session.start.utcoffset() is None:
            raise SampleBuildError(f"{where}: start needs a UTC offset")
        if HomeworkLabel.NONE in session.homework:
            raise SampleBuildError(f"{where}: homework lists kinds; a session without any has []")
        has_scores = bool(session.items or session.totals)
        if has_scores and session.scored is None:
            raise SampleBuildError(f"{where}: scores need a `scored` time")
        by_total = patients[session.patient].scores == "observation-totals"
        if (session.items and by_total) or (session.totals and not by_total):
            raise SampleBuildError(
                f"{where}: give item answers for questionnaire patients, totals for "
                "observation-totals patients"
            )
        for key, answers in session.items.items():
            inst = instrument(INSTRUMENT_KEYS[key])
            if len(answers) != len(inst.items) or not all(0 <= a <= 3 for a in answers):
                raise SampleBuildError(f"{where}: {key} needs {len(inst.items)} answers, each 0-3")


# ------------------------------------------------------------------------------- resources


def _ref(kind: str, person: Person) -> Json:
    return {"reference": f"{kind}/{person.id}", "display": person.full_name}


def _coding(system: str, code: str, display: str) -> Json:
    return {"system": system, "code": code, "display": display}


def _period(sources: Sources, session: Session) -> Json:
    end = session.start + timedelta(minutes=sources.clinic.minutes)
    return {"start": session.start.isoformat(), "end": end.isoformat()}


def _organization(sources: Sources) -> Json:
    return {"reference": sources.clinic.organization, "display": sources.clinic.name}


def patient_resource(sources: Sources, patient: Person) -> Json:
    return {
        "resourceType": "Patient",
        "id": patient.id,
        "meta": {"profile": [f"{US_CORE}/us-core-patient"]},
        "identifier": [
            {
                "use": "usual",
                "type": {
                    "coding": [_coding(V2_IDENTIFIER_TYPE, "MR", "Medical record number")],
                    "text": "MRN",
                },
                "system": sources.clinic.mrn_system,
                "value": patient.mrn,
            }
        ],
        "active": True,
        "name": [
            {
                "use": "official",
                "text": patient.full_name,
                "family": patient.family,
                "given": [patient.given],
            }
        ],
        "gender": patient.gender,
        "birthDate": patient.birth_date,
        "managingOrganization": _organization(sources),
    }


def practitioner_resource(sources: Sources, practitioner: Person) -> Json:
    name: Json = {
        "use": "official",
        "text": practitioner.full_name,
        "family": practitioner.family,
        "given": [practitioner.given],
    }
    if practitioner.prefix:
        name["prefix"] = [practitioner.prefix]
    if practitioner.suffix:
        name["suffix"] = [practitioner.suffix]
    return {
        "resourceType": "Practitioner",
        "id": practitioner.id,
        "meta": {"profile": [f"{US_CORE}/us-core-practitioner"]},
        "identifier": [{"system": sources.clinic.staff_system, "value": practitioner.staff_id}],
        "active": True,
        "name": [name],
        "gender": practitioner.gender,
    }


def encounter_resource(
    sources: Sources, session: Session, patient: Person, therapist: Person
) -> Json:
    period = _period(sources, session)
    resource: Json = {
        "resourceType": "Encounter",
        "id": f"enc-{session.id}",
        "meta": {"profile": [f"{US_CORE}/us-core-encounter"]},
        "identifier": [
            {
                "system": sources.clinic.visit_system,
                "value": f"V{session.start:%Y%m%d}-{session.id}",
            }
        ],
        "status": "finished",
        "class": _coding(
            V3_ACT_CODE, session.encounter_class, ENCOUNTER_CLASSES[session.encounter_class]
        ),
        "type": [
            {
                "coding": [
                    _coding(SNOMED, "75516001", "Psychotherapy"),
                    _coding(CPT, "90834", "Psychotherapy, 45 minutes with patient"),
                ],
                "text": "Individual psychotherapy",
            }
        ],
        "subject": _ref("Patient", patient),
        "participant": [
            {
                "type": [{"coding": [_coding(V3_PARTICIPATION_TYPE, "PPRF", "primary performer")]}],
                "period": period,
                # The display is the therapist's speaker label in the transcript.
                "individual": _ref("Practitioner", therapist),
            }
        ],
        "period": period,
        "serviceProvider": _organization(sources),
    }
    if patient.reason:
        code, display = patient.reason
        resource["reasonCode"] = [{"coding": [_coding(ICD10CM, code, display)]}]
    return resource


def document_resource(
    sources: Sources, session: Session, patient: Person, therapist: Person
) -> Json:
    path = sources.directory / session.transcript
    content = path.read_bytes()
    content_type, kind = TRANSCRIPT_TYPES[path.suffix]
    period = _period(sources, session)
    day = f"{session.start:%Y-%m-%d}"
    # FHIR defines Attachment.hash as SHA-1: an integrity check, not a security control.
    sha1 = hashlib.sha1(content, usedforsecurity=False).digest()
    return {
        "resourceType": "DocumentReference",
        "id": f"doc-{session.id}",
        "meta": {"profile": [f"{US_CORE}/us-core-documentreference"]},
        "status": "current",
        "docStatus": "final",
        "type": {
            "coding": [_coding(LOINC, "34904-3", "Mental health Progress note")],
            "text": "Psychotherapy session transcript",
        },
        "category": [{"coding": [_coding(DOCREF_CATEGORY, "clinical-note", "Clinical Note")]}],
        "subject": _ref("Patient", patient),
        "date": period["end"],
        "author": [_ref("Practitioner", therapist)],
        "custodian": _organization(sources),
        "description": f"Transcript of the psychotherapy session of {day} ({kind})",
        "content": [
            {
                "attachment": {
                    "contentType": content_type,
                    "language": "en",
                    "data": base64.b64encode(content).decode("ascii"),
                    "size": len(content),
                    "hash": base64.b64encode(sha1).decode("ascii"),
                    "title": f"Session transcript {day}",
                    "creation": period["end"],
                },
                "format": _coding(IHE_FORMAT_CODE, MIME_SUFFICIENT, "mimeType Sufficient"),
            }
        ],
        "context": {"encounter": [{"reference": f"Encounter/enc-{session.id}"}], "period": period},
    }


def _answer_items(inst: Instrument, answers: Sequence[int], link_prefix: str) -> list[Json]:
    items: list[Json] = []
    for item, value in zip(inst.items, answers, strict=True):
        answer = answer_by_value(value)
        items.append(
            {
                "linkId": f"{link_prefix}{item.code}",
                "text": item.display,
                "answer": [{"valueCoding": _coding(LOINC, answer.code, answer.display)}],
            }
        )
    return items


def _questionnaire_response(
    session: Session, patient: Person, rid: str, questionnaire: str, items: list[Json]
) -> Json:
    assert session.scored is not None  # checked by load_sources
    return {
        "resourceType": "QuestionnaireResponse",
        "id": rid,
        "meta": {"profile": [f"{US_CORE}/us-core-questionnaireresponse"]},
        "questionnaire": questionnaire,
        "status": "completed",
        "subject": _ref("Patient", patient),
        "encounter": {"reference": f"Encounter/enc-{session.id}"},
        "authored": session.scored.isoformat(),
        "author": _ref("Patient", patient),
        "source": _ref("Patient", patient),
        "item": items,
    }


def questionnaire_resources(session: Session, patient: Person) -> list[Json]:
    """PHQ-9 / GAD-7 responses: one per instrument, or one form holding both."""
    if not session.items:
        return []
    if patient.scores == "questionnaire-combined":
        groups = []
        for key, answers in session.items.items():
            inst = instrument(INSTRUMENT_KEYS[key])
            total = {
                "linkId": inst.total.code,
                "text": inst.total.display,
                "answer": [{"valueInteger": sum(answers)}],
            }
            groups.append(
                {
                    "linkId": inst.key,
                    "text": inst.panel.display,
                    "item": [*_answer_items(inst, answers, ""), total],
                }
            )
        rid = f"qr-{session.id}"
        return [_questionnaire_response(session, patient, rid, COMBINED_QUESTIONNAIRE, groups)]
    out = []
    for key, answers in session.items.items():
        inst = instrument(INSTRUMENT_KEYS[key])
        # LOINC form style linkIds: "/44249-1/44250-9".
        items = _answer_items(inst, answers, f"/{inst.panel.code}/")
        if key == "phq9" and session.phq9_difficulty:
            code, display = session.phq9_difficulty
            difficulty = {
                "linkId": f"/{inst.panel.code}/{difficulty_code()}",
                "text": "How difficult have these problems made it for you to do your work, "
                "take care of things at home, or get along with other people?",
                "answer": [{"valueCoding": _coding(LOINC, code, display)}],
            }
            items.append(difficulty)
        questionnaire = PANEL_QUESTIONNAIRE.format(panel=inst.panel.code)
        rid = f"qr-{session.id}-{key}"
        out.append(_questionnaire_response(session, patient, rid, questionnaire, items))
    return out


def observation_resources(session: Session, patient: Person) -> list[Json]:
    """Screening totals without an encounter reference, as Oracle Health sends them."""
    out = []
    for key, total in session.totals.items():
        assert session.scored is not None  # checked by load_sources
        inst = instrument(INSTRUMENT_KEYS[key])
        out.append(
            {
                "resourceType": "Observation",
                "id": f"obs-{session.id}-{key}",
                "meta": {"profile": [f"{US_CORE}/us-core-observation-screening-assessment"]},
                "status": "final",
                "category": [{"coding": [_coding(OBSERVATION_CATEGORY, "survey", "Survey")]}],
                "code": {
                    "coding": [_coding(LOINC, inst.total.code, inst.total.display)],
                    "text": f"{inst.name} total score",
                },
                "subject": _ref("Patient", patient),
                "effectiveDateTime": session.scored.isoformat(),
                "issued": session.scored.isoformat(),
                "valueInteger": total,
            }
        )
    return out


def build_resources(sources: Sources | None = None) -> dict[str, list[Json]]:
    """Every resource of the export by type, validated with the R4B models."""
    sources = sources or load_sources()
    people = {p.id: p for p in (*sources.practitioners, *sources.patients)}
    out: dict[str, list[Json]] = {kind: [] for kind in EXPORT_TYPES}
    out["Patient"] = [patient_resource(sources, p) for p in sources.patients]
    out["Practitioner"] = [practitioner_resource(sources, p) for p in sources.practitioners]
    for session in sources.sessions:
        patient = people[session.patient]
        therapist = people[str(patient.therapist)]
        out["Encounter"].append(encounter_resource(sources, session, patient, therapist))
        out["DocumentReference"].append(document_resource(sources, session, patient, therapist))
        out["QuestionnaireResponse"] += questionnaire_resources(session, patient)
        out["Observation"] += observation_resources(session, patient)
    for resources in out.values():
        for resource in resources:
            validate(resource)
    return out


def validate(resource: Json) -> None:
    """Raise `SampleBuildError` unless `resource` validates with its R4B model."""
    kind = resource["resourceType"]
    try:
        get_fhir_model_class(kind).model_validate(resource)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise SampleBuildError(
            f"{kind}/{resource.get('id')} does not validate ({exc.error_count()} problems; "
            f"first: {where}: {first['msg']})"
        ) from exc


# ---------------------------------------------------------------------------------- output


def ndjson(resources: Sequence[Json]) -> bytes:
    """One compact JSON resource per line, UTF-8 (names such as "Zoë" stay readable)."""
    lines = (json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in resources)
    return "".join(lines).encode("utf-8")


def render(sources: Sources | None = None) -> dict[str, bytes]:
    """File name -> content of every file of the export."""
    built = build_resources(sources)
    return {f"{kind}.ndjson": ndjson(built[kind]) for kind in EXPORT_TYPES}


def write_export(out: Path | None = None, sources: Sources | None = None) -> list[Path]:
    """Write the export into `out` (default: the bundled export directory); returns the files."""
    out = out or sample_export_dir()
    files = render(sources)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, content in files.items():
        path = out / name
        path.write_bytes(content)
        written.append(path)
    return written


def stale_files(export_dir: Path | None = None, sources: Sources | None = None) -> list[str]:
    """Names of the export files that differ from what the sources build (or are missing)."""
    export_dir = export_dir or sample_export_dir()
    stale = []
    for name, content in render(sources).items():
        path = export_dir / name
        if not path.is_file() or path.read_bytes() != content:
            stale.append(name)
    return stale


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fhir_adapter.samples.build", description=DESCRIPTION
    )
    parser.add_argument("--out", type=Path, help="directory to write (default: the bundled one)")
    parser.add_argument("--sources", type=Path, help="sources directory (default: bundled)")
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if the export is stale"
    )
    args = parser.parse_args(argv)
    try:
        sources = load_sources(args.sources)
        if args.check:
            stale = stale_files(args.out, sources)
            if stale:
                print(
                    f"stale: {', '.join(stale)}; run python -m fhir_adapter.samples.build",
                    file=sys.stderr,
                )
                return 1
            print("the sample export is up to date")
            return 0
        written = write_export(args.out, sources)
    except SampleBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} files to {written[0].parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
