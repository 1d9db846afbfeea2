"""Start-up check of the write targets and of the scopes for what the pipeline reads: against
sekmet-fhir's real CapabilityStatement and token endpoint, and against statements written here
for what sekmet cannot show (a server lacking interactions)."""

from __future__ import annotations

from typing import Any

import pytest

from fhir_adapter.ehr.capabilities import (
    ServerCapabilities,
    read_problems,
    scope_grants,
    target_problems,
    verify_write_targets,
)
from fhir_adapter.ehr.client import FhirClient
from fhir_adapter.ehr.errors import CapabilityError
from fhir_adapter.ehr.vendors import vendor_profile
from fhir_adapter.settings import EhrConnection
from tests.fhir_adapter.sekmet_server import SekmetServer

ALL_TARGETS: dict[str, Any] = {
    "chart": {"note": True, "communication": True, "provenance": True},
    "care_plan_store": "ehr",
}
# What fetching a session's inputs reads (Patient, transcripts and their Binary, PHQ-9/GAD-7).
INPUT_SCOPES = (
    "system/Patient.r system/DocumentReference.s system/Binary.r "
    "system/QuestionnaireResponse.s system/Observation.s"
)


@pytest.mark.integration
async def test_all_targets_pass_on_a_generic_server_that_supports_them(
    sekmet_server: SekmetServer,
) -> None:
    conn = sekmet_server.connection("rs384", write=ALL_TARGETS)
    async with FhirClient(conn) as fhir:
        caps = await verify_write_targets(conn, fhir)
    assert caps.supports("CarePlan", "create")


@pytest.mark.integration
async def test_epic_profile_refuses_care_plans_in_the_ehr(sekmet_server: SekmetServer) -> None:
    conn = sekmet_server.connection("rs384", name="clinic", vendor="epic", write=ALL_TARGETS)
    async with FhirClient(conn) as fhir:
        with pytest.raises(CapabilityError) as info:
            await verify_write_targets(conn, fhir)
    error = info.value
    assert error.connection == "clinic"
    # The server itself would take them; the vendor rule is what refuses.
    assert error.problems == (
        "ehr.clinic.write.care_plan_store needs CarePlan create, refused by vendor epic: Epic's "
        "FHIR API offers no CarePlan.Create to backend apps; set "
        'ehr.clinic.write.care_plan_store = "builtin", or a FHIR store that accepts them',
        "ehr.clinic.write.care_plan_store needs Task create, refused by vendor epic: Epic's "
        "FHIR API offers no Task.Create (Task.Update is available); set "
        'ehr.clinic.write.care_plan_store = "builtin", or a FHIR store that accepts them',
    )
    assert "2 configured target(s) cannot work" in str(error)


@pytest.mark.integration
async def test_separate_store_is_checked_with_its_own_client(sekmet_server: SekmetServer) -> None:
    store = sekmet_server.endpoint("es384").model_dump()
    conn = sekmet_server.connection(
        "rs384",
        vendor="oracle-health",
        scopes="system/Group.r system/Encounter.s system/DocumentReference.c "
        f"system/Provenance.cs {INPUT_SCOPES}",
        write={"care_plan_store": store},
    )
    async with FhirClient(conn) as ehr, FhirClient(conn.write.care_plan_store) as store_client:  # type: ignore[arg-type]
        await verify_write_targets(conn, ehr, store_client)
        with pytest.raises(ValueError, match="pass the care-plan store's client"):
            await verify_write_targets(conn, ehr)


@pytest.mark.integration
async def test_scopes_that_do_not_grant_a_target(sekmet_server: SekmetServer) -> None:
    conn = sekmet_server.connection(
        "rs384",
        scopes="system/Encounter.s system/DocumentReference.rs system/Provenance.cs "
        + INPUT_SCOPES,
        write={"chart": {"note": True, "provenance": True}},
    )
    async with FhirClient(conn) as fhir:
        with pytest.raises(CapabilityError) as info:
            await verify_write_targets(conn, fhir)
    [problem] = info.value.problems
    assert problem.startswith(
        "ehr.sekmet.write.chart.note needs DocumentReference create, which none of the "
        "scopes in ehr.sekmet.auth.scopes grants; add system/DocumentReference.c (SMART v2) "
        "or system/DocumentReference.write (v1)"
    )


@pytest.mark.integration
async def test_start_up_names_binary_read_and_provenance_search_missing_from_the_scopes(
    sekmet_server: SekmetServer,
) -> None:
    """Transcripts given as a url are read as a Binary, and the note's Provenance is searched
    for by target before its create: scopes without either stop the start-up, each named."""
    conn = sekmet_server.connection(
        "rs384",
        scopes="system/Encounter.s system/Patient.r system/DocumentReference.cs "
        "system/QuestionnaireResponse.s system/Observation.s system/Provenance.c",
        write={"chart": {"note": True, "provenance": True}, "care_plan_store": "builtin"},
    )
    async with FhirClient(conn) as fhir:
        with pytest.raises(CapabilityError) as info:
            await verify_write_targets(conn, fhir)
    assert info.value.problems == (
        "ehr.sekmet: fetching a session's inputs needs Binary read, which none of the scopes "
        "in ehr.sekmet.auth.scopes grants; add system/Binary.r (SMART v2) or "
        "system/Binary.read (v1)",
        "ehr.sekmet.write.chart.provenance needs Provenance search-type, which none of the "
        "scopes in ehr.sekmet.auth.scopes grants; add system/Provenance.s (SMART v2) or "
        "system/Provenance.read (v1), or set ehr.sekmet.write.chart.provenance = false",
    )


def _statement(resources: dict[str, list[str]]) -> dict[str, Any]:
    return {
        "resourceType": "CapabilityStatement",
        "fhirVersion": "4.0.1",
        "software": {"name": "Hand-written"},
        "rest": [
            {
                "mode": "server",
                "resource": [
                    {"type": t, "interaction": [{"code": c} for c in codes]}
                    for t, codes in resources.items()
                ],
            },
            # A client-mode rest entry says nothing about the server.
            {"mode": "client", "resource": [{"type": "Task", "interaction": [{"code": "create"}]}]},
        ],
    }


def _conn(**fields: Any) -> EhrConnection:
    if vendor_profile(fields.get("vendor", "generic")).encounter_search_needs_patient:
        fields.setdefault("encounter_poll", {"scope": "group", "group": "Group/panel"})
    return EhrConnection(name="clinic", base_url="https://ehr.example.org/fhir", **fields)


def test_targets_missing_from_the_statement_are_named_with_their_setting() -> None:
    caps = ServerCapabilities.from_statement(
        _statement(
            {
                "DocumentReference": ["read", "search-type"],  # no create
                "Provenance": ["create"],
                "CarePlan": ["create", "update", "search-type"],
                "Task": ["read"],
            }
        )
    )
    assert caps.software == "Hand-written"
    assert not caps.supports("Task", "create")  # the client-mode entry is ignored
    problems = target_problems(_conn(write=ALL_TARGETS | {"chart": {"communication": False}}), caps)
    assert [p.split(",")[0] for p in problems] == [
        "ehr.clinic.write.chart.note needs DocumentReference create",
        "ehr.clinic.write.chart.provenance needs Provenance search-type",
        "ehr.clinic.write.care_plan_store needs Task create",
        "ehr.clinic.write.care_plan_store needs Task update",
        "ehr.clinic.write.care_plan_store needs Task search-type",
    ]
    assert "set ehr.clinic.write.chart.note = false" in problems[0]


def test_disabled_targets_need_nothing() -> None:
    caps = ServerCapabilities.from_statement(_statement({}))
    conn = _conn(
        write={"chart": {"note": False, "provenance": False}, "care_plan_store": "builtin"}
    )
    assert target_problems(conn, caps) == []


def test_oracle_health_refuses_task_create_even_if_listed() -> None:
    caps = ServerCapabilities.from_statement(
        _statement({t: ["create", "update", "search-type"] for t in ("CarePlan", "Task")})
    )
    conn = _conn(
        vendor="oracle-health",
        write={"chart": {"note": False, "provenance": False}, "care_plan_store": "ehr"},
    )
    problems = target_problems(conn, caps)
    assert len(problems) == 2
    assert (
        "refused by vendor oracle-health: Oracle Health Millennium offers no CarePlan create"
        in problems[0]
    )
    assert "no Task create" in problems[1]


def test_statement_parsing_is_lenient() -> None:
    caps = ServerCapabilities.from_statement(
        {
            "resourceType": "CapabilityStatement",
            "rest": [
                {
                    "resource": [
                        {
                            "type": "Patient",
                            "interaction": [{"code": "read"}, {"code": "x"}, "junk"],
                        }
                    ]
                },
                "junk",
                {"mode": "server", "resource": [{"interaction": [{"code": "read"}]}]},
            ],
        }
    )
    assert caps.interactions == {"Patient": frozenset({"read"})}
    assert caps.software is None


@pytest.mark.parametrize(
    ("scopes", "resource_type", "interaction", "expected"),
    [
        (["system/Task.u"], "Task", "update", True),
        (["system/Task.rs"], "Task", "update", False),
        (["system/*.write"], "Task", "create", True),
        (["system/*.read"], "Task", "search-type", True),
        (["system/*.read"], "Task", "create", False),
        (["system/Observation.*"], "Observation", "create", True),
        (["system/Observation.rs?category=survey"], "Observation", "search-type", True),
        (["system/Observation.rs"], "Task", "read", False),
        (["openid", "fhirUser"], "Task", "read", None),  # not SMART resource scopes: can't tell
    ],
)
def test_scope_grants(
    scopes: list[str], resource_type: str, interaction: str, expected: bool | None
) -> None:
    assert scope_grants(scopes, resource_type, interaction) is expected


def _scoped(scopes: list[str], **fields: Any) -> EhrConnection:
    return _conn(vendor="generic",
                 auth={"type": "client-secret", "client_id": "c", "client_secret": "s",
                       "token_endpoint": "https://ehr.example.org/token", "scopes": scopes},
                 **fields)  # fmt: skip


def test_the_poll_needs_encounter_search_and_for_a_panel_group_read() -> None:
    panel = {"scope": "group", "group": "Group/panel"}
    conn = _scoped(["system/Encounter.rs", *INPUT_SCOPES.split()], encounter_poll=panel)
    assert read_problems(conn) == [
        "ehr.clinic.encounter_poll.scope = 'group' needs Group read, which none of the scopes "
        "in ehr.clinic.auth.scopes grants; add system/Group.r (SMART v2) or system/Group.read "
        "(v1)"
    ]
    assert read_problems(_conn(vendor="generic")) == []  # no SMART scopes named: nothing known


def test_fetching_inputs_needs_each_read_named_with_the_scope_to_add() -> None:
    """What `fetch_inputs` reads; a token without Binary.r cannot read a transcript given as a
    url (Epic's and Oracle Health's), which the start-up check now names."""
    no_binary = [s for s in INPUT_SCOPES.split() if s != "system/Binary.r"]
    conn = _scoped(
        ["system/Encounter.s", *no_binary], write={"chart": {"note": False, "provenance": False}}
    )
    binary = (
        "ehr.clinic: fetching a session's inputs needs Binary read, which none of the scopes in "
        "ehr.clinic.auth.scopes grants; add system/Binary.r (SMART v2) or system/Binary.read "
        "(v1)"
    )
    assert read_problems(conn) == [binary]
    assert target_problems(conn, ServerCapabilities.from_statement(_statement({}))) == [binary]
    # v1 words and wildcards grant them too.
    assert read_problems(_scoped(["system/*.read"])) == []
    only_encounters = read_problems(_scoped(["system/Encounter.read"]))
    assert [p.split(",")[0].split(" needs ")[1] for p in only_encounters] == [
        "Patient read",
        "DocumentReference search-type",
        "Binary read",
        "QuestionnaireResponse or Observation search-type",
    ]


def test_one_source_of_scores_is_enough() -> None:
    """The fetch reads PHQ-9/GAD-7 from each source the vendor offers and logs a refused one,
    so a build without QuestionnaireResponse search starts; with neither it cannot."""
    others = [s for s in INPUT_SCOPES.split()
              if s not in ("system/QuestionnaireResponse.s", "system/Observation.s")]  # fmt: skip
    scores = "ehr.clinic: fetching a session's PHQ-9/GAD-7 totals needs"
    assert read_problems(_scoped(["system/Encounter.s", *others, "system/Observation.s"])) == []
    [neither] = read_problems(_scoped(["system/Encounter.s", *others]))
    assert neither.startswith(f"{scores} QuestionnaireResponse or Observation search-type")
    assert "system/QuestionnaireResponse.s or system/Observation.s" in neither


def test_provenance_needs_search_as_well_as_create() -> None:
    """The note's Provenance is searched for by target before its create (writeback)."""
    chart = {"chart": {"note": False, "provenance": True}, "care_plan_store": "builtin"}
    unlisted = ServerCapabilities.from_statement(_statement({"Provenance": ["create"]}))
    assert target_problems(_conn(write=chart), unlisted) == [
        "ehr.clinic.write.chart.provenance needs Provenance search-type, which the "
        "CapabilityStatement of https://ehr.example.org/fhir does not list; set "
        "ehr.clinic.write.chart.provenance = false"
    ]
    caps = ServerCapabilities.from_statement(_statement({"Provenance": ["create", "search-type"]}))
    scopes = ["system/Encounter.s", *INPUT_SCOPES.split()]
    assert target_problems(_scoped([*scopes, "system/Provenance.c"], write=chart), caps) == [
        "ehr.clinic.write.chart.provenance needs Provenance search-type, which none of the "
        "scopes in ehr.clinic.auth.scopes grants; add system/Provenance.s (SMART v2) or "
        "system/Provenance.read (v1), or set ehr.clinic.write.chart.provenance = false"
    ]
    assert target_problems(_scoped([*scopes, "system/Provenance.cs"], write=chart), caps) == []
