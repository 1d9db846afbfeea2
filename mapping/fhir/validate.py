"""Validation of what we emit and read: the R4B model, the narrative, and the profiles we claim.

fhir.resources checks structure and datatypes but not code values, XHTML, or profiles, so
`problems()` adds the checks for each profile a resource claims in meta.profile: the elements
US Core (and the AI Transparency IG) make mandatory, their fixed codes and invariants. It is not
a full profile validator; it checks every element we claim to fill.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from fhir.resources.R4B import get_fhir_model_class
from fhir_core.fhirabstractmodel import FHIRAbstractModel as Resource
from pydantic import ValidationError

from mapping.errors import ResourceError
from mapping.fhir.codes import (
    AI_DEVICE_TYPE,
    AI_INPUTS,
    AIAST,
    CAREPLAN_CATEGORY,
    OBSERVATION_CATEGORY,
    PROFILE_AI_DEVICE,
    PROFILE_AI_MODEL_CARD,
    PROFILE_AI_PROVENANCE,
    PROFILE_CAREPLAN,
    PROFILE_DOCUMENTREFERENCE,
    PROFILE_PROVENANCE,
    PROFILE_SCREENING,
    PROVENANCE_PARTICIPANT_TYPE,
    UCUM,
    V3_OBSERVATION_VALUE,
)
from mapping.fhir.references import parse_reference
from mapping.fhir.text import XHTML_NS

__all__ = ["as_json", "check", "parse", "parse_any", "problems"]

M = TypeVar("M", bound=Resource)

Json = Mapping[str, Any]


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ()))
    return f"{where}: {err.get('msg')}" if where else str(err.get("msg"))


def parse(data: Json, model: type[M]) -> M:
    """Validate `data` as `model` (an R4B class); ResourceError names the first bad element."""
    expected = model.get_resource_type()
    if data.get("resourceType") != expected:
        raise ResourceError(f"expected a {expected}, got {data.get('resourceType')!r}")
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        raise ResourceError(
            f"{expected} does not validate ({exc.error_count()} problems; first: "
            f"{_first_error(exc)})"
        ) from exc
    except (ValueError, TypeError, AttributeError, KeyError, RecursionError) as exc:
        # fhir.resources' own validators can fail outside pydantic (a number as a url).
        raise ResourceError(f"{expected} does not validate ({type(exc).__name__})") from exc


def parse_any(data: Json) -> Resource:
    """Validate a resource of any R4B type named by its resourceType."""
    rtype = data.get("resourceType")
    if not isinstance(rtype, str):
        raise ResourceError("not a FHIR resource: no resourceType")
    try:
        model = get_fhir_model_class(rtype)
    except (KeyError, ValueError, AttributeError, ImportError) as exc:
        raise ResourceError(f"unknown resourceType {rtype!r}") from exc
    return parse(data, model)


def as_json(resource: Resource) -> dict[str, Any]:
    """The resource as FHIR JSON (what the adapter sends)."""
    data: dict[str, Any] = resource.model_dump(mode="json", exclude_none=True)
    return data


# Required code bindings that fhir.resources leaves unchecked, for the resources we emit.
_STATUS: dict[str, dict[str, frozenset[str]]] = {
    "CarePlan": {
        "status": frozenset(
            {"draft", "active", "on-hold", "revoked", "completed", "entered-in-error", "unknown"}
        ),
        "intent": frozenset({"proposal", "plan", "order", "option"}),
    },
    "Task": {
        "status": frozenset(
            {
                "draft",
                "requested",
                "received",
                "accepted",
                "rejected",
                "ready",
                "cancelled",
                "in-progress",
                "on-hold",
                "failed",
                "completed",
                "entered-in-error",
            }
        ),
        "intent": frozenset(
            {
                "unknown",
                "proposal",
                "plan",
                "order",
                "original-order",
                "reflex-order",
                "filler-order",
                "instance-order",
                "option",
            }
        ),
    },
    "DocumentReference": {
        "status": frozenset({"current", "superseded", "entered-in-error"}),
        "docStatus": frozenset({"preliminary", "final", "amended", "entered-in-error"}),
    },
    "Communication": {
        "status": frozenset(
            {
                "preparation",
                "in-progress",
                "not-done",
                "on-hold",
                "stopped",
                "completed",
                "entered-in-error",
                "unknown",
            }
        ),
    },
    "Observation": {
        "status": frozenset(
            {
                "registered",
                "preliminary",
                "final",
                "amended",
                "corrected",
                "cancelled",
                "entered-in-error",
                "unknown",
            }
        ),
    },
    "Device": {"status": frozenset({"active", "inactive", "entered-in-error", "unknown"})},
    "AuditEvent": {
        "action": frozenset({"C", "R", "U", "D", "E"}),
        "outcome": frozenset({"0", "4", "8", "12"}),
    },
}


def _codings(concept: Any) -> list[Json]:
    if not isinstance(concept, Mapping):
        return []
    return [c for c in concept.get("coding", []) if isinstance(c, Mapping)]


def _has_coding(concepts: Any, system: str, code: str) -> bool:
    items = concepts if isinstance(concepts, list) else [concepts]
    return any(
        c.get("system") == system and c.get("code") == code
        for concept in items
        for c in _codings(concept)
    )


def _ref_type(ref: Any) -> str:
    parsed = parse_reference(ref) if isinstance(ref, Mapping) else None
    return parsed.resource_type if parsed else ""


def _narrative(data: Json) -> list[str]:
    text = data.get("text")
    if text is None:
        return []
    out = []
    if text.get("status") not in {"generated", "extensions", "additional", "empty"}:
        out.append(f"text.status {text.get('status')!r} is not a narrative status")
    try:
        root = ET.fromstring(text.get("div", ""))  # noqa: S314 - our own generated XHTML
    except ET.ParseError as exc:
        return [*out, f"text.div is not well-formed XHTML ({exc})"]
    if root.tag != f"{{{XHTML_NS}}}div":
        out.append("text.div must be a <div> in the XHTML namespace")
    return out


def _careplan(data: Json) -> list[str]:
    out = []
    text = data.get("text") or {}
    if text.get("status") not in {"generated", "additional"}:
        out.append("US Core CarePlan: text.status must be generated or additional")
    if not text.get("div"):
        out.append("US Core CarePlan: text.div is required")
    for element in ("status", "intent"):
        if not data.get(element):
            out.append(f"US Core CarePlan: {element} is required")
    if not _has_coding(data.get("category", []), CAREPLAN_CATEGORY, "assess-plan"):
        out.append("US Core CarePlan: category assess-plan is required")
    if _ref_type(data.get("subject")) not in {"Patient", "Group"}:
        out.append("US Core CarePlan: subject must reference a Patient")
    return out


def _documentreference(data: Json) -> list[str]:
    out = []
    if not data.get("status"):
        out.append("US Core DocumentReference: status is required")
    if not _codings(data.get("type")):
        out.append("US Core DocumentReference: type with a coding is required")
    if not any(_codings(c) for c in data.get("category", [])):
        out.append("US Core DocumentReference: category is required")
    if _ref_type(data.get("subject")) not in {"Patient", "Practitioner", "Group", "Device"}:
        out.append("US Core DocumentReference: subject is required")
    contents = data.get("content", [])
    if not contents:
        out.append("US Core DocumentReference: content is required")
    for n, content in enumerate(contents):
        attachment = content.get("attachment", {})
        if not attachment.get("contentType"):
            out.append(f"US Core DocumentReference: content[{n}].attachment.contentType missing")
        if not (attachment.get("data") or attachment.get("url")):
            out.append(f"US Core DocumentReference: content[{n}] needs data or url (us-core-6)")
    if len((data.get("context") or {}).get("encounter", [])) > 1:
        out.append("US Core DocumentReference: at most one context.encounter")
    return out


def _provenance(data: Json) -> list[str]:
    out = []
    targets = data.get("target", [])
    if not targets or not all(t.get("reference") for t in targets):
        out.append("US Core Provenance: target with reference is required")
    if not data.get("recorded"):
        out.append("US Core Provenance: recorded is required")
    agents = data.get("agent", [])
    if not agents:
        out.append("US Core Provenance: agent is required")
    for n, agent in enumerate(agents):
        if not agent.get("who"):
            out.append(f"US Core Provenance: agent[{n}].who is required")
        if _ref_type(agent.get("who")) in {"Practitioner", "Device"} and not agent.get(
            "onBehalfOf"
        ):
            out.append(f"US Core Provenance: agent[{n}] needs onBehalfOf (provenance-1)")
        if agent.get("onBehalfOf") and _ref_type(agent["onBehalfOf"]) != "Organization":
            out.append(f"US Core Provenance: agent[{n}].onBehalfOf must be an Organization")
    if not any(_has_coding(a.get("type"), PROVENANCE_PARTICIPANT_TYPE, "author") for a in agents):
        out.append("US Core Provenance: an author agent (ProvenanceAuthor) is expected")
    return out


def _screening(data: Json) -> list[str]:
    out = []
    if not data.get("status"):
        out.append("US Core Screening Assessment: status is required")
    if not _has_coding(data.get("category", []), OBSERVATION_CATEGORY, "survey"):
        out.append("US Core Screening Assessment: category survey is required")
    if not _codings(data.get("code")):
        out.append("US Core Screening Assessment: code is required")
    if _ref_type(data.get("subject")) not in {"Patient", "Group", "Device", "Location"}:
        out.append("US Core Screening Assessment: subject is required")
    effective = data.get("effectiveDateTime")
    if isinstance(effective, str) and len(effective) < 10:
        out.append("US Core Screening Assessment: effectiveDateTime needs a full date (us-core-1)")
    has_value = any(k.startswith("value") for k in data) or "dataAbsentReason" in data
    if not (data.get("component") or data.get("hasMember") or has_value):
        out.append("US Core Screening Assessment: value or dataAbsentReason required (us-core-2)")
    quantity = data.get("valueQuantity")
    if isinstance(quantity, Mapping) and quantity.get("system") not in (None, UCUM):
        out.append("US Core Screening Assessment: Quantity system must be UCUM (us-core-3)")
    return out


def _ai_device(data: Json) -> list[str]:
    if not _has_coding(data.get("type"), AI_DEVICE_TYPE, "Artificial-Intelligence"):
        return ["AI Device: type must be AIdeviceTypeCS#Artificial-Intelligence"]
    return []


def _ai_provenance(data: Json) -> list[str]:
    out = []
    if not data.get("target"):
        out.append("AI Provenance: target is required")
    if not _has_coding(data.get("reason", []), V3_OBSERVATION_VALUE, AIAST):
        out.append("AI Provenance: reason AIAST is required")
    ai_agents = [
        a
        for a in data.get("agent", [])
        if _ref_type(a.get("who")) == "Device"
        and _has_coding(a.get("role", []), AI_DEVICE_TYPE, "Artificial-Intelligence")
    ]
    if not ai_agents:
        out.append("AI Provenance: needs an agent with a Device and role Artificial-Intelligence")
    if any(not a.get("type") for a in ai_agents):
        out.append("AI Provenance: the AI agent needs a type")
    return out


def _ai_model_card(data: Json) -> list[str]:
    out = []
    if not _has_coding(data.get("type"), AI_INPUTS, "AIModelCard"):
        out.append("AI Model-Card: type must be AIinputsCS#AIModelCard")
    if not data.get("category"):
        out.append("AI Model-Card: category is required")
    return out


_PROFILES: dict[str, Callable[[Json], list[str]]] = {
    PROFILE_CAREPLAN: _careplan,
    PROFILE_DOCUMENTREFERENCE: _documentreference,
    PROFILE_PROVENANCE: _provenance,
    PROFILE_SCREENING: _screening,
    PROFILE_AI_DEVICE: _ai_device,
    PROFILE_AI_PROVENANCE: _ai_provenance,
    PROFILE_AI_MODEL_CARD: _ai_model_card,
}


def problems(resource: Resource | Json) -> list[str]:
    """What is wrong with `resource` for R4B, its narrative, its codes and its claimed profiles.

    An empty list means it validates. A profile this module has no checks for is reported,
    so that nothing claims a profile unchecked.
    """
    data = as_json(resource) if isinstance(resource, Resource) else dict(resource)
    try:
        parse_any(data)
    except ResourceError as exc:
        return [str(exc)]
    out = _narrative(data)
    for element, allowed in _STATUS.get(data["resourceType"], {}).items():
        value = data.get(element)
        if value is not None and value not in allowed:
            out.append(f"{element} {value!r} is not one of {sorted(allowed)}")
    for profile in (data.get("meta") or {}).get("profile", []):
        checker = _PROFILES.get(profile)
        if checker is None:
            out.append(f"no checks for claimed profile {profile}")
        else:
            out += checker(data)
    return out


def check(resource: Resource | Json) -> None:
    """Raise ResourceError listing the problems, if any."""
    found = problems(resource)
    if found:
        rtype = (
            resource.get_resource_type()
            if isinstance(resource, Resource)
            else resource.get("resourceType")
        )
        raise ResourceError(f"{rtype} would not validate: " + "; ".join(found))
