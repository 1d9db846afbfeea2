"""Fixtures shared across the suite live in plain modules, registered here as plugins."""

pytest_plugins = [
    "tests.databases",
    "tests.fhir_adapter.sekmet_server",
    "tests.fhir_adapter.quality.samples",
    "tests.inference_server.triton_fixtures",
]
