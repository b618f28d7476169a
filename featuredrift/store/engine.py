"""Opening a run-store database: URL checks, SQLite pragmas, and errors a human can act on.

SQLite gets WAL (readers never block the training process' writer), foreign keys ON and a
busy timeout on every connection; PostgreSQL gets a short connect timeout so an unreachable
server fails fast instead of hanging a training step.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.pool import StaticPool

from featuredrift.monitor.config import DEFAULT_STORE_URL
from featuredrift.store.errors import CorruptStoreError, StoreError, StoreUnavailableError

# The one default run store: the demo, the callback and the read-only commands all use it.
POSTGRES_CONNECT_TIMEOUT_S = 5
POSTGRES_STATEMENT_TIMEOUT_MS = 10_000
SQLITE_BUSY_TIMEOUT_MS = 10_000
# Execution option naming the statement that opens a SQLite transaction (default "BEGIN"):
# "BEGIN IMMEDIATE" takes the write lock at once, so writers queue instead of racing.
SQLITE_BEGIN = "featuredrift_sqlite_begin"


def parse_store_url(url: str) -> URL:
    """Parse and normalise: bare `postgresql://` means psycopg 3, the driver we ship."""
    try:
        parsed = make_url(url)
    except ArgumentError as error:
        raise StoreError(
            f"run store URL: expected a SQLAlchemy URL such as {DEFAULT_STORE_URL!r} or "
            f"'postgresql+psycopg://user:pass@host/db', found {url!r}"
        ) from error
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def url_for_humans(url: URL) -> str:
    return url.render_as_string(hide_password=True)


def is_sqlite_memory(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def _enable_sqlite_pragmas(engine: Engine, wal: bool) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection, _record) -> None:
        # pysqlite opens a transaction only before a write, so a read-then-write (is this journal
        # event stored yet?) would not be atomic. Let SQLAlchemy's BEGIN open every transaction:
        # reads then share one snapshot, and a write on a stale snapshot fails instead of racing.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            if wal:
                cursor.execute("PRAGMA journal_mode=WAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(connection) -> None:
        connection.exec_driver_sql(connection.get_execution_options().get(SQLITE_BEGIN, "BEGIN"))


def require_existing_store(url: URL, display_url: str) -> None:
    """Refuse to open a SQLite store that does not exist (read-only commands create nothing)."""
    if url.get_backend_name() == "sqlite" and not is_sqlite_memory(url) and not Path(url.database).expanduser().is_file():
        raise StoreUnavailableError(f"run store {display_url}: expected an existing database file, found no file at {url.database}")


def make_engine(url: URL, *, create_folder: bool = True) -> Engine:
    backend = url.get_backend_name()
    try:
        if backend == "sqlite":
            if is_sqlite_memory(url):
                engine = create_engine(
                    url, poolclass=StaticPool, connect_args={"check_same_thread": False}
                )
                _enable_sqlite_pragmas(engine, wal=False)
                return engine
            folder = Path(url.database).expanduser().parent
            try:
                if create_folder:
                    folder.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise StoreUnavailableError(
                    f"cannot open run store {url_for_humans(url)}: cannot create folder {str(folder)!r} ({error})"
                ) from error
            engine = create_engine(url, pool_pre_ping=True)
            _enable_sqlite_pragmas(engine, wal=True)
            return engine
        # A frozen server must not hold a writer forever: connect, statement and TCP timeouts.
        connect_args = {
            "connect_timeout": POSTGRES_CONNECT_TIMEOUT_S,
            "options": f"-c statement_timeout={POSTGRES_STATEMENT_TIMEOUT_MS} -c lock_timeout={POSTGRES_STATEMENT_TIMEOUT_MS}",
            "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 2,
            "tcp_user_timeout": POSTGRES_STATEMENT_TIMEOUT_MS,
        } if backend == "postgresql" else {}
        return create_engine(url, pool_pre_ping=True, connect_args=connect_args)
    except (NoSuchModuleError, ModuleNotFoundError) as error:
        hint = " (pip install 'featuredrift[postgres]')" if backend == "postgresql" else ""  # see monitor.extras
        raise StoreError(
            f"run store {url_for_humans(url)}: no driver for {url.drivername!r}{hint}: {error}"
        ) from error


def translate_open_error(error: Exception, url: URL) -> StoreError:
    """Map a driver error raised while opening to one that says which database and what to do."""
    shown = url_for_humans(url)
    original = getattr(error, "orig", None) or error
    message = str(original).strip().splitlines()[0] if str(original).strip() else type(original).__name__
    if url.get_backend_name() == "sqlite" and isinstance(original, sqlite3.DatabaseError):
        lowered = message.lower()
        if "not a database" in lowered or "malformed" in lowered or "corrupt" in lowered:
            return CorruptStoreError(
                f"run store {shown}: the file {url.database!r} is not a valid SQLite database "
                f"({message}); move it away or point --db / FEATUREDRIFT_STORE_URL elsewhere"
            )
    if isinstance(error, DBAPIError | sqlite3.Error | OSError):
        return StoreUnavailableError(f"cannot open run store {shown}: {message}")
    return StoreError(f"run store {shown}: {message}")
