"""Alembic revisions of the run store schema."""
