"""Schema migrations from code: an Alembic `Config` pointing at the packaged `migrations/`.

`RunStore` calls `upgrade_to_head` on open. A database whose revision this code does not know
was migrated by a newer featuredrift; we refuse to touch it rather than guess. Many jobs may
open a fresh store at once: they take turns (a PostgreSQL advisory lock, SQLite's write lock
taken at BEGIN), and whoever comes second finds the schema at head.
"""

from __future__ import annotations

import threading
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from featuredrift.store.engine import SQLITE_BEGIN
from featuredrift.store.errors import SchemaTooNewError, StoreError

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Alembic keeps its migration context in module globals: two threads of one process (the store
# sync and a reader) must never run it at once.
MIGRATION_LOCK = threading.Lock()
# The advisory lock every featuredrift process takes to migrate a PostgreSQL store ("fdrift").
POSTGRES_MIGRATION_LOCK_ID = 0x666472696674


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, f"no migrations found under {MIGRATIONS_DIR}"
    return head


def current_revisions(connection: Connection) -> tuple[str, ...]:
    return tuple(MigrationContext.configure(connection).get_current_heads())


def check_known_revisions(revisions: tuple[str, ...], url_for_humans: str) -> None:
    script = ScriptDirectory.from_config(alembic_config())
    for revision in revisions:
        try:
            known = script.get_revision(revision)
        except CommandError:
            known = None
        if known is None:
            raise SchemaTooNewError(
                f"run store {url_for_humans}: schema revision {revision!r} is newer than this "
                f"featuredrift knows (head {head_revision()!r}); upgrade featuredrift to use this database"
            )


def upgrade_to_head(engine: Engine, url_for_humans: str) -> None:
    """Bring the schema to head in one transaction, one process at a time; refuse schemas from newer code."""
    with MIGRATION_LOCK:
        with engine.connect() as connection:
            revisions = current_revisions(connection)
        check_known_revisions(revisions, url_for_humans)
        if head_revision() in revisions:
            return  # the common case: nothing to migrate, no lock to wait for
        migrating = engine.connect().execution_options(**{SQLITE_BEGIN: "BEGIN IMMEDIATE"})
        with migrating as connection, connection.begin():
            if engine.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": POSTGRES_MIGRATION_LOCK_ID})
            check_known_revisions(current_revisions(connection), url_for_humans)  # as the one before us left it
            command.upgrade(alembic_config(connection), "head")


def require_current_schema(engine: Engine, url_for_humans: str) -> None:
    """For read-only use: the database must already hold this code's schema (nothing is migrated)."""
    with MIGRATION_LOCK, engine.connect() as connection:
        revisions = current_revisions(connection)
    if not revisions:
        raise StoreError(f"run store {url_for_humans}: expected a featuredrift run store, found a database without one")
    check_known_revisions(revisions, url_for_humans)
    if head_revision() not in revisions:
        raise StoreError(
            f"run store {url_for_humans}: schema revision {revisions[0]!r} is older than {head_revision()!r}; "
            "open it once with a writing command (a training run, `featuredrift runs import`) to upgrade it"
        )
