"""Alembic environment for the run store, configured from code (there is no alembic.ini).

`store.migrate` passes an open connection in `config.attributes["connection"]`;
running `alembic` by hand works too with `-x url=<sqlalchemy url>`.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from featuredrift.store.models import Base

config = context.config
target_metadata = Base.metadata


def run_with_connection(connection) -> None:
    # render_as_batch: SQLite cannot ALTER most things; batch mode copies tables instead.
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_with_connection(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("run store migrations: expected a database URL (-x url=...), found none")
    engine = create_engine(url)
    with engine.connect() as connection:
        run_with_connection(connection)


def run_migrations_offline() -> None:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
