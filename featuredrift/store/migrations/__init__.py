"""Alembic migration environment of the run store (see store/migrate.py)."""
