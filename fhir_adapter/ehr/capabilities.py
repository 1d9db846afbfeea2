"""Start-up check: can the configured write targets work against this server, and do the
scopes we ask for cover what the pipeline reads?

Each enabled write target needs some interactions (create, update, search-type for the
idempotency search) on some resource types. A need fails when the vendor profile refuses
it, when the server's CapabilityStatement does not list it, or when the SMART scopes we ask
for do not grant it. What the pipeline reads (`READ_NEEDS`: the poll, and each session's
inputs) is checked against the scopes only: vendors' CapabilityStatements describe the whole
product, and a search one build lacks (PHQ-9/GAD-7 from QuestionnaireResponse or from
Observation) is logged by the fetch, which goes on without it. All failures are collected into
one CapabilityError, each naming the setting to change or the scope to add, so a deployment is
fixed in one pass rather than one error per restart.

`target_problems` is pure (tested on statements written by hand); `verify_write_targets`
fetches the statements and raises.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fhir_adapter.ehr.errors import CapabilityError
from fhir_adapter.ehr.vendors import INTERACTIONS, vendor_profile
from fhir_adapter.settings import EhrConnection, FhirEndpoint, FhirStore
from fhir_adapter.smart_scopes import parse_scopes

if TYPE_CHECKING:
    from fhir_adapter.ehr.client import FhirClient

__all__ = [
    "READ_NEEDS",
    "Need",
    "ServerCapabilities",
    "read_needs",
    "read_problems",
    "scope_grants",
    "score_needs",
    "target_needs",
    "target_problems",
    "verify_write_targets",
    "write_problems",
]

# What each target writes. search-type: we look our identifier up before every create,
# since Epic and Oracle Health have no conditional create.
CHART_NEEDS: Mapping[str, tuple[tuple[str, str], ...]] = {
    "note": (("DocumentReference", "create"), ("DocumentReference", "search-type")),
    "communication": (("Communication", "create"), ("Communication", "search-type")),
    # Provenance has no identifier: the note's is looked up by target before its create.
    "provenance": (("Provenance", "create"), ("Provenance", "search-type")),
}
CARE_PLAN_NEEDS: tuple[tuple[str, str], ...] = (
    ("CarePlan", "create"), ("CarePlan", "update"), ("CarePlan", "search-type"),
    ("Task", "create"), ("Task", "update"), ("Task", "search-type"),
)  # fmt: skip

# What the pipeline reads from the EHR (`pipeline.fetch`), per part, whatever the targets:
# - "poll": `poll`'s Encounter search (per panel member, or one across the server);
# - "panel": `group_members`' Group read, with `encounter_poll.scope = "group"`;
# - "inputs": `fetch_inputs`' Patient read, transcript search and Binary read (a transcript
#   given as a url, `fetch_attachment`), then a search per PHQ-9/GAD-7 source of the vendor
#   profile (`questionnaire_sources`, `score_needs`: any one will do). The poll's amended
#   transcripts read the same DocumentReference and Binary.
READ_NEEDS: Mapping[str, tuple[tuple[str, str], ...]] = {
    "poll": (("Encounter", "search-type"),),
    "panel": (("Group", "read"),),
    "inputs": (("Patient", "read"), ("DocumentReference", "search-type"), ("Binary", "read")),
}

# SMART v2 permission letters per interaction, and what the v1 words grant.
_LETTER = {"create": "c", "read": "r", "vread": "r", "history-instance": "r",
           "history-type": "r", "update": "u", "patch": "u", "delete": "d",
           "search-type": "s"}  # fmt: skip


@dataclass(frozen=True)
class ServerCapabilities:
    """What a CapabilityStatement says the server does, per resource type."""

    interactions: Mapping[str, frozenset[str]]
    software: str | None = None
    fhir_version: str | None = None

    @classmethod
    def from_statement(cls, statement: Mapping[str, Any]) -> ServerCapabilities:
        """Summarise a CapabilityStatement (JSON); lenient, vendors' statements vary."""
        interactions: dict[str, set[str]] = {}
        for rest in statement.get("rest") or []:
            if not isinstance(rest, dict) or rest.get("mode", "server") != "server":
                continue
            for resource in rest.get("resource") or []:
                if not isinstance(resource, dict) or not isinstance(resource.get("type"), str):
                    continue
                codes = {
                    str(i.get("code"))
                    for i in resource.get("interaction") or []
                    if isinstance(i, dict) and i.get("code") in INTERACTIONS
                }
                interactions.setdefault(resource["type"], set()).update(codes)
        software = statement.get("software")
        return cls(
            interactions={t: frozenset(c) for t, c in interactions.items()},
            software=software.get("name") if isinstance(software, dict) else None,
            fhir_version=statement.get("fhirVersion"),
        )

    def supports(self, resource_type: str, interaction: str) -> bool:
        return interaction in self.interactions.get(resource_type, frozenset())


@dataclass(frozen=True)
class Need:
    """One interaction a configured target needs; `setting` is where it is configured."""

    setting: str
    resource_type: str
    interaction: str
    fix: str


def target_needs(conn: EhrConnection) -> tuple[list[Need], list[Need]]:
    """(needs on the EHR, needs on the separate care-plan store) for the enabled targets."""
    prefix = f"ehr.{conn.name}.write"
    ehr: list[Need] = []
    for target, needs in CHART_NEEDS.items():
        if getattr(conn.write.chart, target):
            setting = f"{prefix}.chart.{target}"
            fix = f"set {setting} = false"
            ehr.extend(Need(setting, t, i, fix) for t, i in needs)
    store: list[Need] = []
    setting = f"{prefix}.care_plan_store"
    if conn.write.care_plan_store == "ehr":
        fix = f'set {setting} = "builtin", or a FHIR store that accepts them'
        ehr.extend(Need(setting, t, i, fix) for t, i in CARE_PLAN_NEEDS)
    elif isinstance(conn.write.care_plan_store, FhirStore):
        fix = f'point {setting}.base_url at a store that accepts them, or set it to "builtin"'
        store.extend(Need(setting, t, i, fix) for t, i in CARE_PLAN_NEEDS)
    return ehr, store


def read_needs(conn: EhrConnection) -> list[Need]:
    """What the pipeline reads from the connection's EHR (`READ_NEEDS`), each with the
    setting or step that reads it."""
    prefix = f"ehr.{conn.name}"
    parts = {"poll": f"{prefix}.encounter_poll", "inputs": f"{prefix}: fetching a session's inputs"}
    if conn.encounter_poll.scope == "group":
        parts["panel"] = f"{prefix}.encounter_poll.scope = 'group'"
    needs: list[Need] = []
    for part in READ_NEEDS:
        if part in parts:
            needs.extend(Need(parts[part], t, i, "") for t, i in READ_NEEDS[part])
    return needs


def score_needs(conn: EhrConnection) -> list[Need]:
    """The PHQ-9/GAD-7 searches of the vendor profile (`questionnaire_sources`): any one will
    do, as the fetch logs a refused one and reads the others."""
    inputs = f"ehr.{conn.name}: fetching a session's PHQ-9/GAD-7 totals"
    sources = vendor_profile(conn.vendor).questionnaire_sources
    return [Need(inputs, t, "search-type", "") for t in sources]


def scope_grants(scopes: Iterable[str], resource_type: str, interaction: str) -> bool | None:
    """Whether SMART scopes (v1 or v2) grant the interaction; None if none are SMART scopes."""
    letter = _LETTER.get(interaction)
    parsed = parse_scopes(scopes)
    if not parsed:
        return None
    return letter is not None and any(s.covers(resource_type, letter) for s in parsed)


def _scope_problem(need: Need, label: str) -> str:
    letter = _LETTER[need.interaction]
    v1 = "read" if letter in "rs" else "write"
    what = f"{need.setting} needs {need.resource_type} {need.interaction}"
    return (
        f"{what}, which none of the scopes in {label}.auth.scopes grants; add "
        f"system/{need.resource_type}.{letter} (SMART v2) or system/{need.resource_type}.{v1} "
        f"(v1)" + (f", or {need.fix}" if need.fix else "")
    )


def _endpoint_problems(
    endpoint: FhirEndpoint, label: str, needs: Sequence[Need], caps: ServerCapabilities
) -> list[str]:
    profile = vendor_profile(endpoint.vendor)
    scopes: list[str] = list(getattr(endpoint.auth, "scopes", []))
    problems: list[str] = []
    for need in needs:
        what = f"{need.setting} needs {need.resource_type} {need.interaction}"
        refusal = profile.refusal(need.resource_type, need.interaction)
        if refusal is not None:
            problems.append(f"{what}, refused by vendor {profile.name}: {refusal}; {need.fix}")
        elif not caps.supports(need.resource_type, need.interaction):
            problems.append(
                f"{what}, which the CapabilityStatement of {endpoint.base_url} does not "
                f"list; {need.fix}"
            )
        elif scopes and scope_grants(scopes, need.resource_type, need.interaction) is False:
            problems.append(_scope_problem(need, label))
    return problems


def read_problems(conn: EhrConnection) -> list[str]:
    """What the pipeline reads (the poll, each session's inputs) that the connection's scopes
    do not grant, one line each (empty when all is; nothing is known without SMART scopes)."""
    scopes = list(getattr(conn.auth, "scopes", []))
    label = f"ehr.{conn.name}"
    problems = [
        _scope_problem(need, label)
        for need in read_needs(conn)
        if scope_grants(scopes, need.resource_type, need.interaction) is False
    ]
    scores = score_needs(conn)
    if scores and all(scope_grants(scopes, n.resource_type, n.interaction) is False
                      for n in scores):  # fmt: skip
        types = [n.resource_type for n in scores]
        problems.append(
            f"{scores[0].setting} needs {' or '.join(types)} search-type, which none of the "
            f"scopes in {label}.auth.scopes grants; add "
            f"{' or '.join(f'system/{t}.s' for t in types)} (SMART v2; v1: .read)"
        )
    return problems


def write_problems(
    conn: EhrConnection,
    ehr_caps: ServerCapabilities,
    store_caps: ServerCapabilities | None = None,
) -> list[str]:
    """Every configured write target that cannot work, one line each (empty when all can)."""
    ehr_needs, store_needs = target_needs(conn)
    problems = _endpoint_problems(conn, f"ehr.{conn.name}", ehr_needs, ehr_caps)
    store = conn.write.care_plan_store
    if store_needs and isinstance(store, FhirStore):
        if store_caps is None:
            raise ValueError("the care-plan store's capabilities are needed to check it")
        label = f"ehr.{conn.name}.write.care_plan_store"
        problems += _endpoint_problems(store, label, store_needs, store_caps)
    return problems


def target_problems(
    conn: EhrConnection,
    ehr_caps: ServerCapabilities,
    store_caps: ServerCapabilities | None = None,
) -> list[str]:
    """What the pipeline reads that the scopes do not grant, then every configured write
    target that cannot work, one line each (empty when all can)."""
    return read_problems(conn) + write_problems(conn, ehr_caps, store_caps)


async def verify_write_targets(
    conn: EhrConnection, ehr: FhirClient, store: FhirClient | None = None
) -> ServerCapabilities:
    """Fetch the CapabilityStatement(s) and raise CapabilityError if any target cannot work,
    or the scopes asked for miss something the pipeline reads (`target_problems`).

    Call at start-up with the clients the service will use; `store` is the client for a
    separate care-plan FHIR store, when one is configured.
    """
    ehr_caps = await ehr.capabilities()
    store_caps = None
    if isinstance(conn.write.care_plan_store, FhirStore):
        if store is None:
            raise ValueError(f"ehr.{conn.name}: pass the care-plan store's client to verify it")
        store_caps = await store.capabilities()
    problems = target_problems(conn, ehr_caps, store_caps)
    if problems:
        raise CapabilityError(conn.name, problems)
    return ehr_caps
