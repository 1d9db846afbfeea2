"""CLI commands, one module each; see `fhir_adapter.cli`."""
