"""Open the FHIR clients one EHR connection needs, and check its write targets.

One `FhirClient` (one pooled `httpx.AsyncClient`) per server, created by the entry point
(the `run` command, the API's lifespan) and closed with it, never per request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fhir_adapter.ehr.capabilities import verify_write_targets
from fhir_adapter.ehr.client import FhirClient
from fhir_adapter.pipeline.draft import CARE_PLAN_STORE, CHART
from fhir_adapter.settings import EhrConnection, FhirStore


@dataclass(frozen=True)
class ConnectionClients:
    ehr: FhirClient
    store: FhirClient | None  # a separate care-plan store, when configured

    def targets(self) -> dict[str, FhirClient]:
        """Outbox target name -> the client that writes it."""
        care_plan = self.store or self.ehr
        return {CHART: self.ehr, CARE_PLAN_STORE: care_plan}


@asynccontextmanager
async def open_clients(
    conn: EhrConnection, verify: bool = True
) -> AsyncIterator[ConnectionClients]:
    """Clients for `conn`; with `verify`, a CapabilityError names any target the servers refuse."""
    ehr = FhirClient(conn)
    store = None
    if isinstance(conn.write.care_plan_store, FhirStore):
        store = FhirClient(conn.write.care_plan_store, name=f"{conn.name}.care_plan_store")
    try:
        if verify:
            await verify_write_targets(conn, ehr, store)
        yield ConnectionClients(ehr, store)
    finally:
        await ehr.aclose()
        if store is not None:
            await store.aclose()
