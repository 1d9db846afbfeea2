"""The CapabilityStatement this server answers at `/fhir/metadata`."""

from __future__ import annotations

from typing import Any

from fhir_adapter.api.includes import INCLUDE, REVINCLUDE
from fhir_adapter.api.search import PARAMETERS

_TYPES = {
    "date": "date",
    "authored-on": "date",
    "sent": "date",
    "recorded": "date",
    "patient": "reference",
    "subject": "reference",
    "encounter": "reference",
    "requester": "reference",
    "author": "reference",
}


def _includes(resource_type: str) -> dict[str, list[str]]:
    """searchInclude / searchRevInclude where there are any (FHIR has no empty arrays)."""
    out = {
        "searchInclude": [v for (t, v) in INCLUDE if t == resource_type],
        "searchRevInclude": [v for (t, v) in REVINCLUDE if t == resource_type],
    }
    return {k: v for k, v in out.items() if v}


def capability_statement(base_url: str, version: str) -> dict[str, Any]:
    common = [
        {"name": "_id", "type": "token"},
        {"name": "_lastUpdated", "type": "date"},
        {"name": "identifier", "type": "token"},
        {"name": "_count", "type": "number"},
        {"name": "_summary", "type": "token", "documentation": "count only"},
    ]
    resources = [
        {
            "type": rtype,
            "interaction": [
                {"code": "read"},
                {"code": "search-type"},
                {"code": "history-instance"},
            ],
            "versioning": "versioned",
            "searchParam": common
            + [{"name": name, "type": _TYPES.get(name, "token")} for name in params],
            **_includes(rtype),
        }
        for rtype, params in PARAMETERS.items()
    ]
    resources.append(
        {
            "type": "Measure",
            "interaction": [{"code": "read"}, {"code": "search-type"}],
            "searchParam": [{"name": "_id", "type": "token"}, {"name": "url", "type": "uri"}],
            "operation": [
                {
                    "name": "evaluate-measure",
                    "definition": "http://hl7.org/fhir/OperationDefinition/Measure-evaluate-measure",
                    "documentation": "periodStart, periodEnd, reportType (population, summary, "
                    "subject-list), practitioner, and clinic (an Organization; ours)",
                }
            ],
        }
    )
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-22",
        "kind": "instance",
        "software": {"name": "homework-fhir", "version": version},
        "implementation": {"description": "homework-fhir built-in store", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "service": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                    "code": "SMART-on-FHIR",
                                }
                            ]
                        }
                    ],
                    "description": "Bearer JWT (RS384/ES384), system/ scopes (e.g. system/Task.rs)",
                },
                "resource": resources,
            }
        ],
    }
