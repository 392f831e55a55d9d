"""Persistence for the live central system: SQLite by default, PostgreSQL by URL, one :class:`Store` protocol.

What is kept: stations, transactions (energy so far, the session's needs), meter values, the
history of finished sessions (it feeds the session-needs forecaster as a sessions frame),
charging profiles sent with the charger's answer, and the latest plan. Stores know events,
not OCPP internals: :mod:`~nowblock.store.recorder` translates the live state's events.
"""

from __future__ import annotations

from pathlib import Path

from nowblock.store.base import (OPEN_TRANSACTION_COLUMNS, Store, StoreError, StoreFileError, StoreUnavailable,
                                 session_id_for)
from nowblock.store.recorder import StoreRecorder, attach_store, restore_state
from nowblock.store.sqlite import SqliteStore

__all__ = ["OPEN_TRANSACTION_COLUMNS", "PostgresStore", "SqliteStore", "Store", "StoreError", "StoreFileError",
           "StoreRecorder", "StoreUnavailable", "attach_store", "open_store", "restore_state", "session_id_for"]


def __getattr__(name: str):
    if name == "PostgresStore":  # lazy: psycopg is an optional extra
        from nowblock.store.postgres import PostgresStore

        return PostgresStore
    raise AttributeError(f"module 'nowblock.store' has no attribute {name!r}")


def open_store(url_or_path: str | Path, **kwargs) -> "Store":
    """Open the store named by ``url_or_path``; its schema is created or migrated on open.

    Parameters
    ----------
    url_or_path : str or Path
        A file path or ``sqlite:///path`` (``:memory:`` too): :class:`SqliteStore`; a
        ``postgresql://`` (or ``postgres://``) URL: :class:`~nowblock.store.postgres.PostgresStore`
        (needs the ``postgres`` extra, psycopg 3).
    **kwargs
        Options of the backend (SQLite: ``synchronous``, ``plans_kept``; PostgreSQL:
        ``plans_kept``, ``connect_timeout_s``, ``statement_timeout_s``).

    Returns
    -------
    Store
        The open store.
    """
    s = str(url_or_path)
    if s.startswith(("postgresql://", "postgres://")):
        from nowblock.store.postgres import PostgresStore

        return PostgresStore(s, **kwargs)
    if s.startswith("sqlite:///"):
        s = s[len("sqlite:///"):] or ":memory:"
    elif "://" in s:
        raise StoreError(f"unknown store URL scheme in {s!r} (use a file path, sqlite:///path or postgresql://...)")
    return SqliteStore(s, **kwargs)
