"""`homework-fhir check`: can each EHR connection work, before any model loads?

Per connection, in order, stopping at the first failure (a later step needs the earlier ones):
the CapabilityStatement (reachable, FHIR R4), a token (auth: the key, client id and token
endpoint), the scopes (those the token endpoint granted against those asked for, and those
asked for against what the pipeline reads: the poll, each session's inputs), the write targets
(vendor rules, the CapabilityStatement and the scopes), the poll's panel (a Group's members,
where the poll goes per patient), and one Encounter search with the poll's own parameters.
The scopes and the write targets are both checked before stopping (neither needs the other),
each problem on a line of its own: the same lines as the start-up check's CapabilityError.
"""

from __future__ import annotations

from dataclasses import dataclass

from fhir_adapter.ehr.capabilities import read_problems, write_problems
from fhir_adapter.ehr.client import FhirClient
from fhir_adapter.ehr.errors import AuthError, FhirError
from fhir_adapter.pipeline.fetch import group_members
from fhir_adapter.settings import EhrConnection, FhirStore


@dataclass(frozen=True)
class CheckLine:
    connection: str
    step: str
    ok: bool
    detail: str


async def check_connection(conn: EhrConnection) -> list[CheckLine]:
    """The checks of one connection; never raises for what the servers answer."""
    lines: list[CheckLine] = []

    def add(step: str, ok: bool, detail: str) -> bool:
        lines.append(CheckLine(conn.name, step, ok, detail))
        return ok

    async with FhirClient(conn) as ehr:
        try:
            caps = await ehr.capabilities()
        except AuthError as exc:  # the server asked for a token even for its metadata
            add("token", False, f"{type(exc).__name__}: {exc}")
            return lines
        except FhirError as exc:
            add("capability", False, f"{type(exc).__name__}: {exc}")
            return lines
        add("capability", True, f"{len(caps.interactions)} resource types at {ehr.base_url}")
        token = getattr(ehr.auth, "token", None)
        asked = sorted(getattr(conn.auth, "scopes", None) or [])
        if token is None:
            # metadata is public on most servers: ask for the token with the test search.
            try:
                async for _ in ehr.search("Encounter", [("_count", "1")]):
                    break
            except FhirError as exc:
                add("token", False, f"{type(exc).__name__}: {exc}")
                return lines
            token = getattr(ehr.auth, "token", None)
        if token is not None:
            add("token", True, f"expires {token.expires_at:%Y-%m-%dT%H:%M:%SZ}")
            missing = sorted(set(asked) - set(token.scope.split()))
            if missing:
                add("scopes", False, f"not granted: {' '.join(missing)}")
                return lines
        # Granted as asked: what the pipeline reads must be among the scopes asked for.
        unread = read_problems(conn)
        for problem in unread:
            add("scopes", False, problem)
        if token is not None and not unread:
            add("scopes", True, token.scope or "(none named)")
        store_caps = None
        if isinstance(conn.write.care_plan_store, FhirStore):
            try:
                async with FhirClient(conn.write.care_plan_store,
                                      name=f"{conn.name}.care_plan_store") as store:  # fmt: skip
                    store_caps = await store.capabilities()
            except FhirError as exc:
                add("write targets", False, f"care-plan store: {type(exc).__name__}: {exc}")
                return lines
        problems = write_problems(conn, caps, store_caps)
        for problem in problems:
            add("write targets", False, problem)
        if not problems:
            add("write targets", True, "all can be written")
        if problems or unread:
            return lines
        params = [*conn.encounter_poll.search_params(since=conn.poll_since()), ("_count", "1")]
        if conn.encounter_poll.scope == "group":
            group = conn.encounter_poll.group or ""
            try:
                members = await group_members(ehr, group)
            except FhirError as exc:
                add("panel", False, f"{group}: {type(exc).__name__}: {exc}")
                return lines
            if not add("panel", bool(members), f"{group}: {len(members)} patients"):
                return lines
            params = [("patient", members[0]), *params]
        found = 0
        try:
            async for _ in ehr.search("Encounter", params):
                found += 1
                break  # the first page answers the question; the poll pages through the rest
        except FhirError as exc:
            add("search", False, f"Encounter search: {type(exc).__name__}: {exc}")
            return lines
        add("search", True, "Encounter search answered" + ("" if found else " (no encounters)"))
    return lines
