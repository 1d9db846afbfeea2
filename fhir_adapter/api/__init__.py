"""The service's HTTP API: FHIR read/search over what it produced, push ingest, health."""

from fhir_adapter.api.app import ApiDeps, create_app

__all__ = ["ApiDeps", "create_app"]
