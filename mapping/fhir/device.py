"""Device and model card: the model as the AI Transparency IG names it.

The Device (AI Device profile) carries the model's name, version and kind and points to its
model card, a DocumentReference (AI Model-Card profile) whose attachment is the card's URL.
Both live in our FHIR store with ids derived from name + version.
"""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B.device import Device
from fhir.resources.R4B.documentreference import DocumentReference

from mapping.fhir.codes import (
    AI_DEVICE_TYPE,
    AI_INPUTS,
    EXT_AI_KIND,
    EXT_MODEL_CARD,
    PROFILE_AI_DEVICE,
    PROFILE_AI_MODEL_CARD,
    SID_DEVICE,
    SID_MODEL_CARD,
    ai_device_type,
    coding,
)
from mapping.fhir.context import ModelInfo
from mapping.fhir.identifiers import device_value, identifier, model_card_value
from mapping.fhir.validate import parse

__all__ = ["build_device", "build_model_card", "device_id", "model_card_id"]

_KIND_DISPLAY = {
    "Machine-Learning-Models": "Machine Learning Models",
    "Deep-Learning-Models": "Deep Learning Models",
    "Foundation-Models": "Foundation Models",
    "Large-Language-Models": "Large Language Models",
    "Hybrid-Models": "Hybrid Models",
}


def device_id(model: ModelInfo) -> str:
    return device_value(model.name, model.version)


def model_card_id(model: ModelInfo) -> str:
    return model_card_value(model.name, model.version)


def build_device(model: ModelInfo) -> Device:
    value = device_id(model)
    data: dict[str, Any] = {
        "resourceType": "Device",
        "id": value,
        "meta": {"profile": [PROFILE_AI_DEVICE]},
        "extension": [
            {
                "url": EXT_AI_KIND,
                "valueCodeableConcept": {
                    "coding": [coding(AI_DEVICE_TYPE, model.kind, _KIND_DISPLAY[model.kind])]
                },
            },
            {
                "url": EXT_MODEL_CARD,
                "valueReference": {"reference": f"DocumentReference/{model_card_id(model)}"},
            },
        ],
        "identifier": [identifier(SID_DEVICE, value)],
        "status": "active",
        "deviceName": [{"name": model.name, "type": "model-name"}],
        "type": {
            "coding": [ai_device_type()],
            "text": "Artificial intelligence model",
        },
        "version": [{"value": model.version}],
    }
    if model.manufacturer:
        data["manufacturer"] = model.manufacturer
    return parse(data, Device)


def build_model_card(model: ModelInfo) -> DocumentReference:
    value = model_card_id(model)
    data: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "id": value,
        "meta": {"profile": [PROFILE_AI_MODEL_CARD]},
        "identifier": [identifier(SID_MODEL_CARD, value)],
        "status": "current",
        "type": {"coding": [coding(AI_INPUTS, "AIModelCard", "AI Model-Card")]},
        "category": [
            {"coding": [coding(AI_INPUTS, "AIModelCardMarkdownFormat", "Markdown Format")]}
        ],
        "description": f"Model card of {model.name} {model.version}",
        "content": [
            {
                "attachment": {
                    "contentType": "text/markdown",
                    "url": model.model_card_url,
                    "title": f"{model.name} {model.version} model card",
                }
            }
        ],
    }
    return parse(data, DocumentReference)
