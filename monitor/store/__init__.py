"""The run store: SQLAlchemy models, Alembic migrations and queries over evaluation history.

`from monitor.store import RunStore` works, but the package itself imports nothing heavy so
that the CLI (which imports `monitor.store.cli`) stays fast.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "RunStore": "monitor.store.run_store",
    "parse_csv_export": "monitor.store.run_store",
    "StoreError": "monitor.store.errors",
    "StoreUnavailableError": "monitor.store.errors",
    "CorruptStoreError": "monitor.store.errors",
    "SchemaTooNewError": "monitor.store.errors",
    "UnknownRunError": "monitor.store.errors",
    "RunMismatchError": "monitor.store.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'monitor.store' has no attribute {name!r}")
