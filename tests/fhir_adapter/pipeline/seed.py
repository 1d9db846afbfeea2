"""A small clinic, written by us, seeded into the FHIR server the pipeline polls.

Two patients of one practice (an Organization of its own per test, so that tests sharing the
session's sekmet server never see each other's encounters: the pipeline's connection polls
with `service-provider=<that Organization>`):

    Sam Rivera     therapist Dr. Maya Ortiz   plain-text transcripts (inline base64)
      session 1    sets homework: breathing every night before bed, a journal each evening
      session 2    reviews it ("last week you were going to journal every evening - how did
                   that go?") and sets a walk
    Jordan Blake   therapist Dr. Lena Park    WebVTT (inline), then plain text held in a
      session 1    sets homework: read the sleep handout, keep a thought record each evening
      session 2    Binary the DocumentReference points at by `url` (fetched by the pipeline);
                   talk about a sister's visit, no follow-up of the homework

Each finished session has a PHQ-9 QuestionnaireResponse filled in just before it (one names
its encounter, the other does not and is linked by date). Sam also has an encounter still
in progress, which the poller must leave alone.

The homework and the review are unmistakable on purpose: the tests assert on the pipeline's
structure and review flow, and the statistical model must not be the reason they fail.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.fhir_adapter.sekmet_server import SekmetServer

SEED_SYSTEM = "urn:homework-fhir:test-seed"

SAM_SESSION_1 = """\
Dr. Ortiz: Good to see you, Sam. How has the week been?
Sam: Pretty stressful. Work deadlines, and I am not sleeping well.
Dr. Ortiz: That sounds hard. Earlier today I showed you the slow breathing, in for four and out for six.
Sam: It felt strange at first, but I calmed down a little.
Dr. Ortiz: This week, every night before bed, practise the breathing for ten minutes.
Sam: Okay. Every night before bed, ten minutes. I can do that.
Dr. Ortiz: And I'd like you to write down your worried thoughts in a journal each evening, just a few lines.
Sam: A journal each evening, sure. I have a notebook I can use.
Dr. Ortiz: Tell me a little more about the deadlines at work.
Sam: My manager moved the launch forward by two weeks.
"""  # noqa: E501 - transcript lines are as long as people speak

SAM_SESSION_2 = """\
Dr. Ortiz: Welcome back, Sam.
Sam: Hi. It was a better week, I think.
Dr. Ortiz: Last week you were going to journal every evening and practise the breathing before bed. How did that go?
Sam: I wrote in the journal on five evenings, and I did the breathing most nights before bed.
Dr. Ortiz: That's a lot of practice. What did you notice in the journal entries?
Sam: Most of the worries were about work, and they looked smaller once they were on paper.
Dr. Ortiz: Before we meet again, go for a twenty minute walk after work on three days this week.
Sam: Three walks after work. Okay, I will try.
"""  # noqa: E501 - transcript lines are as long as people speak

JORDAN_SESSION_1 = """\
WEBVTT

00:00:01.000 --> 00:00:05.000
<v Dr. Lena Park>Hi Jordan, how have you been sleeping since we last met?</v>

00:00:05.500 --> 00:00:10.000
<v Jordan Blake>Badly. I lie awake for hours going over everything.</v>

00:00:10.500 --> 00:00:18.000
<v Dr. Lena Park>Before our next session, please read the handout on sleep hygiene that I gave you today.</v>

00:00:18.500 --> 00:00:21.000
<v Jordan Blake>Okay, I will read it this week.</v>

00:00:21.500 --> 00:00:30.000
<v Dr. Lena Park>And each evening, write down the thoughts that keep you awake in a thought record, with how strongly you believed them.</v>

00:00:30.500 --> 00:00:34.000
<v Jordan Blake>Every evening. Fine, I can keep a record of them.</v>
"""  # noqa: E501 - transcript lines are as long as people speak

JORDAN_SESSION_2 = """\
Dr. Park: Hello Jordan, come on in and take a seat.
Jordan: Thanks. Sorry I'm a bit late.
Dr. Park: That's fine. Today I'd like us to talk about your sister.
Jordan: Okay. She is visiting next month.
Dr. Park: You sound excited about her visit.
Jordan: I am. We have not seen each other in a year.
Dr. Park: Tell me about your sister.
Jordan: She is older than me, a nurse, very organised.
Dr. Park: You are smiling as you say that.
Jordan: Yeah. She looked after me when we were kids.
"""

# PHQ-9 item LOINC codes and the LOINC answer codes for weights 0-3.
PHQ9_ITEMS = ("44250-9", "44255-8", "44259-0", "44254-1", "44251-7", "44258-2", "44252-5",
              "44253-3", "44260-8")  # fmt: skip
ANSWERS = (("LA6568-5", "Not at all"), ("LA6569-3", "Several days"),
           ("LA6570-1", "More than half the days"), ("LA6571-9", "Nearly every day"))  # fmt: skip


@dataclass(frozen=True)
class SessionPlan:
    transcript: str
    content_type: str
    days_ago: float
    by_url: bool = False  # the transcript is a Binary the DocumentReference links to
    phq9: tuple[int, ...] = (1, 1, 1, 0, 1, 0, 0, 0, 0)
    phq9_names_encounter: bool = True


@dataclass(frozen=True)
class PatientPlan:
    key: str
    given: str
    family: str
    therapist_given: str
    therapist_family: str
    sessions: tuple[SessionPlan, ...]


SAM = PatientPlan(
    "sam", "Sam", "Rivera", "Maya", "Ortiz",
    (SessionPlan(SAM_SESSION_1, "text/plain; charset=utf-8", 8),
     SessionPlan(SAM_SESSION_2, "text/plain; charset=utf-8", 1, phq9=(1, 0, 1, 0, 0, 0, 0, 0, 0),
                 phq9_names_encounter=False)),
)  # fmt: skip
JORDAN = PatientPlan(
    "jordan", "Jordan", "Blake", "Lena", "Park",
    (SessionPlan(JORDAN_SESSION_1, "text/vtt", 7.5, phq9=(2, 2, 3, 1, 1, 1, 0, 1, 0)),
     SessionPlan(JORDAN_SESSION_2, "text/plain", 0.5, by_url=True)),
)  # fmt: skip
PLANS = (SAM, JORDAN)


@dataclass
class SeededPatient:
    key: str
    patient: str  # "Patient/<id>" as the server named it
    practitioner: str
    name: str
    encounters: list[str] = field(default_factory=list)  # in session order
    transcripts: list[str] = field(default_factory=list)


@dataclass
class Clinic:
    """What was seeded; references as the server assigned them."""

    tag: str
    organization: str
    patients: dict[str, SeededPatient]
    in_progress: str | None = None
    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    plans: tuple[PatientPlan, ...] = PLANS  # the patients seeded, in order
    group: str | None = None  # "Group/<id>": the clinic's patients, for per-patient polls

    @property
    def encounters(self) -> list[str]:
        return [e for p in self.patients.values() for e in p.encounters]

    def poll(self, per_patient: bool = False) -> dict[str, Any]:
        """The connection's `encounter_poll` settings: this clinic's encounters only (with
        `per_patient`, asked patient by patient from the clinic's Group, as Epic and Oracle
        Health require)."""
        poll: dict[str, Any] = {
            "lookback": timedelta(days=30),
            "extra_params": {"service-provider": self.organization},
        }
        if per_patient:
            poll.update(scope="group", group=self.group)
        return poll


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def seed_clinic(
    server: SekmetServer, *, sessions: int = 2, in_progress: bool = True,
    plans: Sequence[PatientPlan] = PLANS, now: datetime | None = None,
) -> Clinic:  # fmt: skip
    """Seed the practice, its patients (`plans`: Sam and Jordan unless told) and their first
    `sessions` sessions, dated back from `now` (the present unless told: a past `now` seeds
    old sessions, for a backfill)."""
    tag = uuid.uuid4().hex[:10]
    org_url = _urn()
    resources: list[dict[str, Any]] = [
        {"fullUrl": org_url, "resourceType": "Organization", "active": True,
         "identifier": [{"system": SEED_SYSTEM, "value": f"org-{tag}"}],
         "name": f"Riverside Counselling {tag}"},
    ]  # fmt: skip
    urls: dict[str, tuple[str, str]] = {}
    for plan in plans:
        patient_url, practitioner_url = _urn(), _urn()
        urls[plan.key] = (patient_url, practitioner_url)
        resources.append(
            {"fullUrl": patient_url, "resourceType": "Patient",
             "identifier": [{"system": SEED_SYSTEM, "value": f"{plan.key}-{tag}"}],
             "name": [{"given": [plan.given], "family": plan.family}],
             "gender": "unknown", "birthDate": "1990-04-02"}
        )  # fmt: skip
        resources.append(
            {"fullUrl": practitioner_url, "resourceType": "Practitioner",
             "identifier": [{"system": SEED_SYSTEM, "value": f"dr-{plan.key}-{tag}"}],
             "name": [{"prefix": ["Dr."], "given": [plan.therapist_given],
                       "family": plan.therapist_family}]}
        )  # fmt: skip
    refs = server.seed(resources)
    clinic = Clinic(tag=tag, organization=refs[0], patients={}, plans=tuple(plans))
    if now is not None:
        clinic.now = now
    for i, plan in enumerate(plans):
        clinic.patients[plan.key] = SeededPatient(
            key=plan.key,
            patient=refs[1 + 2 * i],
            practitioner=refs[2 + 2 * i],
            name=f"{plan.given} {plan.family}",
        )
    [clinic.group] = server.seed([{
        "resourceType": "Group", "type": "person", "actual": True,
        "name": f"Riverside Counselling {tag} panel",
        "member": [{"entity": {"reference": p.patient}} for p in clinic.patients.values()],
    }])  # fmt: skip
    for number in range(1, sessions + 1):
        seed_session(server, clinic, number)
    if in_progress:
        first = clinic.plans[0]
        start = clinic.now - timedelta(minutes=20)
        [clinic.in_progress] = server.seed(
            [_encounter(clinic, first, clinic.patients[first.key], start, None,
                        status="in-progress")]
        )  # fmt: skip
    return clinic


def _encounter(
    clinic: Clinic, plan: PatientPlan, seeded: SeededPatient, start: datetime,
    end: datetime | None, status: str = "finished", full_url: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    period = {"start": _iso(start), **({"end": _iso(end)} if end else {})}
    body: dict[str, Any] = {
        "resourceType": "Encounter",
        "identifier": [{"system": SEED_SYSTEM, "value": f"enc-{uuid.uuid4().hex[:12]}"}],
        "status": status,
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB",
                  "display": "ambulatory"},
        "type": [{"coding": [{"system": "http://snomed.info/sct", "code": "90526000",
                              "display": "Psychotherapy"}]}],
        "subject": {"reference": seeded.patient, "display": seeded.name},
        "participant": [{
            "type": [{"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                "code": "PPRF", "display": "primary performer"}]}],
            "individual": {"reference": seeded.practitioner,
                           "display": f"Dr. {plan.therapist_given} {plan.therapist_family}"},
        }],
        "period": period,
        "serviceProvider": {"reference": clinic.organization},
    }  # fmt: skip
    if full_url:
        body["fullUrl"] = full_url
    return body


def _phq9(
    seeded: SeededPatient, session: SessionPlan, authored: datetime, encounter: str | None
) -> dict[str, Any]:
    items = []
    for code, weight in zip(PHQ9_ITEMS, session.phq9, strict=True):
        answer, display = ANSWERS[weight]
        items.append({"linkId": f"/{code}", "answer": [{"valueCoding": {
            "system": "http://loinc.org", "code": answer, "display": display}}]})  # fmt: skip
    body: dict[str, Any] = {
        "resourceType": "QuestionnaireResponse",
        "identifier": {"system": SEED_SYSTEM, "value": f"phq9-{uuid.uuid4().hex[:12]}"},
        "questionnaire": "http://loinc.org/q/44249-1",
        "status": "completed",
        "subject": {"reference": seeded.patient},
        "authored": _iso(authored),
        "author": {"reference": seeded.patient},
        "item": items,
    }
    if encounter is not None:
        body["encounter"] = {"reference": encounter}
    return body


def transcript_document(
    seeded: SeededPatient, encounter: str, session: SessionPlan, start: datetime,
    end: datetime, binary_id: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The transcript's DocumentReference: inline base64, or a url to `Binary/<binary_id>`."""
    attachment: dict[str, Any] = {"contentType": session.content_type, "title": "Transcript"}
    if binary_id is not None:
        attachment["url"] = f"Binary/{binary_id}"
    else:
        attachment["data"] = _b64(session.transcript)
    return {
        "resourceType": "DocumentReference",
        "identifier": [{"system": SEED_SYSTEM, "value": f"tx-{uuid.uuid4().hex[:12]}"}],
        "status": "current",
        "type": {"coding": [{"system": "http://loinc.org", "code": "11488-4",
                             "display": "Consult note"}], "text": "Session transcript"},
        "subject": {"reference": seeded.patient},
        "date": _iso(end),
        "content": [{"attachment": attachment}],
        "context": {"encounter": [{"reference": encounter}],
                    "period": {"start": _iso(start), "end": _iso(end)}},
    }  # fmt: skip


def seed_session(server: SekmetServer, clinic: Clinic, number: int) -> None:
    """Seed session `number` (1-based) of every patient: Encounter, transcript, PHQ-9."""
    for plan in clinic.plans:
        seeded = clinic.patients[plan.key]
        session = plan.sessions[number - 1]
        start = clinic.now - timedelta(days=session.days_ago)
        end = start + timedelta(minutes=50)
        [encounter] = server.seed([_encounter(clinic, plan, seeded, start, end)])
        batch: list[dict[str, Any]] = []
        binary_id = None
        if session.by_url:
            binary_id = f"tx-{clinic.tag}-{plan.key}-{number}"
            batch.append({"resourceType": "Binary", "id": binary_id,
                          "contentType": session.content_type,
                          "data": _b64(session.transcript)})  # fmt: skip
        batch.append(transcript_document(seeded, encounter, session, start, end, binary_id))
        named = encounter if session.phq9_names_encounter else None
        batch.append(_phq9(seeded, session, start - timedelta(minutes=15), named))
        refs = server.seed(batch)
        seeded.encounters.append(encounter)
        seeded.transcripts.append(refs[-2])


def entries(bundle: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle.get("entry") or [] if "resource" in e]


def ehr_resources(
    server: SekmetServer, resource_type: str, params: Mapping[str, str]
) -> list[dict[str, Any]]:
    """Every match of a search on the server (not through our client), all pages."""
    found: list[dict[str, Any]] = []
    bundle = server.admin_get(resource_type, {**params, "_count": "200"})
    found += [r for r in entries(bundle) if r.get("resourceType") == resource_type]
    assert not any(link.get("relation") == "next" for link in bundle.get("link") or []), (
        "more than 200 matches; the test data should be small"
    )
    return found


def clinic_resources(server: SekmetServer, clinic: Clinic) -> list[dict[str, Any]]:
    """Everything of the clinic on the server, as an EHR would push or export it (a
    transcript given by url comes with its Binary)."""
    out: list[dict[str, Any]] = []
    for seeded in clinic.patients.values():
        out.append(server.admin_get(seeded.patient))
        out.append(server.admin_get(seeded.practitioner))
        for encounter in seeded.encounters:
            out.append(server.admin_get(encounter))
        docs = ehr_resources(server, "DocumentReference", {"subject": seeded.patient})
        for doc in docs:
            if not any(i.get("system") == SEED_SYSTEM for i in doc.get("identifier") or []):
                continue  # one of ours: a note the pipeline wrote
            out.append(doc)
            for content in doc["content"]:
                if content["attachment"].get("url"):
                    out.append(server.admin_get(content["attachment"]["url"]))
        # sekmet cannot search QuestionnaireResponse by patient (it ignores the parameter).
        responses = ehr_resources(server, "QuestionnaireResponse", {"subject": seeded.patient})
        out += [r for r in responses if r["subject"]["reference"] == seeded.patient]
    return out


def write_export(resources: Sequence[Mapping[str, Any]], directory: Path) -> Path:
    """A Bulk Data export: one `Type.ndjson` per resource type."""
    directory.mkdir(parents=True, exist_ok=True)
    by_type: dict[str, list[str]] = {}
    for resource in resources:
        by_type.setdefault(resource["resourceType"], []).append(json.dumps(resource))
    for rtype, lines in by_type.items():
        (directory / f"{rtype}.ndjson").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory


def transaction(resources: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A transaction Bundle of PUTs, as an EHR's push would send them."""
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": f"{r['resourceType']}/{r['id']}", "resource": dict(r),
             "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
            for r in resources
        ],
    }  # fmt: skip
