"""The catalog CLI tests run on SQLite and PostgreSQL, like the catalog's own tests."""

from tests.catalog.backends import (  # noqa: F401 - fixtures
    backend,
    catalog_url,
    empty_url,
    pg_database,
    pg_server,
)
