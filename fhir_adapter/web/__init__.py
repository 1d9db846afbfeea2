"""Pages people open in a browser: the quality teams' fidelity dashboard."""

from fhir_adapter.web.dashboard import dashboard_router

__all__ = ["dashboard_router"]
