"""CDS Hooks: a card in the EHR when a patient has homework drafts awaiting review.

`hooks` (discovery, the services, the card), `trust` (the EHR's JWT), `keys` (the EHRs' JWK
Sets, fetched and cached), `drafts` (the store query). It reads the store only.
"""

from fhir_adapter.cds.hooks import SERVICES, CdsHooks, cds_router, open_cds

__all__ = ["SERVICES", "CdsHooks", "cds_router", "open_cds"]
