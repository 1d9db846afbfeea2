"""The FHIR clients one EHR connection needs, and the check of its write targets.

One `FhirClient` (one pooled `httpx.AsyncClient`, one token cache) per server, opened by the
`Runtime` the first time the connection is used and closed with it, never per request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fhir_adapter.ehr.capabilities import verify_write_targets
from fhir_adapter.ehr.client import FhirClient
from fhir_adapter.settings import EhrConnection, FhirStore
from fhir_adapter.store.outbox import CARE_PLAN_STORE, CHART


@dataclass(frozen=True)
class ConnectionClients:
    ehr: FhirClient
    store: FhirClient | None  # a separate care-plan store, when configured

    @classmethod
    async def open(cls, conn: EhrConnection, verify: bool = True) -> ConnectionClients:
        """Clients for `conn`; with `verify`, a CapabilityError names any target refused."""
        ehr = FhirClient(conn)
        store = None
        if isinstance(conn.write.care_plan_store, FhirStore):
            store = FhirClient(conn.write.care_plan_store, name=f"{conn.name}.care_plan_store")
        clients = cls(ehr, store)
        try:
            if verify:
                await verify_write_targets(conn, ehr, store)
        except BaseException:
            await clients.aclose()
            raise
        return clients

    async def aclose(self) -> None:
        await self.ehr.aclose()
        if self.store is not None:
            await self.store.aclose()

    def targets(self) -> dict[str, FhirClient]:
        """Outbox target name -> the client that writes it."""
        care_plan = self.store or self.ehr
        return {CHART: self.ehr, CARE_PLAN_STORE: care_plan}


@asynccontextmanager
async def open_clients(
    conn: EhrConnection, verify: bool = True
) -> AsyncIterator[ConnectionClients]:
    """Clients for `conn` for the block (tools and tests; the service uses the Runtime's)."""
    clients = await ConnectionClients.open(conn, verify)
    try:
        yield clients
    finally:
        await clients.aclose()
