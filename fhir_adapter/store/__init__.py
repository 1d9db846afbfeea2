"""The service's database: produced resources (versioned), work state, cursors, the outbox.

SQLite by default, PostgreSQL by URL; the schema is owned by Alembic migrations
(`fhir_adapter/store/migrations`), applied by `open_store` at start-up.
"""

from fhir_adapter.store.db import Store, open_store

__all__ = ["Store", "open_store"]
