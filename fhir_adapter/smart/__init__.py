"""The clinician app launched from the EHR (SMART App Launch 2.x, server side) and its review
screen; `devserver` is a development EHR to launch it against without one."""

from fhir_adapter.smart.client import SmartApp
from fhir_adapter.smart.errors import LaunchError
from fhir_adapter.smart.routes import smart_router

__all__ = ["LaunchError", "SmartApp", "smart_router"]
