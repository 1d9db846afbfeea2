"""The three ways work comes in — poll, push, backfill — each followed by the same steps."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from fhir_adapter.connections import ConnectionClients, open_clients
from fhir_adapter.ehr.errors import CapabilityError, FhirError
from fhir_adapter.pipeline import fetch
from fhir_adapter.pipeline.runner import Progress, RunSummary, process_waiting, write_back
from fhir_adapter.pipeline.staging import stage
from fhir_adapter.pipeline.steps import Step
from fhir_adapter.settings import EhrConnection, Settings, SettingsError
from fhir_adapter.store import Store
from inference_server.client import Backend
from mapping.fhir.context import ModelInfo

log = logging.getLogger(__name__)

# The connection name work is filed under when no EHR is configured (local backfill, demo).
LOCAL = "local"


async def run_once(
    settings: Settings,
    store: Store,
    backend: Backend,
    model: ModelInfo,
    progress: Progress | None = None,
    poll: bool = True,
) -> RunSummary:
    """Poll every configured EHR, process what waits, write back; one pass.

    A configured target the EHR refuses (CapabilityError) stops the run: that is a start-up
    error to fix in the settings. An EHR that is down or refuses our credentials stops only its
    own connection; the others carry on and the error is in the summary.
    """
    summary = RunSummary()
    for conn in settings.ehr.values():
        try:
            async with open_clients(conn) as clients:
                if poll:
                    staged = await fetch.poll(clients.ehr, store, conn)
                    summary.encounters_new += staged.encounters_new
                await _process(store, conn.name, conn, clients, backend, model, summary, progress)
        except CapabilityError:
            raise
        except FhirError as exc:
            log.error("connection %s: %s", conn.name, exc)
            summary.connections_failed += 1
            summary.errors.append(f"connection {conn.name}: {type(exc).__name__}: {exc}")
    return summary


async def _process(
    store: Store,
    name: str,
    conn: EhrConnection | None,
    clients: ConnectionClients | None,
    backend: Backend,
    model: ModelInfo,
    summary: RunSummary,
    progress: Progress | None,
) -> None:
    try:
        kwargs = {"progress": progress} if progress else {}
        await process_waiting(store, name, conn, clients, backend, model, summary, **kwargs)
    finally:
        # Whatever was drafted before a failure is still written back.
        if clients is not None:
            await write_back(store, name, clients, summary)


async def ingest_resources(
    settings: Settings,
    store: Store,
    backend: Backend,
    model: ModelInfo,
    resources: Iterable[dict[str, Any]],
    connection: str | None = None,
    progress: Progress | None = None,
) -> RunSummary:
    """Stage pushed or exported resources, then process and write back.

    `connection` names the EHR they came from (for write-back); None with no EHR configured
    files them under "local" and keeps the results in our store.
    """
    conn = settings.connection(connection) if connection else None
    if conn is None and len(settings.ehr) == 1:
        conn = next(iter(settings.ehr.values()))
    elif conn is None and settings.ehr:
        raise SettingsError(
            f"{len(settings.ehr)} EHR connections are configured; name the one these resources "
            f"came from ({', '.join(sorted(settings.ehr))})"
        )
    name = conn.name if conn else LOCAL
    summary = RunSummary()
    with store.session() as session:
        staged = stage(session, name, resources, Step.DETECT)
    summary.encounters_new = staged.encounters_new
    if conn is None:
        await _process(store, name, None, None, backend, model, summary, progress)
        return summary
    async with open_clients(conn) as clients:
        await _process(store, name, conn, clients, backend, model, summary, progress)
    return summary


def bundle_resources(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    """The resources of a transaction or collection Bundle (request details are ignored)."""
    return [
        entry["resource"]
        for entry in bundle.get("entry") or []
        if isinstance(entry, dict) and isinstance(entry.get("resource"), dict)
    ]
