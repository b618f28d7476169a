"""The run store and the run journal: SQLAlchemy models, Alembic migrations, queries over evaluation history.

`from featuredrift.store import RunStore` works, but the package itself imports nothing heavy so
that the CLI stays fast.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "RunStore": "featuredrift.store.run_store",
    "parse_csv_export": "featuredrift.store.run_store",
    "StoreError": "featuredrift.store.errors",
    "StoreUnavailableError": "featuredrift.store.errors",
    "CorruptStoreError": "featuredrift.store.errors",
    "SchemaTooNewError": "featuredrift.store.errors",
    "UnknownRunError": "featuredrift.store.errors",
    "RunMismatchError": "featuredrift.store.errors",
    "HistoryConflictError": "featuredrift.store.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'featuredrift.store' has no attribute {name!r}")
