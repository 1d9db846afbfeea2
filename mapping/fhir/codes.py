"""Systems, codes, profiles and extensions the builders use, in one place.

Our own codes live in the FHIR JSON CodeSystems under `mapping/terminology/` (displays are read
from there); this module holds only their canonical URLs and the external systems we cite.
"""

from __future__ import annotations

from typing import Final

from mapping.domain import HomeworkLabel

# Our canonical base: CodeSystems, ValueSets and identifier systems hang off it.
BASE_URL: Final = "https://homework-fhir.org/fhir"

CS_HOMEWORK_CATEGORY: Final = f"{BASE_URL}/CodeSystem/homework-category"
CS_REVIEW_STATUS: Final = f"{BASE_URL}/CodeSystem/homework-review-status"
CS_TASK_PARAMETER: Final = f"{BASE_URL}/CodeSystem/homework-task-parameter"
CS_SCREENING_INTERPRETATION: Final = f"{BASE_URL}/CodeSystem/screening-interpretation"
CS_CLINICIAN_DECISION: Final = f"{BASE_URL}/CodeSystem/clinician-decision"

# Identifier systems ("sid" as in HL7's naming); values are derived in `identifiers.py`.
SID_CAREPLAN: Final = f"{BASE_URL}/sid/careplan"
SID_TASK: Final = f"{BASE_URL}/sid/task"
SID_NOTE: Final = f"{BASE_URL}/sid/note"
SID_COMMUNICATION: Final = f"{BASE_URL}/sid/communication"
SID_DEVICE: Final = f"{BASE_URL}/sid/device"
SID_MODEL_CARD: Final = f"{BASE_URL}/sid/model-card"
SID_OBSERVATION: Final = f"{BASE_URL}/sid/observation"
SID_NOTE_VERSION: Final = f"{BASE_URL}/sid/note-version"  # one value per version of the note
SID_SMART_LAUNCH: Final = f"{BASE_URL}/sid/smart-launch"

HOMEWORK: Final = "homework"  # the grouping code, used as CarePlan category

# The model's labels use an underscore; FHIR codes here use a hyphen.
LABEL_CODES: Final[dict[HomeworkLabel, str]] = {
    HomeworkLabel.PRACTICE: "practice",
    HomeworkLabel.TAKE_ACTION: "take-action",
    HomeworkLabel.JOURNAL: "journal",
    HomeworkLabel.LEARN: "learn",
}

# Task.input / Task.output types (CS_TASK_PARAMETER).
P_THERAPIST_QUOTE: Final = "therapist-quote"
P_CLIENT_REPLY: Final = "client-reply"
P_SOURCE_DOCUMENT: Final = "source-document"
P_SOURCE_POSITION: Final = "source-position"
P_REVIEW_ENCOUNTER: Final = "review-encounter"
P_REVIEW_QUOTE: Final = "review-quote"
P_REVIEW_POSITION: Final = "review-position"
P_MODEL_CATEGORY: Final = "model-category"
REVIEW_PARAMETERS: Final = frozenset({P_REVIEW_ENCOUNTER, P_REVIEW_QUOTE, P_REVIEW_POSITION})

# External code systems.
LOINC: Final = "http://loinc.org"
UCUM: Final = "http://unitsofmeasure.org"
V3_OBSERVATION_VALUE: Final = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
V3_OBSERVATION_INTERPRETATION: Final = (
    "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
)
V3_DATA_OPERATION: Final = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
PROVENANCE_PARTICIPANT_TYPE: Final = (
    "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
)
CAREPLAN_CATEGORY: Final = "http://hl7.org/fhir/us/core/CodeSystem/careplan-category"
US_CORE_DOCREF_CATEGORY: Final = (
    "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category"
)
OBSERVATION_CATEGORY: Final = "http://terminology.hl7.org/CodeSystem/observation-category"
COMMUNICATION_CATEGORY: Final = "http://terminology.hl7.org/CodeSystem/communication-category"
AUDIT_EVENT_TYPE: Final = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL_INTERACTION: Final = "http://hl7.org/fhir/restful-interaction"
AUDIT_ENTITY_TYPE: Final = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
AUDIT_OBJECT_ROLE: Final = "http://terminology.hl7.org/CodeSystem/object-role"
AUDIT_SOURCE_TYPE: Final = "http://terminology.hl7.org/CodeSystem/audit-source-type"
V3_PARTICIPATION_TYPE: Final = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
DATA_ABSENT_REASON: Final = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
IHE_FORMAT_CODE: Final = "http://ihe.net/fhir/ihe.formatcode.fhir/CodeSystem/formatcode"
MIME_SUFFICIENT: Final = "urn:ihe:iti:xds:2017:mimeTypeSufficient"

# AI Transparency on FHIR (HL7 ballot 1.0.0): security label, profiles, codes, extensions.
AIAST: Final = "AIAST"
AIAST_DISPLAY: Final = "Artificial Intelligence asserted"
AI_IG: Final = "http://hl7.org/fhir/uv/aitransparency"
# The IG's own label codes (CodeSystem "Added Provenance Codes", in its ProvenanceVS for
# meta.security beside v3-ObservationValue#AIAST): CLINAST_AIRPT, "Clinician Asserted from AI
# Reported", is content a clinician reviewed and asserted after an AI reported it.
AI_ADDED_PROVENANCE: Final = f"{AI_IG}/CodeSystem/AddedProvenanceCS"
CLINAST_AIRPT: Final = "CLINAST_AIRPT"
CLINAST_AIRPT_DISPLAY: Final = "Clinician Asserted from AI Reported"
AI_DEVICE_TYPE: Final = f"{AI_IG}/CodeSystem/AIdeviceTypeCS"
AI_INPUTS: Final = f"{AI_IG}/CodeSystem/AIinputsCS"
PROFILE_AI_DEVICE: Final = f"{AI_IG}/StructureDefinition/AI-Device"
PROFILE_AI_PROVENANCE: Final = f"{AI_IG}/StructureDefinition/AI-Provenance"
PROFILE_AI_MODEL_CARD: Final = f"{AI_IG}/StructureDefinition/AI-ModelCard"
EXT_AI_CONFIDENCE: Final = f"{AI_IG}/StructureDefinition/AIconfidence"
# DS4P inline security label: a label on one element (R4B meta.security labels whole resources).
EXT_INLINE_SECURITY_LABEL: Final = (
    "http://hl7.org/fhir/uv/security-label-ds4p/StructureDefinition/extension-inline-sec-label"
)
EXT_AI_KIND: Final = f"{AI_IG}/StructureDefinition/aitransparency.AIKind"
EXT_MODEL_CARD: Final = f"{AI_IG}/StructureDefinition/aitransparency.modelCardDescription"

# US Core profiles we claim.
US_CORE: Final = "http://hl7.org/fhir/us/core/StructureDefinition"
PROFILE_CAREPLAN: Final = f"{US_CORE}/us-core-careplan"
PROFILE_DOCUMENTREFERENCE: Final = f"{US_CORE}/us-core-documentreference"
PROFILE_PROVENANCE: Final = f"{US_CORE}/us-core-provenance"
PROFILE_SCREENING: Final = f"{US_CORE}/us-core-observation-screening-assessment"

# Core extensions read on questionnaire answers.
EXT_ORDINAL_VALUE: Final = "http://hl7.org/fhir/StructureDefinition/ordinalValue"
EXT_ITEM_WEIGHT: Final = "http://hl7.org/fhir/StructureDefinition/itemWeight"


def coding(system: str, code: str, display: str | None = None) -> dict[str, str]:
    """A Coding as a JSON dict (display left out when None)."""
    out = {"system": system, "code": code}
    if display is not None:
        out["display"] = display
    return out


def ai_device_type() -> dict[str, str]:
    """The AI Transparency Device.type / agent role: any kind of artificial intelligence."""
    return coding(AI_DEVICE_TYPE, "Artificial-Intelligence", "All kinds of Artificial Intelligence")


def ai_asserted() -> dict[str, str]:
    """The meta.security label for resources whose content an AI asserted."""
    return coding(V3_OBSERVATION_VALUE, AIAST, AIAST_DISPLAY)


def clinician_asserted_ai_reported() -> dict[str, str]:
    """The meta.security label once a clinician has reviewed and asserted what an AI drafted."""
    return coding(AI_ADDED_PROVENANCE, CLINAST_AIRPT, CLINAST_AIRPT_DISPLAY)
