"""Alembic environment for the catalog (run by :func:`mono_quant.catalog.db.upgrade`).

The caller passes an open connection in ``config.attributes["connection"]``; with a plain
``sqlalchemy.url`` option instead (a developer running ``alembic`` by hand) an engine is made
with :func:`~mono_quant.catalog.db.make_engine`. Offline mode (``--sql``) prints the DDL.
``render_as_batch`` lets later migrations alter tables on SQLite.
"""

from __future__ import annotations

from alembic import context

from mono_quant.catalog.models import Base

config = context.config
target_metadata = Base.metadata


def _configure(**kwargs: object) -> None:
    context.configure(
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
        **kwargs,
    )


def run_offline() -> None:
    _configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    from mono_quant.catalog.db import make_engine

    engine = make_engine(config.get_main_option("sqlalchemy.url") or "")
    try:
        with engine.begin() as conn:
            _configure(connection=conn)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
