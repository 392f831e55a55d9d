"""The SQLite store, the embedded default (see :class:`nowblock.store.Store`).

What is kept: stations, transactions (energy so far, the session's needs), meter values, the
history of finished sessions (it feeds the session-needs forecaster as a sessions frame),
charging profiles sent with the charger's answer, and the latest plan. The statements are
shared with the PostgreSQL backend (:mod:`nowblock.store.sql`); this module holds the
connection, the schema and its migrations.

Every write is one short SQLite transaction committed before the method returns, so an OCPP
handler that writes and *then* acknowledges never acknowledges something that is not on disk.
The file runs in WAL mode: readers (a dashboard, a second process) never block the writer.
``synchronous=FULL`` by default makes a commit survive a power cut, not only a process crash.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path

from nowblock.store.base import StoreError
from nowblock.store.sql import Migration, SqlStore

log = logging.getLogger(__name__)

# Version 1 is the schema files had before versions were recorded (CREATE ... IF NOT EXISTS,
# so such a file is adopted as version 1 without a change). Times are fixed-width UTC ISO text,
# so text order is time order.
MIGRATIONS: tuple[Migration, ...] = (
    (1, "stations, transactions, meter values, profiles, plans", (
        """CREATE TABLE IF NOT EXISTS stations (
            station_id   TEXT PRIMARY KEY,
            protocol     TEXT,
            vendor       TEXT,
            model        TEXT,
            status       TEXT,
            connected    INTEGER NOT NULL DEFAULT 0,
            first_seen   TEXT,
            last_seen    TEXT
        )""",
        """CREATE TABLE IF NOT EXISTS transactions (
            session_id            TEXT PRIMARY KEY,
            station_id            TEXT NOT NULL,
            transaction_id        TEXT NOT NULL,
            connector_id          INTEGER,
            id_tag                TEXT,
            started_at            TEXT NOT NULL,
            stopped_at            TEXT,
            stop_reason           TEXT,
            meter_start_wh        REAL,
            meter_last_wh         REAL,
            last_meter_time       TEXT,
            energy_kwh            REAL NOT NULL DEFAULT 0,
            departure             TEXT,
            energy_requested_kwh  REAL,
            needs_known           INTEGER NOT NULL DEFAULT 0,
            phases                INTEGER,
            max_current_a         REAL,
            UNIQUE (station_id, transaction_id)
        )""",
        "CREATE INDEX IF NOT EXISTS transactions_open ON transactions (stopped_at)",
        """CREATE TABLE IF NOT EXISTS meter_values (
            station_id      TEXT NOT NULL,
            transaction_id  TEXT NOT NULL DEFAULT '',
            time            TEXT NOT NULL,
            energy_wh       REAL,
            current_l1_a    REAL,
            current_l2_a    REAL,
            current_l3_a    REAL,
            power_kw        REAL,
            soc_percent     REAL,
            PRIMARY KEY (station_id, transaction_id, time)
        )""",
        """CREATE TABLE IF NOT EXISTS profiles (
            id                INTEGER PRIMARY KEY AUTOINCREMENT,
            time              TEXT NOT NULL,
            station_id        TEXT NOT NULL,
            transaction_id    TEXT,
            purpose           TEXT NOT NULL,
            limit_a           REAL,
            valid_to          TEXT,
            status            TEXT NOT NULL,
            accepted_limit_a  REAL
        )""",
        "CREATE INDEX IF NOT EXISTS profiles_station ON profiles (station_id, id)",
        """CREATE TABLE IF NOT EXISTS plans (
            id       INTEGER PRIMARY KEY AUTOINCREMENT,
            time     TEXT NOT NULL,
            policy   TEXT,
            status   TEXT,
            plan     TEXT NOT NULL
        )""",
    )),
    (2, "operator inputs, events (alarms), a time index on meter values", (
        """CREATE TABLE IF NOT EXISTS operator_inputs (
            kind        TEXT NOT NULL,
            key         TEXT NOT NULL,
            data        TEXT NOT NULL,
            updated_at  TEXT NOT NULL,
            PRIMARY KEY (kind, key)
        )""",
        """CREATE TABLE IF NOT EXISTS events (
            id    INTEGER PRIMARY KEY AUTOINCREMENT,
            time  TEXT NOT NULL,
            kind  TEXT NOT NULL,
            data  TEXT NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS events_time ON events (time)",
        "CREATE INDEX IF NOT EXISTS meter_values_time ON meter_values (time)",
    )),
)

_VERSION_TABLE = """CREATE TABLE IF NOT EXISTS nowblock_schema (
    version     INTEGER PRIMARY KEY,
    description TEXT NOT NULL,
    applied_at  TEXT NOT NULL
)"""


def _greatest(*values):
    """PostgreSQL's GREATEST: the largest argument, NULLs ignored (NULL if all are)."""
    present = [v for v in values if v is not None]
    return max(present) if present else None


def _least(*values):
    """PostgreSQL's LEAST: the smallest argument, NULLs ignored (NULL if all are)."""
    present = [v for v in values if v is not None]
    return min(present) if present else None


class SqliteStore(SqlStore):
    """:class:`Store` on one SQLite file in WAL mode (thread-safe: one connection, one lock).

    ``synchronous`` is SQLite's PRAGMA: "FULL" (default) survives power loss, "NORMAL" survives
    a process crash and is faster. Methods are short and synchronous; calling them from the
    event loop is intended (each is one small transaction). ``plans_kept`` plans are kept.
    """

    MIGRATIONS = MIGRATIONS
    EPOCH_S_SQL = "CAST(strftime('%s', substr(time, 1, 19)) AS INTEGER)"
    ALL_DIGITS_SQL = "transaction_id NOT GLOB '*[^0-9]*'"
    INTEGER_CAST = "INTEGER"

    def __init__(self, path: str | Path, *, synchronous: str = "FULL", plans_kept: int = 50) -> None:
        super().__init__(plans_kept=plans_kept)
        self.path = str(path)
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise StoreError(f"synchronous: expected OFF, NORMAL, FULL or EXTRA, got {synchronous!r}")
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._con = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        self._con.execute("PRAGMA journal_mode=WAL")
        self._con.execute(f"PRAGMA synchronous={synchronous.upper()}")
        self._con.execute("PRAGMA busy_timeout=30000")
        for name, fn in (("GREATEST", _greatest), ("LEAST", _least)):
            self._con.create_function(name, -1, fn, deterministic=True)
        self.closed = False
        try:
            self._migrate(_VERSION_TABLE)
        except BaseException:
            self._con.close()
            self.closed = True
            raise

    @contextmanager
    def _begin(self, *, exclusive: bool = False):
        """One write transaction, committed on exit; on any error nothing is applied.

        BEGIN IMMEDIATE takes the file's write lock at once, so every write transaction (and a
        migration) runs alone, whichever process it comes from.
        """
        with self._lock:
            cur = self._con.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield lambda sql, params: cur.execute(sql, params).rowcount
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")

    def _query(self, sql: str, params: dict) -> tuple[list[str], list[tuple]]:
        with self._lock:
            cur = self._con.execute(sql, params)
            return [d[0] for d in cur.description], cur.fetchall()

    def close(self) -> None:
        """Checkpoint the WAL and close the file (idempotent)."""
        if self.closed:
            return
        with self._lock:
            try:
                self._con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:  # another process may hold a read lock; the WAL stays valid
                pass
            self._con.close()
            self.closed = True
