"""Worker tests use the PostgreSQL server fixtures of the catalog tests."""

from tests.catalog.backends import (  # noqa: F401 - fixtures
    backend,
    catalog_url,
    pg_database,
    pg_server,
)
