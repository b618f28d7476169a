"""Alembic migration environment of the run store (see monitor/store/migrate.py)."""
