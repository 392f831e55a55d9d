"""Persistence for the live central system: SQLite by default, behind one :class:`Store` protocol.

What is kept: stations, transactions (energy so far, the session's needs), meter values, the
history of finished sessions (it feeds the session-needs forecaster as a sessions frame),
charging profiles sent with the charger's answer, and the latest plan. Stores know events,
not OCPP internals: :mod:`~nowblock.store.recorder` translates the live state's events.
"""

from __future__ import annotations

from pathlib import Path

from nowblock.store.base import OPEN_TRANSACTION_COLUMNS, Store, StoreError, session_id_for
from nowblock.store.recorder import StoreRecorder, attach_store, restore_state
from nowblock.store.sqlite import SqliteStore

__all__ = ["OPEN_TRANSACTION_COLUMNS", "SqliteStore", "Store", "StoreError", "StoreRecorder", "attach_store",
           "open_store", "restore_state", "session_id_for"]


def open_store(url_or_path: str | Path, **kwargs) -> "Store":
    """Open the store named by ``url_or_path``: a file path or ``sqlite:///path`` (``:memory:`` too).

    A ``postgresql://`` URL is reserved for a later backend and raises NotImplementedError.
    Keyword arguments go to the backend (for SQLite: ``synchronous``).
    """
    s = str(url_or_path)
    if s.startswith(("postgresql://", "postgres://")):
        raise NotImplementedError("a PostgreSQL store is not built yet; use a SQLite file path")
    if s.startswith("sqlite:///"):
        s = s[len("sqlite:///"):] or ":memory:"
    elif "://" in s:
        raise StoreError(f"unknown store URL scheme in {s!r} (use a file path or sqlite:///path)")
    return SqliteStore(s, **kwargs)
