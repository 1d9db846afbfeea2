"""Provenance: one per write, naming the model (a Device) as the author of the targets.

Claims US Core Provenance and AI Provenance (AI Transparency IG): reason AIAST, an author
agent whose `who` is the model's Device with role Artificial-Intelligence, `onBehalfOf` the
organization, the transcript as source entity and the model card as derivation entity.
US Core requires `onBehalfOf` for a Device agent (provenance-1); without an organization in the
context the Provenance claims only the AI Provenance profile.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from fhir.resources.R4B.provenance import Provenance

from mapping.errors import ResourceError
from mapping.fhir.codes import (
    PROFILE_AI_PROVENANCE,
    PROFILE_PROVENANCE,
    PROVENANCE_PARTICIPANT_TYPE,
    SID_DEVICE,
    V3_DATA_OPERATION,
    ai_asserted,
    ai_device_type,
    coding,
)
from mapping.fhir.context import EncounterContext, ModelInfo
from mapping.fhir.device import device_id, model_card_id
from mapping.fhir.identifiers import device_value, identifier, provenance_value
from mapping.fhir.text import instant
from mapping.fhir.validate import parse

__all__ = ["build_chart_provenance", "build_provenance"]

Activity = Literal["CREATE", "UPDATE"]


def build_provenance(
    ctx: EncounterContext,
    model: ModelInfo,
    targets: Sequence[str],
    *,
    now: datetime,
    activity: Activity = "CREATE",
) -> Provenance:
    """Provenance for one write of `targets` ("Type/id" references) made from this session."""
    if not targets:
        raise ResourceError("a Provenance needs at least one target")
    # R4 Provenance has no identifier element: the stable logical id alone keeps reruns idempotent.
    value = provenance_value(ctx.encounter_key, model.name, model.version)
    agent: dict[str, Any] = {
        "type": {"coding": [coding(PROVENANCE_PARTICIPANT_TYPE, "author", "Author")]},
        "role": [{"coding": [ai_device_type()]}],
        "who": {
            "reference": f"Device/{device_id(model)}",
            "display": f"{model.name} {model.version}",
        },
    }
    profiles = [PROFILE_AI_PROVENANCE]
    if ctx.organization is not None:
        agent["onBehalfOf"] = ctx.organization.as_json()
        profiles.insert(0, PROFILE_PROVENANCE)
    data: dict[str, Any] = {
        "resourceType": "Provenance",
        "id": value,
        "meta": {"profile": profiles},
        "target": [{"reference": t} for t in targets],
        "recorded": instant(now),
        "activity": {"coding": [coding(V3_DATA_OPERATION, activity, activity.lower())]},
        "reason": [{"coding": [ai_asserted()]}],
        "agent": [agent],
        "entity": [
            {"role": "source", "what": ctx.source_transcript().as_json()},
            {
                "role": "derivation",
                "what": {
                    "reference": f"DocumentReference/{model_card_id(model)}",
                    "display": f"Model card of {model.name} {model.version}",
                },
            },
        ],
    }
    return parse(data, Provenance)


def build_chart_provenance(
    ctx: EncounterContext, model: ModelInfo, note: str, *, now: datetime
) -> Provenance:
    """Provenance for the chart note, written into the EHR after the note itself.

    `note` is the note's reference in the EHR ("DocumentReference/123", known only once the
    EHR has assigned it). The EHR holds no Device for our model, so the model is named by
    identifier and display (a logical reference) instead of a literal one; no `id`: the EHR
    assigns it.
    """
    built = build_provenance(ctx, model, [note], now=now).model_dump(mode="json", exclude_none=True)
    built.pop("id", None)
    built["agent"][0]["who"] = {
        "identifier": identifier(SID_DEVICE, device_value(model.name, model.version)),
        "display": f"{model.name} {model.version}",
    }
    built["entity"] = [e for e in built["entity"] if e["role"] == "source"]
    return parse(built, Provenance)
