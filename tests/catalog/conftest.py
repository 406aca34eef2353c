"""Catalog tests run on SQLite and PostgreSQL (see backends.py)."""

from tests.catalog.backends import (  # noqa: F401 - fixtures
    backend,
    catalog_url,
    empty_url,
    pg_database,
    pg_server,
)
