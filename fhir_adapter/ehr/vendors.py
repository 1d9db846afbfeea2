"""Vendor profiles: what an EHR refuses, or demands, whatever its CapabilityStatement says.

Kept as data so that a new quirk is one line here plus a test. `generic` trusts the server's
CapabilityStatement entirely; `epic` and `oracle-health` add the rules their public developer
documentation states and that integrations run into (their CapabilityStatements describe the
whole product, not what a given customer's build lets a backend app do).

Pure module: no IO, so settings validation and the start-up capability check can both use it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

__all__ = [
    "INTERACTIONS",
    "PROFILES",
    "Interaction",
    "Vendor",
    "VendorProfile",
    "document_reference_problems",
    "vendor_profile",
    "wildcard_scopes",
]

Vendor = Literal["epic", "oracle-health", "generic"]

# FHIR R4 TypeRestfulInteraction codes that matter to us.
Interaction = Literal[
    "read", "vread", "update", "patch", "delete", "history-instance", "history-type",
    "create", "search-type",
]  # fmt: skip
INTERACTIONS: frozenset[str] = frozenset(get_args(Interaction))


@dataclass(frozen=True)
class VendorProfile:
    """Rules for one vendor. `refused` maps (resource type, interaction) to the reason."""

    name: Vendor
    refused: Mapping[tuple[str, str], str] = field(default_factory=dict)
    # None: trust the CapabilityStatement's `conditionalCreate`.
    conditional_create: bool | None = None
    # Largest `_count` we send; the server may still cap lower (we follow `next` either way).
    max_page_size: int | None = None
    # The backend-app registration takes a JWK Set URL, so the connection must name ours.
    jwks_url_required: bool = False
    wildcard_scopes_allowed: bool = True
    document_reference_requires_final: bool = False
    document_reference_requires_period_end: bool = False
    # Where PHQ-9/GAD-7 answers are usually found, most likely first.
    questionnaire_sources: tuple[str, ...] = ("QuestionnaireResponse", "Observation")
    # Encounter search needs a patient (no population-wide search): poll a panel per patient.
    encounter_search_needs_patient: bool = False
    # Encounter search takes `_lastUpdated`, so a poll sees sessions charted late.
    encounter_last_updated: bool = True

    def refusal(self, resource_type: str, interaction: str) -> str | None:
        """Why this vendor refuses the interaction, or None when it does not."""
        return self.refused.get((resource_type, interaction))


_EPIC_CAREPLAN = "Epic's FHIR API offers no CarePlan.Create to backend apps"
_EPIC_TASK = "Epic's FHIR API offers no Task.Create (Task.Update is available)"
_ORACLE_CAREPLAN = "Oracle Health Millennium offers no CarePlan create"
_ORACLE_TASK = "Oracle Health Millennium offers no Task create"
# A reviewed note replaces the drafted one as a new note (relatesTo replaces): neither vendor
# lets a backend app update a filed clinical note in place.
_EPIC_NOTE_UPDATE = "Epic lets an app update only its own unsigned notes; file a new version"
_ORACLE_NOTE_UPDATE = "Oracle Health Millennium offers no DocumentReference update"

PROFILES: Mapping[Vendor, VendorProfile] = {
    "epic": VendorProfile(
        name="epic",
        refused={
            ("CarePlan", "create"): _EPIC_CAREPLAN,
            ("Task", "create"): _EPIC_TASK,
            ("DocumentReference", "update"): _EPIC_NOTE_UPDATE,
        },
        conditional_create=False,
        max_page_size=100,
        # Epic's backend-app registration takes a JWK Set URL, which is also how keys rotate.
        jwks_url_required=True,
        # Encounter.Search (R4) on fhir.epic.com: a patient is required; filters by `date`.
        encounter_search_needs_patient=True,
        encounter_last_updated=False,
    ),
    "oracle-health": VendorProfile(
        name="oracle-health",
        refused={
            ("CarePlan", "create"): _ORACLE_CAREPLAN,
            ("Task", "create"): _ORACLE_TASK,
            ("DocumentReference", "update"): _ORACLE_NOTE_UPDATE,
        },
        conditional_create=False,
        # Millennium's maximum `_count` varies by resource; 100 stays under the ones we read.
        max_page_size=100,
        # Millennium refuses `*` scope patterns: ask for each resource type explicitly.
        wildcard_scopes_allowed=False,
        # DocumentReference create takes only finished notes with a service period end.
        document_reference_requires_final=True,
        document_reference_requires_period_end=True,
        # PHQ-9/GAD-7 are mostly charted as Observations, rarely as QuestionnaireResponses.
        questionnaire_sources=("Observation", "QuestionnaireResponse"),
        # Millennium's Encounter search needs one of _id, patient, subject, account or
        # identifier, and takes `_lastUpdated` (docs.oracle.com, "Get a list of encounters").
        encounter_search_needs_patient=True,
    ),
    "generic": VendorProfile(name="generic"),
}


def vendor_profile(vendor: Vendor) -> VendorProfile:
    return PROFILES[vendor]


def wildcard_scopes(scopes: Iterable[str]) -> list[str]:
    """The scopes that use a `*` pattern (e.g. `system/*.read`, `system/Observation.*`)."""
    return [s for s in scopes if "*" in s]


def document_reference_problems(profile: VendorProfile, resource: Mapping[str, Any]) -> list[str]:
    """Why `profile` would refuse to create this DocumentReference (empty when it would not)."""
    problems: list[str] = []
    if profile.document_reference_requires_final and resource.get("docStatus") != "final":
        problems.append(
            f"{profile.name} accepts DocumentReference with docStatus 'final' only "
            f"(got {resource.get('docStatus')!r})"
        )
    if profile.document_reference_requires_period_end:
        context = resource.get("context")
        period = context.get("period") if isinstance(context, Mapping) else None
        if not isinstance(period, Mapping) or not period.get("end"):
            problems.append(
                f"{profile.name} requires DocumentReference.context.period.end "
                "(the end of the session)"
            )
    return problems
