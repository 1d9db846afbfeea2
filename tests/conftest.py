"""Fixtures shared across the suite live in plain modules, registered here as plugins."""

pytest_plugins = ["tests.databases"]
