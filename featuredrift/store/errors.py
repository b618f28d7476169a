"""Errors of the run store: each names the database (password hidden) and what was expected."""

from __future__ import annotations


class StoreError(RuntimeError):
    """Base class: something is wrong with the run store or the request made of it."""


class StoreUnavailableError(StoreError):
    """The database cannot be reached or opened."""


class CorruptStoreError(StoreError):
    """The database file exists but is not a usable database."""


class SchemaTooNewError(StoreError):
    """The database was migrated by a newer featuredrift than this one."""


class UnknownRunError(StoreError, KeyError):
    """No run of that name; the message lists the known runs."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class RunMismatchError(StoreError):
    """Writing to a run with another model, SAE or probe set than the stored run was recorded with."""


class HistoryConflictError(StoreError):
    """A write would change what the store holds of a run (an evaluation, a journal event) with
    different content: another run's history, or an edited journal."""
