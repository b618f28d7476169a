"""The run store: SQLAlchemy models, Alembic migrations and queries over evaluation history.

`from monitor.store import RunStore` works, but the package itself imports nothing heavy so
that the CLI (which imports `monitor.store.cli`) stays fast.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "RunStore": "featuredrift.monitor.store.run_store",
    "parse_csv_export": "featuredrift.monitor.store.run_store",
    "StoreError": "featuredrift.monitor.store.errors",
    "StoreUnavailableError": "featuredrift.monitor.store.errors",
    "CorruptStoreError": "featuredrift.monitor.store.errors",
    "SchemaTooNewError": "featuredrift.monitor.store.errors",
    "UnknownRunError": "featuredrift.monitor.store.errors",
    "RunMismatchError": "featuredrift.monitor.store.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'featuredrift.monitor.store' has no attribute {name!r}")
